package ace_test

import (
	"os"
	"testing"

	"github.com/keyport/keyport/cardlink/pcsctest"
)

// TestMain lets pcsctest run this test binary as a card process (the
// handsets of acetest keep their module in one).
func TestMain(m *testing.M) {
	pcsctest.MaybeRunCard()
	os.Exit(m.Run())
}
