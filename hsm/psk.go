package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// UsagePSK is the derivation usage of a module's TLS-PSK key: the ISD key of
// KVN 0x40, KID 01, key type '85' that opens GP Amendment B admin sessions
// (PROTOCOLS.md §1.4 "KVN conventions", §3.1 step 3).
const UsagePSK keyport.KeyUsage = "psk"

// ModulePSK derives, from the ISD master, the TLS-PSK of the module eid whose
// ISD is isdAID (DerivationData with usage "psk") and returns its 16 bytes.
//
// This is the one key that leaves the HSM in clear, and only into the TLS
// layer for one handshake (RFC 4279 §2: OpenSSL needs the PSK itself to build
// the premaster secret). It is derived as a non-sensitive session object,
// read and destroyed in the same call; callers must not keep or log it.
// It implements keyport.LinkCustody.
func (h *HSM) ModulePSK(ctx context.Context, eid keyport.EID, isdAID keyport.AID) ([]byte, error) {
	if eid == "" || isdAID == "" {
		return nil, keyport.Invalid("module", "a module PSK needs the EID and the ISD AID")
	}
	var psk []byte
	err := h.do(ctx, "derive TLS-PSK of module "+string(eid), func(s *session) error {
		base, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, LabelISDMaster)
		if err != nil {
			return err
		}
		data := DerivationData(eid, isdAID, UsagePSK)
		mech, free := derivationMechanism(data[:])
		defer free()
		k, err := h.p.DeriveKey(s.h, mech, base, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			// PKCS#11 v2.40 §4.10: CKA_VALUE is readable only when the
			// key is not sensitive; that is the point of this key.
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 16),
		})
		if err != nil {
			return fmt.Errorf("C_DeriveKey psk: %w", err)
		}
		defer h.destroy(s, k)
		attrs, err := h.p.GetAttributeValue(s.h, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue psk: %w", err)
		}
		if len(attrs) != 1 || len(attrs[0].Value) != 16 {
			return fmt.Errorf("derived PSK is not 16 bytes")
		}
		psk = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, err
	}
	return psk, nil
}
