package keyport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/gp"
)

func testCertPEM(t testing.TB) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestAccessRuleRequestsThatNameOneAppAreEncodedAsTheirREFARDO(t *testing.T) {
	h := strings.Repeat("AB", 32)
	r, err := ParseAccessRuleRequest([]byte(`{"certificate_sha256":"` + h + `","android_package":"com.example.pay",
		"apdu":[{"header":"80CA0000","mask":"FFFF0000"}],"nfc":true,"carrier_privileges":true}`))
	if err != nil {
		t.Fatal(err)
	}
	r.AID = "A000000151535041"
	g, err := r.Card()
	if err != nil {
		t.Fatal(err)
	}
	want := "E2" + "58" + "E1" + "3D" + "4F08A000000151535041" + "C120" + h + "CA0F" + hex.EncodeToString([]byte("com.example.pay")) +
		"E3" + "17" + "D008" + "80CA0000FFFF0000" + "D10101" + "DB080000000000000001"
	if got := strings.ToUpper(hex.EncodeToString(g.Bytes())); got != strings.ToUpper(want) {
		t.Fatalf("REF-AR-DO\n got %s\nwant %s", got, strings.ToUpper(want))
	}
	v := r.View()
	if v.CertificateSHA256 != h || v.AndroidPackage != "com.example.pay" || !*v.NFC || !v.CarrierPrivileges {
		t.Fatalf("view %+v", v)
	}
	if fs, ok := v.APDU.([]APDUFilter); !ok || len(fs) != 1 || fs[0].Header != "80CA0000" {
		t.Fatalf("view filters %#v", v.APDU)
	}
	pemRule, err := ParseAccessRuleRequest([]byte(`{"certificate_pem":` + jsonString(testCertPEM(t)) + `,"apdu":"never"}`))
	if err != nil || pemRule.HashAlg != "sha256" || len(pemRule.Hash) != 64 || pemRule.APDU != APDUNever {
		t.Fatalf("PEM rule %+v %v", pemRule, err)
	}
	sha1, err := ParseAccessRuleRequest([]byte(`{"certificate_sha1":"` + strings.Repeat("0a:", 19) + `0a","apdu":"always"}`))
	if err != nil || sha1.HashAlg != "sha1" || sha1.Hash != strings.Repeat("0A", 20) {
		t.Fatalf("SHA-1 rule %+v %v", sha1, err)
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestBadAccessRuleRequestsAreRefusedNamingTheField(t *testing.T) {
	h := strings.Repeat("AB", 32)
	for _, c := range []struct{ name, body, field string }{
		{"not JSON", `{`, "body"},
		{"an unknown field", `{"certificate_sha256":"` + h + `","apdu":"always","aid":"FFFFFFFFFF"}`, "body"},
		{"two objects", `{"certificate_sha256":"` + h + `","apdu":"always"}{}`, "body"},
		{"no certificate: any app", `{"apdu":"always"}`, "certificate"},
		{"an empty hash: any app", `{"certificate_sha256":"","apdu":"always"}`, "certificate"},
		{"two certificates", `{"certificate_sha256":"` + h + `","certificate_sha1":"` + strings.Repeat("AB", 20) + `","apdu":"always"}`, "certificate"},
		{"a short SHA-256", `{"certificate_sha256":"ABCD","apdu":"always"}`, "certificate_sha256"},
		{"a SHA-1 for SHA-256", `{"certificate_sha256":"` + strings.Repeat("AB", 20) + `","apdu":"always"}`, "certificate_sha256"},
		{"hash not hex", `{"certificate_sha1":"` + strings.Repeat("ZZ", 20) + `","apdu":"always"}`, "certificate_sha1"},
		{"an all-zero hash", `{"certificate_sha256":"` + strings.Repeat("00", 32) + `","apdu":"always"}`, "certificate_sha256"},
		{"PEM garbage", `{"certificate_pem":"hello","apdu":"always"}`, "certificate_pem"},
		{"a PEM key, not a certificate", `{"certificate_pem":"-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n","apdu":"always"}`, "certificate_pem"},
		{"a PEM certificate that is not X.509", `{"certificate_pem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","apdu":"always"}`, "certificate_pem"},
		{"no APDU access", `{"certificate_sha256":"` + h + `"}`, "apdu"},
		{"an unknown APDU word", `{"certificate_sha256":"` + h + `","apdu":"sometimes"}`, "apdu"},
		{"no filter", `{"certificate_sha256":"` + h + `","apdu":[]}`, "apdu"},
		{"a 3-byte header", `{"certificate_sha256":"` + h + `","apdu":[{"header":"80CA00","mask":"FFFF0000"}]}`, "apdu[0].header"},
		{"a 5-byte mask", `{"certificate_sha256":"` + h + `","apdu":[{"header":"80CA0000","mask":"FFFF000000"}]}`, "apdu[0].mask"},
		{"a mask not hex", `{"certificate_sha256":"` + h + `","apdu":[{"header":"80CA0000","mask":"XXXXXXXX"}]}`, "apdu[0].mask"},
		{"a filter with an extra field", `{"certificate_sha256":"` + h + `","apdu":[{"header":"80CA0000","mask":"FFFF0000","le":1}]}`, "apdu"},
		{"too many filters", `{"certificate_sha256":"` + h + `","apdu":[` + strings.Repeat(`{"header":"80CA0000","mask":"FFFF0000"},`, MaxAPDUFilters) + `{"header":"80CA0000","mask":"FFFF0000"}]}`, "apdu"},
		{"a package of one segment", `{"certificate_sha256":"` + h + `","apdu":"always","android_package":"app"}`, "android_package"},
		{"a package with a space", `{"certificate_sha256":"` + h + `","apdu":"always","android_package":"com.ex ample"}`, "android_package"},
		{"nfc not a boolean", `{"certificate_sha256":"` + h + `","apdu":"always","nfc":"yes"}`, "body"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseAccessRuleRequest([]byte(c.body))
			var inv *InvalidError
			if !errors.As(err, &inv) || inv.Field != c.field {
				t.Fatalf("error %v, want an invalid %s", err, c.field)
			}
		})
	}
}

func FuzzParseAccessRuleRequest(f *testing.F) {
	h := strings.Repeat("AB", 32)
	f.Add([]byte(`{"certificate_sha256":"` + h + `","apdu":"always"}`))
	f.Add([]byte(`{"certificate_sha1":"` + strings.Repeat("01", 20) + `","apdu":[{"header":"80CA0000","mask":"FFFF0000"}],"nfc":false}`))
	f.Add([]byte(`{"certificate_pem":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","apdu":"never"}`))
	f.Add([]byte(`{"certificate_sha256":"` + h + `","apdu":"always","android_package":"a.b","carrier_privileges":true}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		r, err := ParseAccessRuleRequest(in)
		if err != nil {
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("error is not an *InvalidError: %v", err)
			}
			return
		}
		r.AID = "A000000151535041"
		g, err := r.Card()
		if err != nil {
			t.Fatalf("accepted a rule that does not encode: %v", err)
		}
		if n := len(g.DeviceAppID); n != 20 && n != 32 {
			t.Fatalf("accepted a %d-byte hash", n)
		}
		back, err := gp.ParseAccessRules(g.Bytes())
		if err != nil || len(back) != 1 || hex.EncodeToString(back[0].Bytes()) != hex.EncodeToString(g.Bytes()) {
			t.Fatalf("REF-AR-DO %X does not parse back: %v", g.Bytes(), err)
		}
		if len(g.APDU) != 1 && (len(g.APDU) == 0 || len(g.APDU)%8 != 0) {
			t.Fatalf("APDU-AR-DO %X", g.APDU)
		}
	})
}
