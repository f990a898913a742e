package hsm_test

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/keywrap"
)

// clearFirstKeys returns a derived domain's first keys in clear, as the
// provider gets them, to check the perso operations against.
func clearFirstKeys(t *testing.T, h *hsm.HSM, eid keyport.EID, aid keyport.AID) map[keyport.KeyUsage][]byte {
	t.Helper()
	sp, _ := keys(t)
	out := map[keyport.KeyUsage][]byte{}
	for _, k := range firstKeys(t, h, eid, aid) {
		key, err := keywrap.UnwrapRSAAES(sp, k.Wrapped, crypto.SHA1)
		if err != nil {
			t.Fatal(err)
		}
		out[k.Usage] = key
	}
	return out
}

// cmac is AES-CMAC (NIST SP 800-38B), written here to check the HSM.
func cmac(t *testing.T, key, msg []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	dbl := func(in []byte) []byte {
		out := make([]byte, 16)
		carry := byte(0)
		for i := 15; i >= 0; i-- {
			out[i] = in[i]<<1 | carry
			carry = in[i] >> 7
		}
		if carry == 1 {
			out[15] ^= 0x87
		}
		return out
	}
	l := make([]byte, 16)
	b.Encrypt(l, l)
	k1 := dbl(l)
	k2 := dbl(k1)
	n := (len(msg) + 15) / 16
	last := make([]byte, 16)
	if n > 0 && len(msg)%16 == 0 {
		copy(last, msg[16*(n-1):])
		for i := range last {
			last[i] ^= k1[i]
		}
	} else {
		if n == 0 {
			n = 1
		}
		rest := msg[16*(n-1):]
		copy(last, rest)
		last[len(rest)] = 0x80
		for i := range last {
			last[i] ^= k2[i]
		}
	}
	x := make([]byte, 16)
	for i := 0; i < n-1; i++ {
		for j := range x {
			x[j] ^= msg[16*i+j]
		}
		b.Encrypt(x, x)
	}
	for j := range x {
		x[j] ^= last[j]
	}
	b.Encrypt(x, x)
	return x
}

func TestSCP03CMACUsesTheStoredFirstKey(t *testing.T) {
	h := derivedBatch(t)
	clear := clearFirstKeys(t, h, testEID, testAID)
	for _, msg := range [][]byte{nil, []byte("0123456789abcdef"), bytes.Repeat([]byte{7}, 40)} {
		got, err := h.SCP03CMAC(ctx, firstRef(t, h, "b1", testEID, testAID, keyport.UsageMAC), msg)
		if err != nil {
			t.Fatal(err)
		}
		if want := cmac(t, clear[keyport.UsageMAC], msg); !bytes.Equal(got, want) {
			t.Fatalf("len %d: HSM %x, Go %x", len(msg), got, want)
		}
	}
}

// An imported domain's first key stays a manufacturer's KWP blob in the
// database: the HSM unwraps it under the batch transport key for the CMAC
// that checking a card's answer needs, and a blob under another key fails.
func TestSCP03CMACUnwrapsAnImportedFirstKeyUnderTheTransportKey(t *testing.T) {
	h := hsmtest.Open(t)
	tkey, _ := transport(t, h)
	clear := bytes.Repeat([]byte{0x5A}, 16)
	blob, err := keywrap.WrapKWP(tkey, clear)
	if err != nil {
		t.Fatal(err)
	}
	d := &keyport.Domain{EID: testEID, AID: testAID, KeySource: keyport.KeyImported,
		Wrapped: map[keyport.KeyUsage][]byte{keyport.UsageMAC: blob}}
	msg := []byte("0123456789abcdef0123")
	got, err := h.SCP03CMAC(ctx, keyport.DomainKey("imp", d, keyport.UsageMAC), msg)
	if err != nil {
		t.Fatal(err)
	}
	if want := cmac(t, clear, msg); !bytes.Equal(got, want) {
		t.Fatalf("HSM %x, Go %x", got, want)
	}
	other, _ := keywrap.WrapKWP(bytes.Repeat([]byte{7}, 32), clear)
	d.Wrapped[keyport.UsageMAC] = other
	if _, err := h.SCP03CMAC(ctx, keyport.DomainKey("imp", d, keyport.UsageMAC), msg); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("blob under another key: %v, want ErrInvalid", err)
	}
}

