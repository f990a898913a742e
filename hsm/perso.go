package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

var (
	_ keyport.PersoCustody = (*HSM)(nil)
	_ keyport.CardKeyScope = (*HSM)(nil)
)

// unwrapCardKey unwraps ref's blob under its KEK (kekLabel) into a sensitive
// AES session object that can do the usages in on, and may be wrapped again
// only if extractable. It returns the object and its length in bits; the
// caller destroys it.
func (h *HSM) unwrapCardKey(s *session, ref keyport.KeyRef, extractable bool, on ...uint) (pkcs11.ObjectHandle, int, error) {
	label, err := kekLabel(ref)
	if err != nil {
		return 0, 0, err
	}
	kek, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, label)
	if err != nil {
		return 0, 0, err
	}
	k, bits, err := h.unwrapKWP(s, kek, ref.Wrapped, extractable, on...)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", ref, err)
	}
	return k, bits, nil
}

// SCP03CMAC returns AES-CMAC (NIST SP 800-38B, CKM_AES_CMAC) of data under
// the static key ref, so that SCP03 session keys (GP Amendment D, the KDF in
// counter mode with CMAC as PRF of NIST SP 800-108) are computed without the
// static key leaving the HSM. The key is unwrapped from its blob as a
// non-extractable session object that can only sign, for this call only.
func (h *HSM) SCP03CMAC(ctx context.Context, ref keyport.KeyRef, data []byte) ([]byte, error) {
	var mac []byte
	err := h.do(ctx, "CMAC under "+ref.String(), func(s *session) error {
		k, _, err := h.unwrapCardKey(s, ref, false, pkcs11.CKA_SIGN)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		mac, err = h.sign(s, pkcs11.CKM_AES_CMAC, k, data)
		return err
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// WithCardKeys runs fn on one pooled session, where cmac(i, data) is
// SCP03CMAC under refs[i]: each key is unwrapped, as SCP03CMAC does, at its
// first use only, and every key unwrapped is destroyed when fn returns, after
// which cmac fails. Checking a card's SCP03 answers (the card challenge and
// three session keys) so costs two unwraps and one turn in the pool, not
// four of each. fn's own error is returned as it is; an HSM error of cmac
// that loses the session runs fn once more on a new one, as do does. It
// implements keyport.CardKeyScope.
func (h *HSM) WithCardKeys(ctx context.Context, refs []keyport.KeyRef, fn func(cmac func(i int, data []byte) ([]byte, error)) error) error {
	var fnErr error
	err := h.do(ctx, fmt.Sprintf("CMACs under %d card keys", len(refs)), func(s *session) error {
		keys := make([]pkcs11.ObjectHandle, len(refs))
		have := make([]bool, len(refs))
		var hsmErr error
		done := false
		defer func() {
			done = true
			for i, k := range keys {
				if have[i] {
					h.destroy(s, k)
				}
			}
		}()
		cmac := func(i int, data []byte) ([]byte, error) {
			switch {
			case done:
				return nil, errors.New("hsm: card key used after its scope ended")
			case i < 0 || i >= len(refs):
				return nil, fmt.Errorf("hsm: card key %d of %d", i, len(refs))
			case hsmErr != nil:
				return nil, hsmErr
			}
			if !have[i] {
				k, _, err := h.unwrapCardKey(s, refs[i], false, pkcs11.CKA_SIGN)
				if err != nil {
					hsmErr = err
					return nil, err
				}
				keys[i], have[i] = k, true
			}
			mac, err := h.sign(s, pkcs11.CKM_AES_CMAC, keys[i], data)
			if err != nil {
				hsmErr = err
				return nil, err
			}
			return mac, nil
		}
		fnErr = fn(cmac)
		return hsmErr
	})
	if err != nil {
		return err
	}
	return fnErr
}

// cbcZeroIV is the GP key-data encryption: AES-CBC with a zero IV (GPCS
// 11.8.2.3, Amendment D 6.2.3), as C_WrapKey computes it.
func cbcZeroIV() []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, make([]byte, 16))}
}

