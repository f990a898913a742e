package hsm_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
)

func TestModulePSKIsSixteenBytesAndTheSameOnEveryDerivation(t *testing.T) {
	h := hsmtest.Open(t)
	ctx := context.Background()
	eid := keyport.EID("89049032123451234512345678901235")
	a, err := h.ModulePSK(ctx, eid, "A000000151000000")
	if err != nil {
		t.Fatal(err)
	}
	b, err := h.ModulePSK(ctx, eid, "A000000151000000")
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 16 || !bytes.Equal(a, b) {
		t.Fatalf("PSK %d bytes, stable=%v", len(a), bytes.Equal(a, b))
	}
}

func TestModulePSKDiffersPerModuleAndPerISD(t *testing.T) {
	h := hsmtest.Open(t)
	ctx := context.Background()
	a, _ := h.ModulePSK(ctx, "89049032123451234512345678901235", "A000000151000000")
	b, _ := h.ModulePSK(ctx, "89882119900000000000000000001654", "A000000151000000")
	c, _ := h.ModulePSK(ctx, "89049032123451234512345678901235", "A000000003000000")
	if a == nil || bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Fatal("two modules or two ISDs share a PSK")
	}
}

func TestModulePSKRefusesAnIncompleteModuleReference(t *testing.T) {
	h := hsmtest.Open(t)
	if _, err := h.ModulePSK(context.Background(), "", "A000000151000000"); err == nil {
		t.Fatal("PSK derived without an EID")
	}
}
