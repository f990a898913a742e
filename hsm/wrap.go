package hsm

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"strings"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// kcvBlock is the GlobalPlatform KCV input for AES keys: 16 bytes of 0x01
// (GPCS v2.3 §11.8.2.3 / Amendment D SCP03).
var kcvBlock = bytes.Repeat([]byte{0x01}, 16)

// kcv returns the GP key check value of the AES key object: the first 3
// bytes of AES-ECB(key, 01×16), upper-case hex. The key never leaves the
// token, so the HSM computes it; gp.KCV is the same computation on a clear
// key, and the tests compare the two. The key needs CKA_ENCRYPT.
func (h *HSM) kcv(s *session, key pkcs11.ObjectHandle) (string, error) {
	if err := h.p.EncryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, key); err != nil {
		return "", fmt.Errorf("KCV: C_EncryptInit: %w", err)
	}
	out, err := h.p.Encrypt(s.h, kcvBlock)
	if err != nil {
		return "", fmt.Errorf("KCV: C_Encrypt: %w", err)
	}
	if len(out) != 16 {
		return "", fmt.Errorf("KCV: AES-ECB returned %d bytes", len(out))
	}
	return strings.ToUpper(hex.EncodeToString(out[:3])), nil
}

// importRSA creates the RSA public key as a session object that can wrap.
// The caller destroys it.
func (h *HSM) importRSA(s *session, pub *rsa.PublicKey) (pkcs11.ObjectHandle, error) {
	o, err := h.p.CreateObject(s.h, append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, pub.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(pub.E)).Bytes()),
	}, usage(pkcs11.CKO_PUBLIC_KEY, pkcs11.CKA_WRAP)...))
	if err != nil {
		return 0, fmt.Errorf("import RSA public key: C_CreateObject: %w", err)
	}
	return o, nil
}

// destroy removes a session object. Errors are ignored: session objects die
// with their session anyway (PKCS#11 v2.40 base §4.4).
func (h *HSM) destroy(s *session, o pkcs11.ObjectHandle) { _ = h.p.DestroyObject(s.h, o) }

// oaepMechanism is CKM_RSA_PKCS_OAEP with hash and MGF1 hash per h.oaep and
// an empty label (PKCS#11 v2.40 Current Mechanisms §2.1, PKCS #1 RSA OAEP).
func (h *HSM) oaepMechanism() []*pkcs11.Mechanism {
	hash, mgf := uint(pkcs11.CKM_SHA_1), uint(pkcs11.CKG_MGF1_SHA1)
	if h.oaep == keyport.OAEPSHA256 {
		hash, mgf = pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP,
		pkcs11.NewOAEPParams(hash, mgf, pkcs11.CKZ_DATA_SPECIFIED, nil))}
}

// kwpMechanism is CKM_AES_KEY_WRAP_PAD with the default alternative IV
// A65959A6 (RFC 5649 §3).
var kwpMechanism = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}

// rsaAESWrap wraps key to the RSA public key object rsaPub with the output
// layout of CKM_RSA_AES_KEY_WRAP (PKCS#11 v2.40 Current Mechanisms §2.1),
// built from two C_WrapKey calls because SoftHSM lacks that mechanism:
//
//	RSA-OAEP(rsaPub, E) ‖ AES-KWP(E, key)
//
// where E is a fresh AES-256 session key, destroyed before returning.
func (h *HSM) rsaAESWrap(s *session, rsaPub, key pkcs11.ObjectHandle) ([]byte, error) {
	eph, err := h.p.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		sessionAES(32, pkcs11.CKA_WRAP))
	if err != nil {
		return nil, fmt.Errorf("RSA-AES wrap: ephemeral key: C_GenerateKey: %w", err)
	}
	defer h.destroy(s, eph)
	kwp, err := h.p.WrapKey(s.h, kwpMechanism, eph, key)
	if err != nil {
		return nil, fmt.Errorf("RSA-AES wrap: AES-KWP: C_WrapKey: %w", err)
	}
	rsaPart, err := h.p.WrapKey(s.h, h.oaepMechanism(), rsaPub, eph)
	if err != nil {
		return nil, fmt.Errorf("RSA-AES wrap: RSA-OAEP-%s: C_WrapKey: %w", h.oaep, err)
	}
	return append(rsaPart, kwp...), nil
}

// keyBits returns CKA_VALUE_LEN of a secret key in bits.
func (h *HSM) keyBits(s *session, key pkcs11.ObjectHandle) (int, error) {
	attrs, err := h.p.GetAttributeValue(s.h, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, nil)})
	if err != nil {
		return 0, fmt.Errorf("C_GetAttributeValue CKA_VALUE_LEN: %w", err)
	}
	v := attrs[0].Value
	if len(v) != 8 && len(v) != 4 {
		return 0, fmt.Errorf("CKA_VALUE_LEN has %d bytes", len(v))
	}
	if len(v) == 8 {
		return int(binary.NativeEndian.Uint64(v)) * 8, nil
	}
	return int(binary.NativeEndian.Uint32(v)) * 8, nil
}

