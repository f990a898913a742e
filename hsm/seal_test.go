package hsm_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/keyport/keyport/hsm/hsmtest"
)

func TestSealThenUnsealGivesTheSecretBackAndTheSealedFormHidesIt(t *testing.T) {
	h := hsmtest.Open(t)
	ctx := context.Background()
	secret := []byte("12345678901234567890")
	sealed, err := h.Seal(ctx, secret)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) || len(sealed) != 1+12+len(secret)+16 {
		t.Fatalf("sealed form %x", sealed)
	}
	got, err := h.Unseal(ctx, sealed)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("unseal: %q, %v", got, err)
	}
	again, _ := h.Seal(ctx, secret)
	if bytes.Equal(again, sealed) {
		t.Fatal("two seals of one secret are equal: the nonce is not fresh")
	}
}

func TestUnsealRefusesASealedSecretWithAnyByteChanged(t *testing.T) {
	h := hsmtest.Open(t)
	ctx := context.Background()
	sealed, err := h.Seal(ctx, []byte("totp seed"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x01
		if _, err := h.Unseal(ctx, bad); err == nil {
			t.Fatalf("byte %d changed, still unsealed", i)
		}
	}
}
