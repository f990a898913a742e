package hsm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// A PIN holder can put a look-alike of their own under one of keyport's
// labels before keyport makes the key (or, on a token made before keys
// were frozen, after destroying it): a KEK whose value they know, or whose
// unwrap template lets a readable key out, a receipt or audit key they can
// read. Keys are found by label, so keyport would use it. CheckKeys looks at
// every key of keyport's on the token before it is served: how it was made
// (generated on the token, always sensitive, never extractable), what it may
// do (the usages and mechanisms keyport gave it, no more) and, for a KEK,
// what its unwrap template lets out, by trying it.

// keySpec is how keyport makes one kind of long-lived key.
type keySpec struct {
	class  uint
	usages []uint // the usage attributes that are true; the others of usageAttrs[class] are false
	mechs  []uint // CKA_ALLOWED_MECHANISMS, exactly
	kek    bool   // wraps and unwraps card keys under kekPolicy: its unwrap template is tried
	isd    bool   // what it unwraps is never extractable
	// copied: made by C_CopyObject of a session key that was extractable
	// while it was wrapped to the manufacturer (the transport key).
	copied bool
}

// specOf is the spec of the key labelled label, and false for a label that
// is not one of keyport's long-lived keys (the old masters are LegacyKeys').
func specOf(class uint, label string) (keySpec, bool) {
	kek := keySpec{class: pkcs11.CKO_SECRET_KEY, usages: kekUsage, mechs: kwpOnly, kek: true}
	var s keySpec
	switch {
	case label == LabelReceipt:
		s = keySpec{class: pkcs11.CKO_PRIVATE_KEY, usages: []uint{pkcs11.CKA_SIGN}, mechs: []uint{pkcs11.CKM_ECDSA}}
	case label == LabelAudit:
		s = keySpec{class: pkcs11.CKO_SECRET_KEY, usages: []uint{pkcs11.CKA_SIGN, pkcs11.CKA_VERIFY}, mechs: []uint{pkcs11.CKM_SHA256_HMAC}}
	case label == LabelSealEnc:
		s = keySpec{class: pkcs11.CKO_SECRET_KEY, usages: []uint{pkcs11.CKA_ENCRYPT}, mechs: []uint{pkcs11.CKM_AES_ECB}}
	case label == LabelSealMAC:
		s = keySpec{class: pkcs11.CKO_SECRET_KEY, usages: []uint{pkcs11.CKA_SIGN}, mechs: []uint{pkcs11.CKM_AES_CMAC}}
	case label == LabelISDKEK:
		s = kek
		s.isd = true
	case strings.HasPrefix(label, legacyPrefix) && strings.HasSuffix(label, "/kek"):
		s = kek
	case strings.HasPrefix(label, legacyPrefix) && strings.HasSuffix(label, "/transport"):
		s = keySpec{class: pkcs11.CKO_SECRET_KEY, usages: []uint{pkcs11.CKA_UNWRAP},
			mechs: []uint{pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_ECB}, copied: true}
	default:
		return keySpec{}, false
	}
	return s, s.class == class
}

// KeyReport is what CheckKeys found.
type KeyReport struct {
	// Checked lists the labels of the keys looked at.
	Checked []string
	// Wrong lists the keys keyport did not make so ("label: why"): a
	// deployment must not use them (Err).
	Wrong []string
	// Modifiable lists the keys made before keyport fixed its keys'
	// attributes ("label: why"): a PIN holder can give them usages they
	// were made without, or destroy them (README, "Key custody").
	Modifiable []string
}

// Err is an error naming every Wrong key, or nil.
func (r KeyReport) Err() error {
	if len(r.Wrong) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrWrongKey, strings.Join(r.Wrong, "; "))
}

// ErrWrongKey: a key under one of keyport's labels is not as keyport makes
// it, and may be a look-alike a PIN holder put there.
var ErrWrongKey = errors.New("hsm: a key on the token is not as keyport makes it (replaced, or changed, by someone with the PIN?); keyport will not use the token until it is looked into")

