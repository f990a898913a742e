package hsm_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
)

// A token keyport made itself passes the check: every long-lived key is
// looked at, none is wrong and none is modifiable.
func TestCheckKeysPassesATokenKeyportMade(t *testing.T) {
	h := hsmtest.Open(t)
	if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
	transport(t, h)
	r, err := h.CheckKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{hsm.LabelAudit, hsm.BatchKEKLabel("b1"), hsm.TransportLabel("imp"), hsm.LabelISDKEK, hsm.LabelReceipt, hsm.LabelSealEnc, hsm.LabelSealMAC}
	slices.Sort(want)
	if !slices.Equal(r.Checked, want) {
		t.Errorf("checked %v, want %v", r.Checked, want)
	}
	if len(r.Wrong) > 0 || len(r.Modifiable) > 0 || r.Err() != nil {
		t.Errorf("a token keyport made: wrong %v, modifiable %v", r.Wrong, r.Modifiable)
	}
}

// insider puts a key made with tmpl (the label and ID added) under label
// on a new token, through a session of the PIN holder's own, before
// keyport makes its keys there (keyport's keys cannot be destroyed, so
// that is when a look-alike gets in), and returns the check's report once
// keyport has made the rest.
func insider(t *testing.T, label string, mech uint, tmpl []*pkcs11.Attribute) hsm.KeyReport {
	t.Helper()
	tok := hsmtest.NewToken(t)
	h, err := hsm.Open(ctx, hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	err = h.RawForTest(ctx, func(p hsm.P11, sh pkcs11.SessionHandle) error {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true))
		if mech == 0 {
			_, err = p.CreateObject(sh, tmpl)
		} else {
			_, err = p.GenerateKey(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, tmpl)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if label != hsm.BatchKEKLabel("b1") {
		if err := h.CreateBatchKEK(ctx, "b1"); err != nil {
			t.Fatal(err)
		}
	}
	r, err := h.CheckKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var A = pkcs11.NewAttribute

func secret(typ uint, extra ...*pkcs11.Attribute) []*pkcs11.Attribute {
	return append([]*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), A(pkcs11.CKA_KEY_TYPE, typ), A(pkcs11.CKA_PRIVATE, true)}, extra...)
}

// kekLike is the template of a KEK as keyport makes one, without its
// unwrap template unless policy is given.
func kekLike(policy []byte) []*pkcs11.Attribute {
	t := secret(pkcs11.CKK_AES, A(pkcs11.CKA_VALUE_LEN, 32), A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_EXTRACTABLE, false),
		A(pkcs11.CKA_WRAP, true), A(pkcs11.CKA_UNWRAP, true), A(pkcs11.CKA_ENCRYPT, false), A(pkcs11.CKA_DECRYPT, false),
		A(pkcs11.CKA_SIGN, false), A(pkcs11.CKA_VERIFY, false), A(pkcs11.CKA_DERIVE, false),
		A(pkcs11.CKA_ALLOWED_MECHANISMS, hsm.MechanismListForTest(pkcs11.CKM_AES_KEY_WRAP_PAD)))
	if policy != nil {
		t = append(t, A(pkcs11.CKA_UNWRAP_TEMPLATE, policy))
	}
	return t
}

