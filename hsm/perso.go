package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

var _ keyport.PersoCustody = (*HSM)(nil)

// masterLabel returns the label of the master key that derives r: the ISD
// master for an ISD key (r.Batch empty), the batch master otherwise.
func masterLabel(r keyport.KeyRef) (string, error) {
	if r.EID == "" || r.AID == "" || r.Usage == "" {
		return "", keyport.Invalid("key", "a key reference needs EID, AID and usage")
	}
	if r.Batch == "" {
		return LabelISDMaster, nil
	}
	if err := checkBatch(r.Batch); err != nil {
		return "", err
	}
	return BatchMasterLabel(r.Batch), nil
}

// derive derives r as a session key that can CMAC (CKA_SIGN), wrap other
// keys (CKA_WRAP) and give its KCV (CKA_ENCRYPT). The caller destroys it.
func (h *HSM) derive(s *session, r keyport.KeyRef) (pkcs11.ObjectHandle, error) {
	label, err := masterLabel(r)
	if err != nil {
		return 0, err
	}
	base, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, label)
	if err != nil {
		return 0, err
	}
	return h.deriveKey(s, base, r.EID, r.AID, r.Usage, pkcs11.CKA_ENCRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_WRAP)
}

// staticKey is ref as a session key that can CMAC: derived, or unwrapped
// from the manufacturer's blob for an imported key. The caller destroys it.
func (h *HSM) staticKey(s *session, ref keyport.KeyRef) (pkcs11.ObjectHandle, error) {
	if ref.Wrapped == nil {
		return h.derive(s, ref)
	}
	if err := checkBatch(ref.Batch); err != nil {
		return 0, err
	}
	t, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, TransportLabel(ref.Batch))
	if err != nil {
		return 0, err
	}
	k, _, err := h.unwrapImported(s, t, ref.Wrapped, pkcs11.CKA_SIGN)
	return k, err
}

// SCP03CMAC returns AES-CMAC (NIST SP 800-38B, CKM_AES_CMAC) of data under
// the static key ref, so that SCP03 session keys (GP Amendment D, the KDF in
// counter mode with CMAC as PRF of NIST SP 800-108) are derived without the
// static key leaving the HSM. A derived key is derived from its master; an
// imported one (ref.Wrapped) is unwrapped under its batch's transport key;
// either lives as a session object for this call only.
func (h *HSM) SCP03CMAC(ctx context.Context, ref keyport.KeyRef, data []byte) ([]byte, error) {
	var mac []byte
	err := h.do(ctx, "CMAC under "+ref.String(), func(s *session) error {
		k, err := h.staticKey(s, ref)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		if err := h.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CMAC, nil)}, k); err != nil {
			return fmt.Errorf("C_SignInit: %w", err)
		}
		mac, err = h.p.Sign(s.h, data)
		if err != nil {
			return fmt.Errorf("C_Sign: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// EncryptUnderKey returns the key target encrypted under the DEK dekRef with
// AES-CBC and a zero IV (C_WrapKey with CKM_AES_CBC), as PUT KEY and STORE
// DATA carry keys for SCP03 (GPCS v2.3 §11.8.2.3; Amendment D for AES keys), and
// target's KCV.
func (h *HSM) EncryptUnderKey(ctx context.Context, dekRef, target keyport.KeyRef) (cipher []byte, kcv string, err error) {
	err = h.do(ctx, "encrypt "+target.String()+" under "+dekRef.String(), func(s *session) error {
		dek, err := h.derive(s, dekRef)
		if err != nil {
			return err
		}
		defer h.destroy(s, dek)
		cipher, kcv, err = h.wrapDerivedCBC(s, dek, target)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return cipher, kcv, nil
}

// wrapDerivedCBC derives target and returns it encrypted under kek with
// AES-CBC and a zero IV (the GP key-data encryption, GPCS 11.8.2.3 / Amd D
// 6.2.3), with its KCV; the derived key is destroyed before returning.
func (h *HSM) wrapDerivedCBC(s *session, kek pkcs11.ObjectHandle, target keyport.KeyRef) ([]byte, string, error) {
	t, err := h.derive(s, target)
	if err != nil {
		return nil, "", err
	}
	defer h.destroy(s, t)
	cbc := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, make([]byte, 16))}
	cipher, err := h.p.WrapKey(s.h, cbc, kek, t)
	if err != nil {
		return nil, "", fmt.Errorf("C_WrapKey AES-CBC: %w", err)
	}
	kcv, err := h.kcv(s, t)
	return cipher, kcv, err
}

// EncryptUnderClearKey returns the derived key target encrypted under a DEK
// given in clear, with AES-CBC and a zero IV as EncryptUnderKey, and
// target's KCV. It is for the public GP test DEK of a blank module's ISD
// (keyport.GPTestKey): the DEK is imported as a session object that can only
// wrap, used for one C_WrapKey and destroyed; target never leaves the HSM in
// clear.
func (h *HSM) EncryptUnderClearKey(ctx context.Context, dek []byte, target keyport.KeyRef) (cipher []byte, kcv string, err error) {
	op := "encrypt " + target.String() + " under a clear DEK"
	switch len(dek) {
	case 16, 24, 32:
	default:
		return nil, "", fmt.Errorf("hsm: %s: %w", op, keyport.Invalid("dek", "an AES DEK has 16, 24 or 32 bytes, not %d", len(dek)))
	}
	err = h.do(ctx, op, func(s *session) error {
		tmpl := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, dek),
		}
		d, err := h.p.CreateObject(s.h, append(tmpl, usage(pkcs11.CKO_SECRET_KEY, pkcs11.CKA_WRAP)...))
		if err != nil {
			return fmt.Errorf("import the clear DEK: C_CreateObject: %w", err)
		}
		defer h.destroy(s, d)
		cipher, kcv, err = h.wrapDerivedCBC(s, d, target)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return cipher, kcv, nil
}

// DerivedKCV returns the GP KCV (first 3 bytes of AES-ECB(key, 01×16),
// GPCS B.6) of the derived key ref.
func (h *HSM) DerivedKCV(ctx context.Context, ref keyport.KeyRef) (string, error) {
	var kcv string
	err := h.do(ctx, "KCV of "+ref.String(), func(s *session) error {
		k, err := h.derive(s, ref)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		kcv, err = h.kcv(s, k)
		return err
	})
	return kcv, err
}
