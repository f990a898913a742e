package keyport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// signTestPackage signs like Service.signPackage, with a Go key instead of the HSM.
func signTestPackage(t *testing.T, key *ecdsa.PrivateKey, kid string, p *KeyPackage) []byte {
	t.Helper()
	payload, _ := json.Marshal(p)
	hdr, _ := json.Marshal(jwsHeader{Alg: "ES256", Kid: kid, Typ: KeyPackageType})
	j := JWS{Protected: b64.EncodeToString(hdr), Payload: b64.EncodeToString(payload)}
	d := sha256.Sum256([]byte(j.Protected + "." + j.Payload))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	j.Signature = b64.EncodeToString(sig)
	out, _ := json.Marshal(j)
	return out
}

func TestVerifyKeyPackageAcceptsTheSignedPackageAndRejectsEveryTamper(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	set := JWKS{Keys: []JWK{NewJWK("k1", &key.PublicKey)}}
	p := &KeyPackage{Version: 1, EID: EID(testEID), AID: "A0000001515350410101", KVN: 48, SCP: "03", I: "70",
		Keys: []PackageKey{{ID: 1, Usage: UsageENC, Bits: 128, KCV: "EE72CB", Wrapped: []byte{1, 2, 3}}}}
	pkg := signTestPackage(t, key, "k1", p)
	got, err := VerifyKeyPackage(pkg, set)
	if err != nil || got.EID != p.EID || got.Keys[0].KCV != "EE72CB" {
		t.Fatalf("verify: %+v %v", got, err)
	}

	var j JWS
	json.Unmarshal(pkg, &j)
	tampered := func(f func(*JWS)) []byte { c := j; f(&c); b, _ := json.Marshal(c); return b }
	cases := map[string][]byte{
		"payload changed":   tampered(func(c *JWS) { c.Payload = flipFirst(c.Payload) }),
		"signature flipped": tampered(func(c *JWS) { c.Signature = flipFirst(c.Signature) }),
		"other signer":      signTestPackage(t, other, "k1", p),
		"unknown kid":       signTestPackage(t, key, "k2", p),
		"not json":          []byte("garbage"),
		"extra member":      []byte(strings.Replace(string(pkg), "{", `{"header":{},`, 1)),
	}
	for name, b := range cases {
		if _, err := VerifyKeyPackage(b, set); !errors.Is(err, ErrBadPackage) || !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrBadPackage", name, err)
		}
	}
}

// flipFirst changes the first base64url character to another one, always.
func flipFirst(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}