// CheckKeys looks at every long-lived key of keyport's on the token.
func (h *HSM) CheckKeys(ctx context.Context) (KeyReport, error) {
	var r KeyReport
	err := h.do(ctx, "check keys", func(s *session) error {
		for _, class := range []uint{pkcs11.CKO_SECRET_KEY, pkcs11.CKO_PRIVATE_KEY} {
			found, err := h.tokenObjects(s, class)
			if err != nil {
				return err
			}
			for _, o := range found {
				label := o.label
				spec, ok := specOf(class, label)
				if !ok {
					continue
				}
				wrong, modifiable, err := h.checkKey(s, o.handle, spec)
				if err != nil {
					return fmt.Errorf("%s: %w", label, err)
				}
				r.Checked = append(r.Checked, label)
				if len(wrong) > 0 {
					r.Wrong = append(r.Wrong, label+": "+strings.Join(wrong, ", "))
				}
				if len(modifiable) > 0 {
					r.Modifiable = append(r.Modifiable, label+": "+strings.Join(modifiable, ", "))
				}
			}
		}
		return nil
	})
	slices.Sort(r.Checked)
	return r, err
}

// checkKey compares the key o with spec: what is wrong with it, and what
// shows it was made before keys were frozen.
func (h *HSM) checkKey(s *session, o pkcs11.ObjectHandle, spec keySpec) (wrong, modifiable []string, err error) {
	want := map[uint]bool{
		pkcs11.CKA_PRIVATE:           true,
		pkcs11.CKA_SENSITIVE:         true,
		pkcs11.CKA_EXTRACTABLE:       false,
		pkcs11.CKA_ALWAYS_SENSITIVE:  true,
		pkcs11.CKA_NEVER_EXTRACTABLE: !spec.copied,
	}
	if !spec.copied {
		want[pkcs11.CKA_LOCAL] = true // generated on the token: nobody knows its value
	}
	for _, u := range usageAttrs[spec.class] {
		want[u] = slices.Contains(spec.usages, u)
	}
	types := []uint{pkcs11.CKA_MODIFIABLE, pkcs11.CKA_ALLOWED_MECHANISMS}
	for t := range want {
		types = append(types, t)
	}
	slices.Sort(types[2:])
	tmpl := make([]*pkcs11.Attribute, len(types))
	for i, t := range types {
		tmpl[i] = pkcs11.NewAttribute(t, nil)
	}
	got, err := h.p.GetAttributeValue(s.h, o, tmpl)
	if err != nil {
		return nil, nil, fmt.Errorf("C_GetAttributeValue: %w", err)
	}
	if len(got) != len(types) {
		return nil, nil, fmt.Errorf("C_GetAttributeValue answered %d attributes of %d", len(got), len(types))
	}
	for _, a := range got {
		switch a.Type {
		case pkcs11.CKA_MODIFIABLE:
			if isTrue(a.Value) {
				modifiable = append(modifiable, "modifiable")
			}
		case pkcs11.CKA_ALLOWED_MECHANISMS:
			if m := parseMechanismList(a.Value); !sameSet(m, spec.mechs) {
				wrong = append(wrong, fmt.Sprintf("allowed mechanisms %s, want %s", mechNames(m), mechNames(spec.mechs)))
			}
		default:
			if isTrue(a.Value) != want[a.Type] {
				wrong = append(wrong, fmt.Sprintf("%s %t", attrName(a.Type), isTrue(a.Value)))
			}
		}
	}
	// CKA_DESTROYABLE is PKCS#11 v2.40's: asked alone, so that a token
	// older than that (CKR_ATTRIBUTE_TYPE_INVALID) is told, not refused.
	d, err := h.p.GetAttributeValue(s.h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DESTROYABLE, nil)})
	if rv, ok := ckr(err); ok && rv == pkcs11.CKR_ATTRIBUTE_TYPE_INVALID {
		modifiable = append(modifiable, "destroyable as far as it says (the token knows no CKA_DESTROYABLE)")
	} else if err != nil {
		return nil, nil, fmt.Errorf("C_GetAttributeValue CKA_DESTROYABLE: %w", err)
	} else if len(d) == 1 && isTrue(d[0].Value) {
		modifiable = append(modifiable, "destroyable")
	}
	if spec.copied {
		// It cannot wrap, so its template is not tried; but it has one.
		ok, err := h.hasUnwrapTemplate(s, o)
		if err != nil {
			return nil, nil, err
		}
		if !ok {
			wrong = append(wrong, "it has no unwrap template")
		}
	}
	if spec.kek && len(wrong) == 0 {
		w, m, err := h.tryUnwrapTemplate(s, o, spec.isd)
		if err != nil {
			return nil, nil, err
		}
		wrong, modifiable = append(wrong, w...), append(modifiable, m...)
	}
	return wrong, modifiable, nil
}