func TestEncryptUnderKeyIsAESCBCWithAZeroIVUnderTheDEK(t *testing.T) {
	h := derivedBatch(t)
	dekDomain := clearFirstKeys(t, h, testEID, testAID)
	target := clearFirstKeys(t, h, testEID, testAID2)
	ct, kcv, err := h.EncryptUnderKey(ctx, firstRef(t, h, "b1", testEID, testAID, keyport.UsageDEK),
		firstRef(t, h, "b1", testEID, testAID2, keyport.UsageENC))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(dekDomain[keyport.UsageDEK])
	plain := make([]byte, len(ct))
	cipher.NewCBCDecrypter(b, make([]byte, 16)).CryptBlocks(plain, ct)
	if !bytes.Equal(plain, target[keyport.UsageENC]) {
		t.Fatalf("decrypts to %x, want the target key", plain)
	}
	if kcv != goKCV(t, target[keyport.UsageENC]) {
		t.Fatalf("KCV %s", kcv)
	}
}

func TestISDKeysAreKeptUnderTheISDKEKAndNotUnderABatchKEK(t *testing.T) {
	h := derivedBatch(t)
	msg := []byte("host challenge")
	isd1, err := h.SCP03CMAC(ctx, isdRef(t, h, testEID, testAID, keyport.UsageMAC), msg)
	if err != nil {
		t.Fatal(err)
	}
	isd2, _ := h.SCP03CMAC(ctx, isdRef(t, h, testEID, testAID, keyport.UsageMAC), msg)
	ssd, _ := h.SCP03CMAC(ctx, firstRef(t, h, "b1", testEID, testAID, keyport.UsageMAC), msg)
	if !bytes.Equal(isd1, isd2) || bytes.Equal(isd1, ssd) {
		t.Fatalf("ISD %x %x, SSD %x", isd1, isd2, ssd)
	}
	// An ISD blob named as a first key of b1 is unwrapped under b1's KEK,
	// which did not wrap it.
	wrong := isdRef(t, h, testEID, testAID, keyport.UsageMAC)
	wrong.Batch = "b1"
	if _, err := h.SCP03CMAC(ctx, wrong, msg); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("ISD blob under the batch KEK: %v, want ErrInvalid", err)
	}
	other := hsmtest.Open(t)
	if _, err := other.SCP03CMAC(ctx, isdRef(t, h, testEID, testAID, keyport.UsageMAC), msg); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("another token's ISD KEK unwrapped the blob: %v", err)
	}
}

func TestGenerateKeysEncryptsEachKeyUnderTheClearDEKAndWrapsItUnderTheKEK(t *testing.T) {
	h := derivedBatch(t)
	gen, err := h.GenerateKeys(ctx, "", keyport.GPTestKey)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(keyport.GPTestKey)
	seen := map[string]bool{}
	for i, g := range gen {
		if g.Usage != keyport.Usages[i] || len(g.Wrapped) != 24 || len(g.UnderDEK) != 16 {
			t.Fatalf("key %d: %s, %d-byte blob, %d-byte ciphertext", i, g.Usage, len(g.Wrapped), len(g.UnderDEK))
		}
		plain := make([]byte, 16)
		cipher.NewCBCDecrypter(b, make([]byte, 16)).CryptBlocks(plain, g.UnderDEK)
		if goKCV(t, plain) != g.KCV || seen[g.KCV] {
			t.Fatalf("%s: the key under the DEK has KCV %s, GenerateKeys said %s (or repeated)", g.Usage, goKCV(t, plain), g.KCV)
		}
		seen[g.KCV] = true
		if kcv, err := h.KeyKCV(ctx, keyport.ISDKey(testEID, testAID, g.Usage, g.Wrapped)); err != nil || kcv != g.KCV {
			t.Fatalf("%s: the stored blob has KCV %s (%v), want %s", g.Usage, kcv, err, g.KCV)
		}
	}
	if _, err := h.GenerateKeys(ctx, "", []byte("short")); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("5-byte DEK: %v, want ErrInvalid", err)
	}
	if _, err := h.GenerateKeys(ctx, "nobatch", nil); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("a batch without KEK: %v, want ErrNotFound", err)
	}
}

func TestKeyKCVIsTheKCVTheClaimHandsOut(t *testing.T) {
	h := derivedBatch(t)
	for _, k := range firstKeys(t, h, testEID, testAID) {
		got, err := h.KeyKCV(ctx, firstRef(t, h, "b1", testEID, testAID, k.Usage))
		if err != nil {
			t.Fatal(err)
		}
		if got != k.KCV {
			t.Errorf("%s: KeyKCV %s, WrapFirstKeys %s", k.Usage, got, k.KCV)
		}
	}
	ref := firstRef(t, h, "b1", testEID, testAID, keyport.UsageENC)
	ref.Batch = "nobatch"
	if _, err := h.KeyKCV(ctx, ref); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("unknown batch: %v, want ErrNotFound", err)
	}
}
