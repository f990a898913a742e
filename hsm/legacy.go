package hsm

/*
#include <stdlib.h>

// CK_KEY_DERIVATION_STRING_DATA (PKCS#11 v2.40 Current Mechanisms,
// "key derivation by data encryption"): CK_BYTE_PTR then CK_ULONG. On the
// Unix ABI CK_ULONG is unsigned long.
typedef struct {
	unsigned char *pData;
	unsigned long ulLen;
} keyport_derivation_string_data;
*/
import "C"

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unsafe"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// Tokens made before card keys were wrapped at rest hold master keys that
// derive card keys (C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA). SoftHSM lets
// any PIN holder derive a readable key from such a master, so `keyport hsm
// init` moves them (keyport.KeyMigrator): each key is derived once, wrapped
// under the new KEK and stored, then the masters are destroyed. Nothing
// else derives a card key any more.

// Labels of the old keys.
const (
	// LabelISDMaster: AES-256 key that derived every module's ISD keys and
	// TLS-PSK.
	LabelISDMaster = "keyport/isd-master"
	legacyPrefix   = "keyport/batch/"
)

// BatchMasterLabel is the label of an old batch's AES-256 master key.
func BatchMasterLabel(batch string) string { return legacyPrefix + batch + "/master" }

// UsagePSK is the derivation usage of a module's TLS-PSK on an old token.
const UsagePSK keyport.KeyUsage = "psk"

var _ keyport.KeyMigrator = (*HSM)(nil)

// DerivationPrefix starts every derivation input; a new format would get a
// new prefix.
const DerivationPrefix = "keyport/v1"

// DerivationData is the 16-byte input from which a master key derives one
// first key. The format is stable: changing it changes every derived key.
//
//	data = SHA-256( "keyport/v1" ‖ EID ‖ AID ‖ usage )[0:16]
//
// where EID is the 32 ASCII decimal digits, AID is the AID in ASCII
// upper-case hex (no spaces), usage is "enc", "mac" or "dek", and ‖ is plain
// concatenation of the ASCII bytes (no separators or lengths: EID has a fixed
// length and usage comes last, so the split is unambiguous). The key is then
//
//	key = AES-256-ECB(master, data)   (one block → AES-128 key)
//
// computed inside the HSM by C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA.
// Domain first keys used the batch master and the SSD's AID; ISD keys and the
// PSK the ISD master and the ISD's AID.
func DerivationData(eid keyport.EID, aid keyport.AID, usage keyport.KeyUsage) [16]byte {
	h := sha256.New()
	h.Write([]byte(DerivationPrefix))
	h.Write([]byte(eid))
	h.Write([]byte(strings.ToUpper(string(aid))))
	h.Write([]byte(usage))
	var d [16]byte
	copy(d[:], h.Sum(nil))
	return d
}

// derivationMechanism builds CKM_AES_ECB_ENCRYPT_DATA with its
// CK_KEY_DERIVATION_STRING_DATA parameter. The data is copied to C memory,
// since the parameter holds a pointer to it; call free after C_DeriveKey.
func derivationMechanism(data []byte) (m []*pkcs11.Mechanism, free func()) {
	p := C.CBytes(data)
	param := C.keyport_derivation_string_data{pData: (*C.uchar)(p), ulLen: C.ulong(len(data))}
	raw := C.GoBytes(unsafe.Pointer(&param), C.int(unsafe.Sizeof(param)))
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, raw)},
		func() { C.free(p) }
}

// sessionAES returns the template of an AES session key of n bytes (0: the
// mechanism decides) that stays sensitive but can leave the HSM wrapped
// (CKA_EXTRACTABLE), and may do only the usages in on. A key whose KCV is
// needed must have CKA_ENCRYPT.
func sessionAES(n int, on ...uint) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
	}
	if n > 0 {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, n))
	}
	return append(t, usage(pkcs11.CKO_SECRET_KEY, on...)...)
}

// deriveKey derives the key for (eid, aid, usage) from the master key base
// (see DerivationData) with the template tmpl. The caller destroys it.
func (h *HSM) deriveKey(s *session, base pkcs11.ObjectHandle, eid keyport.EID, aid keyport.AID, ku keyport.KeyUsage, tmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	data := DerivationData(eid, aid, ku)
	mech, free := derivationMechanism(data[:])
	defer free()
	k, err := h.p.DeriveKey(s.h, mech, base, tmpl)
	if err != nil {
		return 0, fmt.Errorf("C_DeriveKey %s: %w", ku, err)
	}
	return k, nil
}