// tryUnwrapTemplate wraps a new session key under the KEK kek and unwraps
// it the ways kekPolicy forbids: readable, and (for the ISD KEK)
// extractable, which must be refused; and modifiable, which a KEK made
// before keys were frozen lets through.
func (h *HSM) tryUnwrapTemplate(s *session, kek pkcs11.ObjectHandle, isd bool) (wrong, modifiable []string, err error) {
	k, err := h.p.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, sessionAES(16, pkcs11.CKA_ENCRYPT))
	if err != nil {
		return nil, nil, fmt.Errorf("C_GenerateKey: %w", err)
	}
	defer h.destroy(s, k)
	blob, err := h.p.WrapKey(s.h, kwpMechanism, kek, k)
	if err != nil {
		return nil, nil, fmt.Errorf("C_WrapKey under the KEK: %w", err)
	}
	lets := func(tmpl []*pkcs11.Attribute) bool {
		o, err := h.p.UnwrapKey(s.h, kwpMechanism, kek, blob, tmpl)
		if err != nil {
			return false
		}
		h.destroy(s, o)
		return true
	}
	// asked is kekPolicy(extractable) as an unwrap's template, with
	// CKA_MODIFIABLE modifiable and last (the token refuses what follows
	// it false: frozenLast).
	asked := func(extractable *bool, modifiable bool) []*pkcs11.Attribute {
		t := frozenLast(kekPolicy(extractable))
		t[len(t)-1] = pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, modifiable)
		return t
	}
	no, yes := false, true
	if !lets(asked(&no, false)) {
		// What keyport asks must come through, or the refusals below
		// would tell nothing.
		return nil, nil, errors.New("the KEK does not unwrap, as keyport asks, a key it wrapped")
	}
	if lets([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
	}) {
		wrong = append(wrong, "its unwrap template lets a readable key out")
	}
	if isd && lets(asked(&yes, false)) {
		wrong = append(wrong, "its unwrap template lets an extractable key out")
	}
	extractable := (*bool)(nil)
	if isd {
		extractable = &no
	}
	if lets(asked(extractable, true)) {
		modifiable = append(modifiable, "its unwrap template lets a modifiable key out")
	}
	return wrong, modifiable, nil
}

func isTrue(v []byte) bool { return len(v) == 1 && v[0] != 0 }

func sameSet(a, b []uint) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

func mechNames(m []uint) string {
	if len(m) == 0 {
		return "none (any)"
	}
	names := map[uint]string{pkcs11.CKM_AES_KEY_WRAP_PAD: "AES-KWP", pkcs11.CKM_AES_ECB: "AES-ECB", pkcs11.CKM_AES_CMAC: "AES-CMAC",
		pkcs11.CKM_ECDSA: "ECDSA", pkcs11.CKM_SHA256_HMAC: "HMAC-SHA256"}
	out := make([]string, len(m))
	for i, x := range m {
		if n, ok := names[x]; ok {
			out[i] = n
		} else {
			out[i] = fmt.Sprintf("0x%x", x)
		}
	}
	return strings.Join(out, "+")
}

func attrName(t uint) string {
	names := map[uint]string{pkcs11.CKA_PRIVATE: "private", pkcs11.CKA_SENSITIVE: "sensitive", pkcs11.CKA_EXTRACTABLE: "extractable",
		pkcs11.CKA_ALWAYS_SENSITIVE: "always sensitive", pkcs11.CKA_NEVER_EXTRACTABLE: "never extractable", pkcs11.CKA_LOCAL: "generated on the token",
		pkcs11.CKA_ENCRYPT: "encrypt", pkcs11.CKA_DECRYPT: "decrypt", pkcs11.CKA_WRAP: "wrap", pkcs11.CKA_UNWRAP: "unwrap",
		pkcs11.CKA_SIGN: "sign", pkcs11.CKA_VERIFY: "verify", pkcs11.CKA_DERIVE: "derive"}
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("attribute 0x%x", t)
}
