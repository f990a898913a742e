package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
)

func TestAModulePSKIsSixteenRandomBytesSealedToItsModule(t *testing.T) {
	h := hsmtest.Open(t)
	ctx := context.Background()
	const eid, other keyport.EID = "89049032123451234512345678901235", "89882119900000000000000000001654"
	sealed, err := h.NewModulePSK(ctx, eid)
	if err != nil {
		t.Fatal(err)
	}
	a, err := h.ModulePSK(ctx, eid, sealed)
	if err != nil || len(a) != 16 {
		t.Fatalf("PSK %x, %v", a, err)
	}
	b, err := h.ModulePSK(ctx, eid, sealed)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("two unseals differ: %x %x (%v)", a, b, err)
	}
	if bytes.Contains(sealed, a) {
		t.Fatal("the sealed value contains the PSK")
	}
	again, _ := h.NewModulePSK(ctx, eid)
	if c, _ := h.ModulePSK(ctx, eid, again); bytes.Equal(a, c) {
		t.Fatal("two new PSKs are equal")
	}
	// Copied into another module's row, or altered, it does not unseal.
	if _, err := h.ModulePSK(ctx, other, sealed); err == nil {
		t.Fatal("a PSK sealed for one module unsealed for another")
	}
	bad := bytes.Clone(sealed)
	bad[len(bad)/2] ^= 1
	if _, err := h.ModulePSK(ctx, eid, bad); err == nil {
		t.Fatal("an altered sealed PSK unsealed")
	}
	// Nor does a TOTP seed's seal (no associated data) pass for a PSK.
	plain, _ := h.Seal(ctx, a)
	if _, err := h.ModulePSK(ctx, eid, plain); err == nil {
		t.Fatal("a plain Seal unsealed as a PSK")
	}
	if _, err := h.NewModulePSK(ctx, ""); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("no EID: %v, want ErrInvalid", err)
	}
}