// LegacyKeys lists the old keys on the token: the ISD master, batch masters,
// and transport keys whose blobs unwrap into readable keys (made without an
// unwrap template).
func (h *HSM) LegacyKeys(ctx context.Context) (*keyport.LegacyKeys, error) {
	out := &keyport.LegacyKeys{}
	err := h.do(ctx, "list old keys", func(s *session) error {
		*out = keyport.LegacyKeys{}
		found, err := h.tokenObjects(s, pkcs11.CKO_SECRET_KEY)
		if err != nil {
			return err
		}
		for _, o := range found {
			label := o.label
			switch {
			case label == LabelISDMaster:
				out.ISDMaster = true
			case strings.HasPrefix(label, legacyPrefix) && strings.HasSuffix(label, "/master"):
				out.Masters = append(out.Masters, strings.TrimSuffix(strings.TrimPrefix(label, legacyPrefix), "/master"))
			case strings.HasPrefix(label, legacyPrefix) && strings.HasSuffix(label, "/transport"):
				ok, err := h.hasUnwrapTemplate(s, o.handle)
				if err != nil {
					return err
				}
				if !ok {
					out.Transport = append(out.Transport, strings.TrimSuffix(strings.TrimPrefix(label, legacyPrefix), "/transport"))
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(out.Masters)
	slices.Sort(out.Transport)
	return out, nil
}

// hasUnwrapTemplate reports whether the key has a non-empty unwrap template.
func (h *HSM) hasUnwrapTemplate(s *session, o pkcs11.ObjectHandle) (bool, error) {
	attrs, err := h.p.GetAttributeValue(s.h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, nil)})
	if err != nil {
		if rv, ok := ckr(err); ok && (rv == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID || rv == pkcs11.CKR_ATTRIBUTE_SENSITIVE) {
			return false, nil
		}
		return false, fmt.Errorf("C_GetAttributeValue CKA_UNWRAP_TEMPLATE: %w", err)
	}
	return len(attrs) == 1 && len(attrs[0].Value) > 0, nil
}

// RewrapLegacy derives ref from its master (ref.Source KeyDerived) or
// unwraps it under its old transport key (KeyImported), as an extractable
// session object, and returns it wrapped under the new KEK with its KCV: the
// ISD KEK for an ISD key, the batch KEK (created when missing) for a first
// key. Nothing else reads a master.
func (h *HSM) RewrapLegacy(ctx context.Context, ref keyport.KeyRef) ([]byte, string, error) {
	if ref.EID == "" || ref.AID == "" || ref.Usage == "" {
		return nil, "", keyport.Invalid("key", "a key reference needs EID, AID and usage")
	}
	target := LabelISDKEK
	if ref.Batch != "" {
		if err := checkBatch(ref.Batch); err != nil {
			return nil, "", err
		}
		target = BatchKEKLabel(ref.Batch)
		if err := h.CreateBatchKEK(ctx, ref.Batch); err != nil && !errors.Is(err, keyport.ErrConflict) {
			return nil, "", err
		}
	}
	var blob []byte
	var kcv string
	err := h.do(ctx, "rewrap "+ref.String(), func(s *session) error {
		var k pkcs11.ObjectHandle
		switch ref.Source {
		case keyport.KeyDerived:
			master := LabelISDMaster
			if ref.Batch != "" {
				master = BatchMasterLabel(ref.Batch)
			}
			base, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, master)
			if err != nil {
				return err
			}
			if k, err = h.deriveKey(s, base, ref.EID, ref.AID, ref.Usage, sessionAES(16, pkcs11.CKA_ENCRYPT)); err != nil {
				return err
			}
		case keyport.KeyImported:
			t, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, TransportLabel(ref.Batch))
			if err != nil {
				return err
			}
			if k, _, err = h.unwrapKWP(s, t, ref.Wrapped, true, pkcs11.CKA_ENCRYPT); err != nil {
				return err
			}
		default:
			return keyport.Invalid("source", "only derived and imported keys are rewrapped, not %q", ref.Source)
		}
		defer h.destroy(s, k)
		kek, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, target)
		if err != nil {
			return err
		}
		if blob, err = h.p.WrapKey(s.h, kwpMechanism, kek, k); err != nil {
			return fmt.Errorf("AES-KWP: C_WrapKey: %w", err)
		}
		kcv, err = h.kcv(s, k)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return blob, kcv, nil
}

// LegacyPSK derives module eid's TLS-PSK from the ISD master, as the old
// token did for every handshake, and returns it sealed (NewModulePSK's
// format), so that the module keeps the PSK it holds.
func (h *HSM) LegacyPSK(ctx context.Context, eid keyport.EID, isdAID keyport.AID) ([]byte, error) {
	if eid == "" || isdAID == "" {
		return nil, keyport.Invalid("module", "a module PSK needs the EID and the ISD AID")
	}
	var psk []byte
	err := h.do(ctx, "derive the old TLS-PSK of module "+string(eid), func(s *session) error {
		base, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, LabelISDMaster)
		if err != nil {
			return err
		}
		k, err := h.deriveKey(s, base, eid, isdAID, UsagePSK, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, pskLen),
		})
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		attrs, err := h.p.GetAttributeValue(s.h, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue psk: %w", err)
		}
		if len(attrs) != 1 || len(attrs[0].Value) != pskLen {
			return fmt.Errorf("derived PSK is not %d bytes", pskLen)
		}
		psk = attrs[0].Value
		return nil
	})
	if err != nil {
		return nil, err
	}
	defer clear(psk)
	return h.seal(ctx, pskAAD(eid), psk)
}

// DestroyLegacyKeys destroys every key LegacyKeys lists and returns their
// labels.
func (h *HSM) DestroyLegacyKeys(ctx context.Context) ([]string, error) {
	l, err := h.LegacyKeys(ctx)
	if err != nil {
		return nil, err
	}
	var labels []string
	if l.ISDMaster {
		labels = append(labels, LabelISDMaster)
	}
	for _, b := range l.Masters {
		labels = append(labels, BatchMasterLabel(b))
	}
	for _, b := range l.Transport {
		labels = append(labels, TransportLabel(b))
	}
	var done []string
	for _, label := range labels {
		err := h.do(ctx, "destroy "+label, func(s *session) error {
			o, err := h.findObject(s, pkcs11.CKO_SECRET_KEY, label)
			if err != nil {
				return err
			}
			delete(s.objects, objectKey{pkcs11.CKO_SECRET_KEY, label})
			if err := h.p.DestroyObject(s.h, o); err != nil {
				return fmt.Errorf("C_DestroyObject: %w", err)
			}
			return nil
		})
		if err != nil {
			return done, err
		}
		done = append(done, label)
	}
	return done, nil
}
