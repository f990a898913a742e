package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// KeyRef names a derived static key for the issuer station (keyport perso):
// either a module's ISD key (Batch empty: derived from LabelISDMaster with the
// ISD's AID) or an SSD first key of a derived batch (derived from
// BatchMasterLabel(Batch) with the SSD's AID). Derivation: DerivationData.
type KeyRef struct {
	Batch string // empty for an ISD key
	EID   keyport.EID
	AID   keyport.AID
	Usage keyport.KeyUsage
}

// ISDKey names the ISD key of usage of the module eid whose ISD is isdAID.
func ISDKey(eid keyport.EID, isdAID keyport.AID, usage keyport.KeyUsage) KeyRef {
	return KeyRef{EID: eid, AID: isdAID, Usage: usage}
}

// FirstKey names a first key of the SSD aid on module eid in a derived batch.
func FirstKey(batch string, eid keyport.EID, aid keyport.AID, usage keyport.KeyUsage) KeyRef {
	return KeyRef{Batch: batch, EID: eid, AID: aid, Usage: usage}
}

// String names the key without revealing anything secret.
func (r KeyRef) String() string {
	if r.Batch == "" {
		return fmt.Sprintf("ISD %s key of %s/%s", r.Usage, r.EID, r.AID)
	}
	return fmt.Sprintf("batch %s %s key of %s/%s", r.Batch, r.Usage, r.EID, r.AID)
}

func (r KeyRef) master() (string, error) {
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
func (h *HSM) derive(s *session, r KeyRef) (pkcs11.ObjectHandle, error) {
	label, err := r.master()
	if err != nil {
		return 0, err
	}
	base, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, label)
	if err != nil {
		return 0, err
	}
	return h.deriveKey(s, base, r.EID, r.AID, r.Usage, pkcs11.CKA_ENCRYPT, pkcs11.CKA_SIGN, pkcs11.CKA_WRAP)
}

// SCP03CMAC returns AES-CMAC (NIST SP 800-38B, CKM_AES_CMAC) of data under
// the derived static key ref, so that SCP03 session keys (GP Amendment D, the
// KDF in counter mode with CMAC as PRF of NIST SP 800-108) are derived without the
// static key leaving the HSM.
func (h *HSM) SCP03CMAC(ctx context.Context, ref KeyRef, data []byte) ([]byte, error) {
	var mac []byte
	err := h.do(ctx, "CMAC under "+ref.String(), func(s *session) error {
		k, err := h.derive(s, ref)
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
func (h *HSM) EncryptUnderKey(ctx context.Context, dekRef, target KeyRef) (cipher []byte, kcv string, err error) {
	err = h.do(ctx, "encrypt "+target.String()+" under "+dekRef.String(), func(s *session) error {
		dek, err := h.derive(s, dekRef)
		if err != nil {
			return err
		}
		defer h.destroy(s, dek)
		t, err := h.derive(s, target)
		if err != nil {
			return err
		}
		defer h.destroy(s, t)
		cbc := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CBC, make([]byte, 16))}
		if cipher, err = h.p.WrapKey(s.h, cbc, dek, t); err != nil {
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