// unwrapKWP unwraps a KWP blob (RFC 5649) under kek into an AES session key
// that is sensitive, extractable only if asked, and can do the usages in on
// (CKA_ENCRYPT when none are given): unwrapTarget, which a KEK's unwrap
// template accepts. Its length comes from the blob. The caller destroys it.
// Keys other than AES-128/192/256 are refused.
func (h *HSM) unwrapKWP(s *session, kek pkcs11.ObjectHandle, blob []byte, extractable bool, on ...uint) (pkcs11.ObjectHandle, int, error) {
	if len(on) == 0 {
		on = []uint{pkcs11.CKA_ENCRYPT}
	}
	if len(blob) < 16 || len(blob)%8 != 0 {
		return 0, 0, keyport.Invalid("wrapped", "a KWP-wrapped key has a multiple of 8 bytes, at least 16; got %d", len(blob))
	}
	k, err := h.p.UnwrapKey(s.h, kwpMechanism, kek, blob, frozenLast(unwrapTarget(extractable, on...)))
	if err != nil {
		if h.badWrappedKey(s, err) {
			return 0, 0, fmt.Errorf("%w (C_UnwrapKey: %w)", keyport.Invalid("wrapped", "the key does not unwrap under its key-encryption key"), err)
		}
		return 0, 0, fmt.Errorf("C_UnwrapKey: %w", err)
	}
	bits, err := h.keyBits(s, k)
	if err == nil && bits == 0 {
		// SoftHSM 2.6 leaves CKA_VALUE_LEN at 0 on unwrapped keys. For AES
		// lengths (multiples of 8) KWP adds no padding, so the key has
		// len(blob)-8 bytes (RFC 5649 §4.1); other lengths are refused below.
		bits = 8 * (len(blob) - 8)
	}
	if err == nil && bits != 128 && bits != 192 && bits != 256 {
		err = keyport.Invalid("wrapped", "the unwrapped key has %d bits, not an AES key length", bits)
	}
	if err != nil {
		h.destroy(s, k)
		return 0, 0, err
	}
	return k, bits, nil
}

