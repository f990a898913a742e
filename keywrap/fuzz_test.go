package keywrap

import (
	"bytes"
	"crypto"
	"errors"
	"strings"
	"testing"
)

// The unwrap side reads what others send: it is fuzzed. Seed corpora live in
// testdata/fuzz/<FuzzName>/ (the RFC 5649 examples, blobs under the test
// RSA key, truncated and altered ones) and are extended by `go test -fuzz`.

// FuzzUnwrapKWP checks that UnwrapKWP never panics, refuses every blob
// without the KWP shape, and that what it accepts wraps back to the same
// blob (KWP is deterministic, so an accepted blob has exactly one key).
func FuzzUnwrapKWP(f *testing.F) {
	for _, v := range rfc5649Vectors {
		f.Add(unhex(f, rfc5649KEK), unhex(f, v.wrapped))
	}
	f.Fuzz(func(t *testing.T, kek, wrapped []byte) {
		key, err := UnwrapKWP(kek, wrapped)
		validKEK := len(kek) == 16 || len(kek) == 24 || len(kek) == 32
		shaped := len(wrapped) >= 16 && len(wrapped)%8 == 0
		if err != nil {
			if !strings.HasPrefix(err.Error(), "keywrap: KWP unwrap: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			if validKEK && shaped && !errors.Is(err, ErrKWPIntegrity) {
				t.Fatalf("a well-formed blob failed with %v, want ErrKWPIntegrity", err)
			}
			return
		}
		if !validKEK || !shaped {
			t.Fatalf("accepted a %d-byte KEK and a %d-byte blob", len(kek), len(wrapped))
		}
		if len(key) <= len(wrapped)-16 || len(key) > len(wrapped)-8 {
			t.Fatalf("a %d-byte blob gave a %d-byte key", len(wrapped), len(key))
		}
		again, err := WrapKWP(kek, key)
		if err != nil || !bytes.Equal(again, wrapped) {
			t.Fatalf("%x unwraps to %x, which wraps to %x (%v)", wrapped, key, again, err)
		}
	})
}

// FuzzUnwrapRSAAES checks that the blob is split only where the layout says
// (the RSA modulus size, then a KWP-shaped rest), that UnwrapRSAAES never
// panics, and that a key it returns has the length the blob implies and
// survives a fresh wrap.
func FuzzUnwrapRSAAES(f *testing.F) {
	priv := rsaKey(f)
	size := priv.Size()
	f.Fuzz(func(t *testing.T, blob []byte, sha256 bool) {
		rsaPart, kwp, err := splitRSAAES(blob, size)
		shaped := len(blob) >= size+16 && (len(blob)-size)%8 == 0
		if (err == nil) != shaped {
			t.Fatalf("split of %d bytes: %v", len(blob), err)
		}
		if err == nil && (len(rsaPart) != size || !bytes.Equal(append(bytes.Clone(rsaPart), kwp...), blob)) {
			t.Fatalf("split of %d bytes into %d + %d", len(blob), len(rsaPart), len(kwp))
		}
		h := crypto.SHA1
		if sha256 {
			h = crypto.SHA256
		}
		key, err := UnwrapRSAAES(priv, blob, h)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "keywrap: RSA-AES unwrap: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if !shaped || len(blob) != size+8+(len(key)+7)/8*8 {
			t.Fatalf("a %d-byte blob gave a %d-byte key", len(blob), len(key))
		}
		again, err := WrapRSAAES(&priv.PublicKey, key, h)
		if err != nil {
			t.Fatal(err)
		}
		if back, err := UnwrapRSAAES(priv, again, h); err != nil || !bytes.Equal(back, key) {
			t.Fatalf("rewrapped key %x came back as %x (%v)", key, back, err)
		}
	})
}
