package ace_test

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/gp"
)

func TestDecideFollowsTheARARuleSearchOrder(t *testing.T) {
	cert, otherCert := []byte("app certificate DER"), []byte("other app DER")
	app := ace.NewAppID(cert, "com.example.wallet")
	s256 := sha256.Sum256(cert)
	s1 := sha1.Sum(cert)
	o256 := sha256.Sum256(otherCert)
	aid, otherAID := h("F0010203040501"), h("F0010203040502")
	always, never := []byte{0x01}, []byte{0x00}
	cplcOnly := h("80CA9F7F" + "FFFFFFFF")
	rule := func(aid, dev, apdu []byte) gp.AccessRule {
		return gp.AccessRule{AID: aid, DeviceAppID: dev, APDU: apdu}
	}
	anyAID, anyApp := []byte{}, []byte{}
	cases := []struct {
		name    string
		rules   []gp.AccessRule
		allowed bool
		always  bool
		reason  string
	}{
		{"no rules", nil, false, false, "no access rule"},
		{"specific AID and SHA-256", []gp.AccessRule{rule(aid, s256[:], always)}, true, true, "this app"},
		{"specific AID and SHA-1", []gp.AccessRule{rule(aid, s1[:], always)}, true, true, "this app"},
		{"specific beats every-app", []gp.AccessRule{rule(aid, anyApp, always), rule(aid, s256[:], cplcOnly)}, true, false, "this app"},
		{"every app of the AID", []gp.AccessRule{rule(aid, anyApp, always)}, true, true, "every app"},
		{"AID rules for others only deny, even with a generic rule", []gp.AccessRule{rule(aid, o256[:], always), rule(anyAID, s256[:], always)}, false, false, "none of them for this app"},
		{"another AID's rule does not apply", []gp.AccessRule{rule(otherAID, s256[:], always)}, false, false, "no access rule"},
		{"every applet, this app", []gp.AccessRule{rule(otherAID, o256[:], always), rule(anyAID, s256[:], always)}, true, true, "every applet and this app"},
		{"every applet, every app", []gp.AccessRule{rule(anyAID, anyApp, cplcOnly)}, true, false, "every applet and every app"},
		{"NEVER wins at its step", []gp.AccessRule{rule(aid, s256[:], always), rule(aid, s1[:], never)}, false, false, "NEVER"},
		{"NEVER at a later step does not matter", []gp.AccessRule{rule(aid, s256[:], always), rule(anyAID, anyApp, never)}, true, true, "this app"},
		{"ALWAYS and a filter: ALWAYS", []gp.AccessRule{rule(aid, s256[:], cplcOnly), rule(aid, s1[:], always)}, true, true, ""},
		{"no APDU-AR-DO grants nothing", []gp.AccessRule{{AID: aid, DeviceAppID: s256[:], Perm: make([]byte, 8)}}, false, false, "grants no APDU access"},
		{"implicit selection is the basic channel's", []gp.AccessRule{{Implicit: true, DeviceAppID: s256[:], APDU: always}}, false, false, "no access rule"},
		{"package named and matching", []gp.AccessRule{{AID: aid, DeviceAppID: s256[:], Package: "com.example.wallet", APDU: always}}, true, true, ""},
		{"package named, another one", []gp.AccessRule{{AID: aid, DeviceAppID: s256[:], Package: "com.example.other", APDU: always}}, false, false, "none of them for this app"},
		{"malformed filter", []gp.AccessRule{rule(aid, s256[:], h("80CA"))}, false, false, "malformed"},
	}
	for _, c := range cases {
		a := ace.Decide(c.rules, aid, app)
		if a.Allowed != c.allowed || a.Always != c.always || !strings.Contains(a.Reason, c.reason) {
			t.Errorf("%s: %+v, want allowed=%v always=%v reason ~%q", c.name, a, c.allowed, c.always, c.reason)
		}
	}
}

func TestAccessPermitsByFilter(t *testing.T) {
	a := ace.Decide([]gp.AccessRule{{AID: h("F0010203040501"), DeviceAppID: []byte{},
		APDU: h("80CA9F7F" + "FFFFFFFF" + "00B00000" + "FFFF0000")}}, h("F0010203040501"), ace.NewAppID(nil, ""))
	if !a.Allowed || a.Always || len(a.Filters) != 2 {
		t.Fatalf("%+v", a)
	}
	for hdr, want := range map[[4]byte]bool{
		{0x80, 0xCA, 0x9F, 0x7F}: true,
		{0x80, 0xCA, 0x00, 0x66}: false,
		{0x00, 0xB0, 0x12, 0x34}: true, // READ BINARY at any offset
		{0x00, 0xB2, 0x00, 0x00}: false,
	} {
		if got := a.Permits(hdr); got != want {
			t.Errorf("Permits(%X) = %v, want %v", hdr, got, want)
		}
	}
	if (ace.Access{}).Permits([4]byte{}) {
		t.Error("a refused access permits a command")
	}
	if s := ace.NewAppID([]byte("x"), "").String(); !bytes.Equal(h(s), func() []byte { x := sha256.Sum256([]byte("x")); return x[:] }()) {
		t.Errorf("AppID string %s", s)
	}
}
