package keyport

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
)

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestParsePublicKeyPEMAcceptsRSA3072InEveryUsualEncoding(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	spki, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	for name, in := range map[string][]byte{
		"SPKI PEM":  pemOf("PUBLIC KEY", spki),
		"PKCS1 PEM": pemOf("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&k.PublicKey)),
		"SPKI DER":  spki,
	} {
		got, err := ParsePublicKeyPEM(in)
		if err != nil || got.N.Cmp(k.N) != 0 {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParsePublicKeyPEMRefusesSmallNonRSAPrivateAndGarbageKeys(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	good := pemOf("PUBLIC KEY", smallDER)
	cases := map[string][]byte{
		"2048 bits is too small":    pemOf("PUBLIC KEY", smallDER),
		"keyport wraps only to RSA": pemOf("PUBLIC KEY", ecDER),
		"PRIVATE key":               pemOf("PRIVATE KEY", []byte{1}),
		"not a public key":          pemOf("CERTIFICATE REQUEST", []byte{1}),
		"not a PEM or DER":          []byte("hello"),
		"damaged":                   good[:len(good)/2],
	}
	for want, in := range cases {
		_, err := ParsePublicKeyPEM(in)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q, got %v", want, err)
		}
	}
}

func FuzzParsePublicKeyPEM(f *testing.F) {
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte{0x30, 0x82, 0x01, 0x22})
	f.Add([]byte("-----BEGIN"))
	f.Fuzz(func(t *testing.T, in []byte) {
		k, err := ParsePublicKeyPEM(in)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if k.N.BitLen() < MinWrappingKeyBits {
			t.Fatalf("accepted %d-bit key", k.N.BitLen())
		}
	})
}
