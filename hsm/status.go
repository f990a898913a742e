package hsm

import (
	"context"
	"fmt"
	"sort"

	"github.com/miekg/pkcs11"
)

// KeyInfo describes one token object for the admin console: no value, only
// what identifies it.
type KeyInfo struct {
	Label string
	Class string // "secret key", "private key", "public key"
	Type  string // "AES", "EC", "generic secret", …
}

// Status is the token's identity and its token objects.
type Status struct {
	Token    string // CK_TOKEN_INFO label
	Model    string
	Serial   string
	OAEPHash string
	Keys     []KeyInfo // by label
}

// maxStatusObjects bounds the listing (a token holds a few keys per batch).
const maxStatusObjects = 10000

// Status lists the token's objects by label, for the admin console.
func (h *HSM) Status(ctx context.Context) (*Status, error) {
	st := &Status{OAEPHash: string(h.oaep)}
	err := h.do(ctx, "status", func(s *session) error {
		ti, err := h.p.GetTokenInfo(h.slot)
		if err != nil {
			return fmt.Errorf("C_GetTokenInfo: %w", err)
		}
		st.Token, st.Model, st.Serial = ti.Label, ti.Model, ti.SerialNumber
		objs, err := h.findAll(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true)}, maxStatusObjects)
		if err != nil {
			return err
		}
		for _, o := range objs {
			attrs, err := h.p.GetAttributeValue(s.h, o, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
			})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue: %w", err)
			}
			st.Keys = append(st.Keys, KeyInfo{Label: string(attrs[0].Value), Class: className(ulong(attrs[1].Value)),
				Type: keyTypeName(ulong(attrs[2].Value))})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(st.Keys, func(i, j int) bool {
		if st.Keys[i].Label != st.Keys[j].Label {
			return st.Keys[i].Label < st.Keys[j].Label
		}
		return st.Keys[i].Class < st.Keys[j].Class
	})
	return st, nil
}

// ulong decodes a CK_ULONG attribute value (native byte order and size).
func ulong(b []byte) uint {
	if len(b) == 0 {
		return ^uint(0)
	}
	return uint(pkcs11Uint(b))
}

func pkcs11Uint(b []byte) uint64 {
	// CK_ULONG is little-endian on every platform SoftHSM and keyport run on.
	var v uint64
	for i := len(b) - 1; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}

func keyTypeName(t uint) string {
	switch t {
	case pkcs11.CKK_AES:
		return "AES"
	case pkcs11.CKK_EC:
		return "EC"
	case pkcs11.CKK_RSA:
		return "RSA"
	case pkcs11.CKK_GENERIC_SECRET:
		return "generic secret"
	case ^uint(0):
		return "—"
	}
	return fmt.Sprintf("type 0x%x", t)
}
