package hsm

import (
	"testing"

	"github.com/keyport/keyport"
)

func TestDerivationDataUsesUpperCaseAIDAndTheDocumentedPrefix(t *testing.T) {
	a := DerivationData("89049032123451234512345678901235", "a0000001515350", keyport.UsageENC)
	b := DerivationData("89049032123451234512345678901235", "A0000001515350", keyport.UsageENC)
	c := DerivationData("89049032123451234512345678901235", "A0000001515350", keyport.UsageMAC)
	if a != b || a == c {
		t.Fatalf("%x %x %x", a, b, c)
	}
}