// EncryptUnderKey returns the key target encrypted under the DEK dekRef with
// AES-CBC and a zero IV (C_WrapKey with CKM_AES_CBC), as PUT KEY and STORE
// DATA carry keys for SCP03 (GPCS v2.3 §11.8.2.3; Amendment D for AES keys), and
// target's KCV. Both are unwrapped from their blobs for this call only; the
// DEK can only wrap.
func (h *HSM) EncryptUnderKey(ctx context.Context, dekRef, target keyport.KeyRef) (cipher []byte, kcv string, err error) {
	err = h.do(ctx, "encrypt "+target.String()+" under "+dekRef.String(), func(s *session) error {
		dek, _, err := h.unwrapCardKey(s, dekRef, false, pkcs11.CKA_WRAP)
		if err != nil {
			return err
		}
		defer h.destroy(s, dek)
		t, _, err := h.unwrapCardKey(s, target, true, pkcs11.CKA_ENCRYPT)
		if err != nil {
			return err
		}
		defer h.destroy(s, t)
		if cipher, err = h.p.WrapKey(s.h, cbcZeroIV(), dek, t); err != nil {
			return fmt.Errorf("C_WrapKey AES-CBC: %w", err)
		}
		kcv, err = h.kcv(s, t)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return cipher, kcv, nil
}

// KeyKCV returns the GP KCV (first 3 bytes of AES-ECB(key, 01×16), GPCS
// B.6) of the key ref.
func (h *HSM) KeyKCV(ctx context.Context, ref keyport.KeyRef) (string, error) {
	var kcv string
	err := h.do(ctx, "KCV of "+ref.String(), func(s *session) error {
		k, _, err := h.unwrapCardKey(s, ref, false, pkcs11.CKA_ENCRYPT)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		kcv, err = h.kcv(s, k)
		return err
	})
	return kcv, err
}

// GenerateKeys generates an SCP03 key set in the HSM (C_GenerateKey, AES-128,
// sensitive session objects) and returns each key wrapped under the batch's
// KEK (batch "": the ISD KEK) with AES-KWP, with its KCV and, when clearDEK
// is given, encrypted under it with AES-CBC and a zero IV. The clear DEK is
// for a blank module's ISD, whose DEK is the public GP test key
// (keyport.GPTestKey): imported as a session object that can only wrap, used
// and destroyed. Every object is destroyed before return.
func (h *HSM) GenerateKeys(ctx context.Context, batch string, clearDEK []byte) ([]keyport.GeneratedKey, error) {
	switch len(clearDEK) {
	case 0, 16, 24, 32:
	default:
		return nil, fmt.Errorf("hsm: generate keys: %w", keyport.Invalid("dek", "an AES DEK has 16, 24 or 32 bytes, not %d", len(clearDEK)))
	}
	return h.generateKeySet(ctx, batch, "", func(s *session) (pkcs11.ObjectHandle, error) {
		if clearDEK == nil {
			return 0, nil
		}
		return h.importClearKey(s, clearDEK, pkcs11.CKA_WRAP)
	})
}

// GenerateKeysUnder generates a key set as GenerateKeys does, each key
// also encrypted (AES-CBC, zero IV) under the DEK ref, which is unwrapped
// from its blob as a session object that can only wrap.
func (h *HSM) GenerateKeysUnder(ctx context.Context, batch string, dekRef keyport.KeyRef) ([]keyport.GeneratedKey, error) {
	return h.generateKeySet(ctx, batch, " for "+dekRef.String(), func(s *session) (pkcs11.ObjectHandle, error) {
		dek, _, err := h.unwrapCardKey(s, dekRef, false, pkcs11.CKA_WRAP)
		return dek, err
	})
}

// generateKeySet is GenerateKeys and GenerateKeysUnder: in one session, the
// batch's KEK (batch "": the ISD KEK) found, the DEK made by dekFor (0: no
// DEK) and destroyed after, and one generated key per usage.
func (h *HSM) generateKeySet(ctx context.Context, batch, what string, dekFor func(s *session) (pkcs11.ObjectHandle, error)) ([]keyport.GeneratedKey, error) {
	label := LabelISDKEK
	if batch != "" {
		if err := checkBatch(batch); err != nil {
			return nil, fmt.Errorf("hsm: generate keys: %w", err)
		}
		label = BatchKEKLabel(batch)
	}
	var out []keyport.GeneratedKey
	err := h.do(ctx, "generate keys under "+label+what, func(s *session) error {
		out = out[:0]
		kek, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, label)
		if err != nil {
			return err
		}
		dek, err := dekFor(s)
		if err != nil {
			return err
		}
		if dek != 0 {
			defer h.destroy(s, dek)
		}
		for _, u := range keyport.Usages {
			g, err := h.generateCardKey(s, kek, dek, u)
			if err != nil {
				return err
			}
			out = append(out, g)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// generateCardKey makes one key of GenerateKeys; the key object lives only
// inside this call.
func (h *HSM) generateCardKey(s *session, kek, dek pkcs11.ObjectHandle, u keyport.KeyUsage) (keyport.GeneratedKey, error) {
	k, err := h.p.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		sessionAES(16, pkcs11.CKA_ENCRYPT))
	if err != nil {
		return keyport.GeneratedKey{}, fmt.Errorf("%s key: C_GenerateKey: %w", u, err)
	}
	defer h.destroy(s, k)
	g := keyport.GeneratedKey{Usage: u}
	if g.Wrapped, err = h.p.WrapKey(s.h, kwpMechanism, kek, k); err != nil {
		return g, fmt.Errorf("%s key: AES-KWP: C_WrapKey: %w", u, err)
	}
	if dek != 0 {
		if g.UnderDEK, err = h.p.WrapKey(s.h, cbcZeroIV(), dek, k); err != nil {
			return g, fmt.Errorf("%s key: AES-CBC: C_WrapKey: %w", u, err)
		}
	}
	g.KCV, err = h.kcv(s, k)
	return g, err
}

// importClearKey creates a key given in clear as an AES session object that
// can do only the usages in on. The caller destroys it.
func (h *HSM) importClearKey(s *session, key []byte, on ...uint) (pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, key),
	}
	o, err := h.p.CreateObject(s.h, append(tmpl, usage(pkcs11.CKO_SECRET_KEY, on...)...))
	if err != nil {
		return 0, fmt.Errorf("import a clear key: C_CreateObject: %w", err)
	}
	return o, nil
}
