package vcard_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// A Card is a gp.Channel in the same process: an SCP03 session opens through
// Transmit as through PC/SC, and a cancelled context sends nothing.
func TestTransmitIsAChannelToTheModuleInTheSameProcess(t *testing.T) {
	card, err := vcard.New(vcard.DefaultEID, vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var ch gp.Channel = card
	host := gp.NewHost(ch)
	ks := gp.KeySet{KVN: vcard.DefaultKVN, ENC: gp.AESKey(vcard.DefaultKey), MAC: gp.AESKey(vcard.DefaultKey)}
	if _, err := host.Authenticate(context.Background(), vcard.ISDAID, ks, gp.LevelCMAC); err != nil {
		t.Fatalf("SCP03 through Transmit: %v", err)
	}
	sel := gp.Select(vcard.ISDAID).Bytes()
	want := card.Process(sel)
	got, err := card.Transmit(context.Background(), sel)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Transmit answered %X, %v; Process answers %X", got, err, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if r, err := card.Transmit(ctx, sel); !errors.Is(err, context.Canceled) || r != nil {
		t.Fatalf("after cancel: %X, %v", r, err)
	}
}