// Look-alikes a PIN holder could put under keyport's labels are found, and
// named with what gives them away; keyport's own keys beside them are not.
func TestCheckKeysFindsTheLookAlikesAPINHolderPutsUnderKeyportsLabels(t *testing.T) {
	value := make([]byte, 32)
	cases := []struct {
		name, label string
		mech        uint
		tmpl        func() ([]*pkcs11.Attribute, func())
		says        string
	}{
		{"an ISD KEK of a known value", hsm.LabelISDKEK, 0, func() ([]*pkcs11.Attribute, func()) {
			var t []*pkcs11.Attribute
			for _, a := range kekLike(nil) {
				if a.Type != pkcs11.CKA_VALUE_LEN { // C_CreateObject takes the value instead
					t = append(t, a)
				}
			}
			return append(t, A(pkcs11.CKA_VALUE, value)), func() {}
		}, "generated on the token false"},
		{"an ISD KEK generated with no unwrap template", hsm.LabelISDKEK, pkcs11.CKM_AES_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			return kekLike(nil), func() {}
		}, "lets a readable key out"},
		{"a batch KEK generated with no unwrap template", hsm.BatchKEKLabel("b1"), pkcs11.CKM_AES_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			return kekLike(nil), func() {}
		}, "lets a readable key out"},
		{"an ISD KEK that lets extractable keys out", hsm.LabelISDKEK, pkcs11.CKM_AES_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			policy, free := hsm.AttributeArrayForTest([]*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), A(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
				A(pkcs11.CKA_TOKEN, false), A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_DECRYPT, false), A(pkcs11.CKA_UNWRAP, false),
				A(pkcs11.CKA_DERIVE, false), A(pkcs11.CKA_MODIFIABLE, false)})
			return kekLike(policy), free
		}, "lets an extractable key out"},
		{"a transport key with no unwrap template", hsm.TransportLabel("imp"), pkcs11.CKM_AES_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			return secret(pkcs11.CKK_AES, A(pkcs11.CKA_VALUE_LEN, 32), A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_EXTRACTABLE, false),
				A(pkcs11.CKA_UNWRAP, true), A(pkcs11.CKA_WRAP, false), A(pkcs11.CKA_ENCRYPT, false), A(pkcs11.CKA_DECRYPT, false),
				A(pkcs11.CKA_SIGN, false), A(pkcs11.CKA_VERIFY, false), A(pkcs11.CKA_DERIVE, false),
				A(pkcs11.CKA_ALLOWED_MECHANISMS, hsm.MechanismListForTest(pkcs11.CKM_AES_KEY_WRAP_PAD, pkcs11.CKM_AES_ECB))), func() {}
		}, "it has no unwrap template"},
		{"an audit key once extractable", hsm.LabelAudit, pkcs11.CKM_GENERIC_SECRET_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			return secret(pkcs11.CKK_GENERIC_SECRET, A(pkcs11.CKA_VALUE_LEN, 32), A(pkcs11.CKA_SENSITIVE, false), A(pkcs11.CKA_EXTRACTABLE, true),
				A(pkcs11.CKA_SIGN, true), A(pkcs11.CKA_VERIFY, true), A(pkcs11.CKA_ENCRYPT, false), A(pkcs11.CKA_DECRYPT, false),
				A(pkcs11.CKA_WRAP, false), A(pkcs11.CKA_UNWRAP, false), A(pkcs11.CKA_DERIVE, false),
				A(pkcs11.CKA_ALLOWED_MECHANISMS, hsm.MechanismListForTest(pkcs11.CKM_SHA256_HMAC))), func() {}
		}, "extractable true"},
		{"a seal key that decrypts", hsm.LabelSealEnc, pkcs11.CKM_AES_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			return secret(pkcs11.CKK_AES, A(pkcs11.CKA_VALUE_LEN, 32), A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_EXTRACTABLE, false),
				A(pkcs11.CKA_ENCRYPT, true), A(pkcs11.CKA_DECRYPT, true), A(pkcs11.CKA_WRAP, false), A(pkcs11.CKA_UNWRAP, false),
				A(pkcs11.CKA_SIGN, false), A(pkcs11.CKA_VERIFY, false), A(pkcs11.CKA_DERIVE, false),
				A(pkcs11.CKA_ALLOWED_MECHANISMS, hsm.MechanismListForTest(pkcs11.CKM_AES_ECB))), func() {}
		}, "decrypt true"},
		{"a seal key with any mechanism", hsm.LabelSealEnc, pkcs11.CKM_AES_KEY_GEN, func() ([]*pkcs11.Attribute, func()) {
			return secret(pkcs11.CKK_AES, A(pkcs11.CKA_VALUE_LEN, 32), A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_EXTRACTABLE, false),
				A(pkcs11.CKA_ENCRYPT, true), A(pkcs11.CKA_DECRYPT, false), A(pkcs11.CKA_WRAP, false), A(pkcs11.CKA_UNWRAP, false),
				A(pkcs11.CKA_SIGN, false), A(pkcs11.CKA_VERIFY, false), A(pkcs11.CKA_DERIVE, false)), func() {}
		}, "allowed mechanisms none (any)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmpl, free := c.tmpl()
			defer free()
			r := insider(t, c.label, c.mech, tmpl)
			err := r.Err()
			if !errors.Is(err, hsm.ErrWrongKey) || len(r.Wrong) != 1 || !strings.HasPrefix(r.Wrong[0], c.label+": ") ||
				!strings.Contains(r.Wrong[0], c.says) {
				t.Fatalf("wrong %v (err %v): want only %s, saying %q", r.Wrong, err, c.label, c.says)
			}
		})
	}
}

// A KEK made before keys were frozen (modifiable, an unwrap template that
// does not fix what it lets out) is reported as such, not as a look-alike.
func TestCheckKeysTellsAKEKMadeBeforeKeysWereFrozen(t *testing.T) {
	policy, free := hsm.AttributeArrayForTest([]*pkcs11.Attribute{A(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), A(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		A(pkcs11.CKA_TOKEN, false), A(pkcs11.CKA_SENSITIVE, true), A(pkcs11.CKA_DECRYPT, false), A(pkcs11.CKA_UNWRAP, false),
		A(pkcs11.CKA_DERIVE, false), A(pkcs11.CKA_EXTRACTABLE, false)})
	defer free()
	r := insider(t, hsm.LabelISDKEK, pkcs11.CKM_AES_KEY_GEN, kekLike(policy))
	if len(r.Wrong) > 0 {
		t.Fatalf("an old KEK is called wrong: %v", r.Wrong)
	}
	if len(r.Modifiable) != 1 || r.Modifiable[0] != hsm.LabelISDKEK+": modifiable, destroyable, its unwrap template lets a modifiable key out" {
		t.Fatalf("modifiable %q", r.Modifiable)
	}
}