// WrapFirstKeys unwraps the domain's three first keys from their blobs
// inside the HSM (under the batch KEK, or the transport key for an imported
// batch) and wraps each to req.Recipient with the RSA-AES layout, in
// keyport.Usages order. No key leaves the HSM in clear; every session object
// is destroyed before return.
func (h *HSM) WrapFirstKeys(ctx context.Context, req keyport.FirstKeysRequest) ([]keyport.WrappedKey, error) {
	op := fmt.Sprintf("wrap first keys of %s/%s", req.EID, req.AID)
	if err := checkBatch(req.Batch); err != nil {
		return nil, fmt.Errorf("hsm: %s: %w", op, err)
	}
	if err := keyport.CheckRSAKey("recipient", req.Recipient); err != nil {
		return nil, fmt.Errorf("hsm: %s: %w", op, err)
	}
	if req.EID == "" || req.AID == "" {
		return nil, fmt.Errorf("hsm: %s: %w", op, keyport.Invalid("domain", "EID and AID are required"))
	}
	switch req.Source {
	case keyport.KeyGenerated, keyport.KeyImported, keyport.KeyDerived:
	default:
		return nil, fmt.Errorf("hsm: %s: %w", op, keyport.Invalid("source", "unknown key source %q", req.Source))
	}
	var out []keyport.WrappedKey
	err := h.do(ctx, op, func(s *session) error {
		out = out[:0]
		rsaPub, err := h.importRSA(s, req.Recipient)
		if err != nil {
			return err
		}
		defer h.destroy(s, rsaPub)
		for _, u := range keyport.Usages {
			ref := keyport.KeyRef{Batch: req.Batch, EID: req.EID, AID: req.AID, Usage: u, Source: req.Source, Wrapped: req.Wrapped[u]}
			wk, err := h.firstKey(s, ref, rsaPub)
			if err != nil {
				return err
			}
			out = append(out, wk)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// firstKey unwraps and wraps one first key; the key object lives only
// inside this call.
func (h *HSM) firstKey(s *session, ref keyport.KeyRef, rsaPub pkcs11.ObjectHandle) (keyport.WrappedKey, error) {
	key, bits, err := h.unwrapCardKey(s, ref, true, pkcs11.CKA_ENCRYPT)
	if err != nil {
		return keyport.WrappedKey{}, err
	}
	defer h.destroy(s, key)
	kcv, err := h.kcv(s, key)
	if err != nil {
		return keyport.WrappedKey{}, err
	}
	wrapped, err := h.rsaAESWrap(s, rsaPub, key)
	if err != nil {
		return keyport.WrappedKey{}, err
	}
	return keyport.WrappedKey{Usage: ref.Usage, Bits: bits, KCV: kcv, Wrapped: wrapped}, nil
}

// badWrappedKey reports whether C_UnwrapKey failed because of the blob
// rather than the token. SoftHSM answers a failed KWP integrity check with
// CKR_GENERAL_ERROR, so that value counts as a bad blob when the session
// still works afterwards.
func (h *HSM) badWrappedKey(s *session, err error) bool {
	rv, ok := ckr(err)
	switch {
	case !ok:
		return false
	case rv == pkcs11.CKR_WRAPPED_KEY_INVALID, rv == pkcs11.CKR_WRAPPED_KEY_LEN_RANGE,
		rv == pkcs11.CKR_ENCRYPTED_DATA_INVALID, rv == pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE:
		return true
	case rv == pkcs11.CKR_GENERAL_ERROR:
		_, serr := h.p.GetSessionInfo(s.h)
		return serr == nil
	}
	return false
}

// CreateTransportKey creates the AES-256 transport key of an imported batch
// and returns it RSA-AES-wrapped to the manufacturer, with its KCV. The key
// is generated as an extractable session object under kekPolicy (its unwrap
// template, and AES-KWP besides AES-ECB for the KCV as its only
// mechanisms: SoftHSM lets neither be added later, by C_CopyObject or
// C_SetAttributeValue), wrapped, then copied (C_CopyObject, PKCS#11 v2.40
// base §5.7) to a token object labelled TransportLabel(batch) that is
// sensitive and not extractable and can only unwrap; the session object is
// destroyed. It fails with keyport.ErrConflict if the batch has a transport
// key already.
func (h *HSM) CreateTransportKey(ctx context.Context, batch string, manufacturer *rsa.PublicKey) (wrapped []byte, kcv string, err error) {
	op := "create transport key " + batch
	if err := checkBatch(batch); err != nil {
		return nil, "", fmt.Errorf("hsm: %s: %w", op, err)
	}
	if err := keyport.CheckRSAKey("manufacturer", manufacturer); err != nil {
		return nil, "", fmt.Errorf("hsm: %s: %w", op, err)
	}
	label := TransportLabel(batch)
	err = h.createKey(ctx, op, label, func(s *session) error {
		policy, free := attributeArray(kekPolicy(nil))
		defer free()
		k, err := h.p.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			append(sessionAES(32, pkcs11.CKA_UNWRAP, pkcs11.CKA_ENCRYPT),
				pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, policy),
				pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, mechanismList(pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_ECB))))
		if err != nil {
			return fmt.Errorf("C_GenerateKey: %w", err)
		}
		defer h.destroy(s, k)
		rsaPub, err := h.importRSA(s, manufacturer)
		if err != nil {
			return err
		}
		defer h.destroy(s, rsaPub)
		if wrapped, err = h.rsaAESWrap(s, rsaPub, k); err != nil {
			return err
		}
		if kcv, err = h.kcv(s, k); err != nil {
			return err
		}
		// Copy last: a failure before leaves nothing on the token. The copy
		// inherits CKA_SENSITIVE (true) from k; SoftHSM refuses to have it in
		// a C_CopyObject template at all (CKR_ATTRIBUTE_READ_ONLY).
		// The token copy cannot encrypt: only the session object gave the KCV.
		// Nor may it be made to (CKA_MODIFIABLE false, from longLived):
		// with decrypt, its AES-ECB would undo AES-KWP a block at a time.
		// CKA_COPYABLE is refused in a copy's template (the copy stays
		// copyable; a copy of it cannot change its usages either).
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false)}
		for _, a := range longLived(label) {
			if a.Type != pkcs11.CKA_SENSITIVE && a.Type != pkcs11.CKA_COPYABLE {
				tmpl = append(tmpl, a)
			}
		}
		if _, err := h.p.CopyObject(s.h, k, frozenLast(tmpl)); err != nil {
			return fmt.Errorf("C_CopyObject to the token: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return wrapped, kcv, nil
}

// ImportedKCV unwraps a manufacturer's KWP-wrapped key under the batch
// transport key inside the HSM and returns its KCV, to check an import file.
func (h *HSM) ImportedKCV(ctx context.Context, batch string, wrapped []byte) (string, error) {
	op := "imported KCV for batch " + batch
	if err := checkBatch(batch); err != nil {
		return "", fmt.Errorf("hsm: %s: %w", op, err)
	}
	var kcv string
	err := h.do(ctx, op, func(s *session) error {
		t, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, TransportLabel(batch))
		if err != nil {
			return err
		}
		k, _, err := h.unwrapKWP(s, t, wrapped, false)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		kcv, err = h.kcv(s, k)
		return err
	})
	return kcv, err
}
