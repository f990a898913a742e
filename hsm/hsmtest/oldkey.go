package hsmtest

import (
	"testing"

	"github.com/miekg/pkcs11"
)

// OldKey creates on tok a key as keyport made them before card keys were
// wrapped at rest, with a known value: a derive-capable master (derive) or
// a transport key without an unwrap template. It speaks PKCS#11 in a
// session of its own, so that migration tests can set up an old token.
func OldKey(t testing.TB, tok Token, label string, value []byte, derive bool) {
	t.Helper()
	p := pkcs11.New(ModulePath)
	if p == nil {
		t.Fatalf("hsmtest: cannot load %s", ModulePath)
	}
	if err := p.Initialize(); err != nil {
		if e, ok := err.(pkcs11.Error); !ok || e != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			t.Fatalf("hsmtest: C_Initialize: %v", err)
		}
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, slot := range slots {
		ti, err := p.GetTokenInfo(slot)
		if err != nil || ti.Label != tok.Label {
			continue
		}
		sh, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		defer p.CloseSession(sh)
		if err := p.Login(sh, pkcs11.CKU_USER, tok.UserPIN); err != nil {
			if e, ok := err.(pkcs11.Error); !ok || e != pkcs11.CKR_USER_ALREADY_LOGGED_IN {
				t.Fatal(err)
			}
		}
		_, err = p.CreateObject(sh, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, derive),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, !derive),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, value),
		})
		if err != nil {
			t.Fatalf("hsmtest: create %s: %v", label, err)
		}
		return
	}
	t.Fatalf("hsmtest: no token %q", tok.Label)
}
