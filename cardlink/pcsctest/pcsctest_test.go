package pcsctest_test

import (
	"bytes"
	"os"
	"testing"

	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/cardlink/vcard"
)

func TestMain(m *testing.M) {
	pcsctest.MaybeRunCard()
	os.Exit(m.Run())
}

func TestStartListsReaderAndCardAnswersSelect(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	card, err := vcard.New(vcard.DefaultEID, vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	env.StartCard(t, card)
	rsp := env.Transmit(t, []byte{0x00, 0xA4, 0x04, 0x00, 0x08, 0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00, 0x00})
	if !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) {
		t.Fatalf("SELECT ISD answered %X, want …9000", rsp)
	}
}
