package hsm

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/keyport/keyport"
)

func unhexT(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 5649 §6 test vectors.
func TestKWPMatchesTheRFC5649Vectors(t *testing.T) {
	kek := "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"
	tests := []struct{ name, key, wrapped string }{
		{"20 octets", "c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"7 octets", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := WrapKWP(unhexT(t, kek), unhexT(t, tt.key))
			if err != nil || hex.EncodeToString(got) != tt.wrapped {
				t.Fatalf("WrapKWP = %x, %v; want %s", got, err, tt.wrapped)
			}
			back, err := UnwrapKWP(unhexT(t, kek), got)
			if err != nil || hex.EncodeToString(back) != tt.key {
				t.Fatalf("UnwrapKWP = %x, %v", back, err)
			}
		})
	}
}

func TestKWPRoundTripsEveryLengthUpTo72Bytes(t *testing.T) {
	kek := bytes.Repeat([]byte{9}, 32)
	for n := 1; n <= 72; n++ {
		key := make([]byte, n)
		rand.Read(key)
		w, err := WrapKWP(kek, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(w) != (n+7)/8*8+8 {
			t.Fatalf("n=%d: wrapped length %d", n, len(w))
		}
		back, err := UnwrapKWP(kek, w)
		if err != nil || !bytes.Equal(back, key) {
			t.Fatalf("n=%d: %x, %v", n, back, err)
		}
	}
}

func TestKWPUnwrapRejectsAlteredDataAndTheWrongKey(t *testing.T) {
	kek := bytes.Repeat([]byte{9}, 32)
	for _, n := range []int{7, 16, 20} {
		w, _ := WrapKWP(kek, bytes.Repeat([]byte{1}, n))
		for i := range w {
			bad := bytes.Clone(w)
			bad[i] ^= 0x80
			if _, err := UnwrapKWP(kek, bad); !errors.Is(err, ErrKWPIntegrity) {
				t.Fatalf("n=%d byte %d altered: err = %v", n, i, err)
			}
		}
		if _, err := UnwrapKWP(bytes.Repeat([]byte{8}, 32), w); !errors.Is(err, ErrKWPIntegrity) {
			t.Fatalf("n=%d wrong key: err = %v", n, err)
		}
	}
}

func TestRSAAESRoundTripsWithSHA1AndSHA256OAEP(t *testing.T) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{0x42}, 16)
	for _, h := range []keyport.OAEPHash{keyport.OAEPSHA1, keyport.OAEPSHA256} {
		blob, err := WrapRSAAES(&priv.PublicKey, key, h)
		if err != nil {
			t.Fatal(err)
		}
		got, err := UnwrapRSAAES(priv, blob, h)
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("%s: %x, %v", h, got, err)
		}
	}
	blob, _ := WrapRSAAES(&priv.PublicKey, key, keyport.OAEPSHA256)
	if _, err := UnwrapRSAAES(priv, blob, keyport.OAEPSHA1); err == nil {
		t.Fatal("a SHA-256 OAEP blob opened with SHA-1")
	}
}

func TestKCVOfTheGPDefaultTestKeyMatchesOpenSSL(t *testing.T) {
	// The GP test key 40..4F. Expected value computed independently:
	// printf '\x01%.0s' $(seq 16) | openssl enc -aes-128-ecb -K 404142434445464748494a4b4c4d4e4f -nopad
	got, err := KCV(unhexT(t, "404142434445464748494a4b4c4d4e4f"))
	if err != nil || got != "504A77" {
		t.Fatalf("KCV = %q, %v; want 504A77", got, err)
	}
	if _, err := KCV([]byte{1, 2, 3}); err == nil {
		t.Fatal("KCV of a 3-byte key accepted")
	}
}

func TestDerivationDataUsesUpperCaseAIDAndTheDocumentedPrefix(t *testing.T) {
	a := DerivationData("89049032123451234512345678901235", "a0000001515350", keyport.UsageENC)
	b := DerivationData("89049032123451234512345678901235", "A0000001515350", keyport.UsageENC)
	c := DerivationData("89049032123451234512345678901235", "A0000001515350", keyport.UsageMAC)
	if a != b || a == c {
		t.Fatalf("%x %x %x", a, b, c)
	}
}
