package keywrap

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
)

// testKey is the RSA-2048 key of testdata/test-rsa2048.key, fixed so that
// the kept fuzz corpus holds blobs that open. Its PEM label says TESTING KEY
// so that secret scanners leave it alone; never use it for anything else.
var testKey = sync.OnceValues(func() (*rsa.PrivateKey, error) {
	b, err := os.ReadFile("testdata/test-rsa2048.key")
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode([]byte(strings.ReplaceAll(string(b), "TESTING KEY", "PRIVATE KEY")))
	if blk == nil {
		return nil, errors.New("testdata/test-rsa2048.key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	return k.(*rsa.PrivateKey), nil
})

func rsaKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	k, err := testKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRSAAESRoundTripsWithSHA1AndSHA256OAEP(t *testing.T) {
	priv := rsaKey(t)
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		for _, n := range []int{16, 24, 32} {
			key := bytes.Repeat([]byte{0x42}, n)
			blob, err := WrapRSAAES(&priv.PublicKey, key, h)
			if err != nil {
				t.Fatal(err)
			}
			got, err := UnwrapRSAAES(priv, blob, h)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("%v, %d bytes: %x, %v", h, n, got, err)
			}
		}
	}
}

func TestRSAAESIsOAEPOfAnAES256KeyThenKWPUnderIt(t *testing.T) {
	priv := rsaKey(t)
	key := bytes.Repeat([]byte{0x42}, 16)
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA256} {
		blob, err := WrapRSAAES(&priv.PublicKey, key, h)
		if err != nil {
			t.Fatal(err)
		}
		if len(blob) != priv.Size()+24 {
			t.Fatalf("%v: %d bytes, want %d (RSA) + 24 (KWP of 16)", h, len(blob), priv.Size())
		}
		hf := sha1.New()
		if h == crypto.SHA256 {
			hf = sha256.New()
		}
		eph, err := rsa.DecryptOAEP(hf, nil, priv, blob[:priv.Size()], nil)
		if err != nil || len(eph) != 32 {
			t.Fatalf("%v: RSA part: %d bytes, %v; want an AES-256 key", h, len(eph), err)
		}
		got, err := UnwrapKWP(eph, blob[priv.Size():])
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("%v: KWP part: %x, %v", h, got, err)
		}
	}
}

func TestRSAAESUnwrapWithTheOtherOAEPHashFails(t *testing.T) {
	priv := rsaKey(t)
	blob, _ := WrapRSAAES(&priv.PublicKey, bytes.Repeat([]byte{0x42}, 16), crypto.SHA256)
	if _, err := UnwrapRSAAES(priv, blob, crypto.SHA1); !errors.Is(err, rsa.ErrDecryption) {
		t.Fatalf("a SHA-256 OAEP blob opened with SHA-1: err = %v", err)
	}
}

func TestRSAAESUnwrapRejectsAnRSAPartThatHoldsNoAESKey(t *testing.T) {
	priv := rsaKey(t)
	kwp, _ := WrapKWP(make([]byte, 32), bytes.Repeat([]byte{0x42}, 16))
	for _, n := range []int{0, 20, 31, 33} {
		rsaPart, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, &priv.PublicKey, make([]byte, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = UnwrapRSAAES(priv, append(rsaPart, kwp...), crypto.SHA1)
		if err == nil || !strings.Contains(err.Error(), "not an AES key") {
			t.Errorf("%d-byte RSA payload: err = %v", n, err)
		}
	}
}

func TestRSAAESUnwrapRejectsABlobWithoutTheLayoutsShape(t *testing.T) {
	priv := rsaKey(t)
	blob, _ := WrapRSAAES(&priv.PublicKey, bytes.Repeat([]byte{0x42}, 16), crypto.SHA1)
	for _, n := range []int{0, priv.Size(), priv.Size() + 8, priv.Size() + 23, priv.Size() + 25} {
		b := make([]byte, n)
		copy(b, blob)
		_, err := UnwrapRSAAES(priv, b, crypto.SHA1)
		if err == nil || !strings.Contains(err.Error(), "is not an RSA-AES blob") {
			t.Errorf("%d bytes: err = %v, want the shape error", n, err)
		}
	}
}

func TestRSAAESRefusesHashesOtherThanSHA1AndSHA256(t *testing.T) {
	priv := rsaKey(t)
	for _, h := range []crypto.Hash{0, crypto.MD5, crypto.SHA384, crypto.SHA512} {
		if _, err := WrapRSAAES(&priv.PublicKey, make([]byte, 16), h); err == nil {
			t.Errorf("WrapRSAAES with %v accepted", h)
		}
		if _, err := UnwrapRSAAES(priv, make([]byte, priv.Size()+24), h); err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Errorf("UnwrapRSAAES with %v: err = %v", h, err)
		}
	}
}

func TestParseOAEPHashReadsTheNamesKeyPackagesCarry(t *testing.T) {
	for _, tt := range []struct {
		name string
		want crypto.Hash
	}{{"sha1", crypto.SHA1}, {"sha256", crypto.SHA256}, {"", crypto.SHA1}} {
		if got, err := ParseOAEPHash(tt.name); err != nil || got != tt.want {
			t.Errorf("ParseOAEPHash(%q) = %v, %v; want %v", tt.name, got, err, tt.want)
		}
	}
	for _, name := range []string{"SHA1", "sha-256", "sha384", "md5"} {
		if _, err := ParseOAEPHash(name); err == nil {
			t.Errorf("ParseOAEPHash(%q) accepted", name)
		}
	}
}
