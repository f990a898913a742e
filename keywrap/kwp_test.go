package keywrap

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rfc5649KEK is the KEK of the RFC 5649 §6 examples.
const rfc5649KEK = "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"

// rfc5649Vectors are the two examples of RFC 5649 §6 (AES-192 KEK): one in
// the RFC 3394 process, one in the single-block ECB case.
var rfc5649Vectors = []struct{ name, key, wrapped string }{
	{"20 octets", "c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
	{"7 octets", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
}

func TestKWPMatchesTheRFC5649Vectors(t *testing.T) {
	for _, tt := range rfc5649Vectors {
		t.Run(tt.name, func(t *testing.T) {
			got, err := WrapKWP(unhex(t, rfc5649KEK), unhex(t, tt.key))
			if err != nil || hex.EncodeToString(got) != tt.wrapped {
				t.Fatalf("WrapKWP = %x, %v; want %s", got, err, tt.wrapped)
			}
			back, err := UnwrapKWP(unhex(t, rfc5649KEK), got)
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

func TestKWPUnwrapRejectsBlobsThatAreNotMultiplesOf8OrShorterThan16(t *testing.T) {
	kek := bytes.Repeat([]byte{9}, 16)
	for _, n := range []int{0, 8, 15, 17, 23} {
		_, err := UnwrapKWP(kek, make([]byte, n))
		if err == nil || errors.Is(err, ErrKWPIntegrity) {
			t.Errorf("%d bytes: err = %v, want a length error", n, err)
		}
	}
}

func TestKWPRefusesAKEKThatIsNotAESAndAnEmptyKey(t *testing.T) {
	if _, err := WrapKWP(make([]byte, 20), []byte{1}); err == nil {
		t.Error("WrapKWP accepted a 20-byte KEK")
	}
	if _, err := UnwrapKWP(make([]byte, 20), make([]byte, 16)); err == nil {
		t.Error("UnwrapKWP accepted a 20-byte KEK")
	}
	if _, err := WrapKWP(make([]byte, 16), nil); err == nil {
		t.Error("WrapKWP wrapped an empty key")
	}
}
