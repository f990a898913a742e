package sandbox_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/sandbox"
	"github.com/keyport/keyport/cardlink/vcard"
)

const testEID = keyport.EID("89049032999999999999999900000169")

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestBookKeepsEachModulesFaultInItsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "faults.json")
	b, err := sandbox.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if f := b.Fault(testEID); f.Active() {
		t.Fatalf("a new book has fault %+v", f)
	}
	sw, _ := keyport.ParseFault([]byte(`{"fault":"sw","command":3,"sw":"6A88"}`))
	if err := b.SetFault(testEID, sw); err != nil {
		t.Fatal(err)
	}
	again, err := sandbox.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if f := again.Fault(testEID); f != sw {
		t.Fatalf("the file gives %+v, want %+v", f, sw)
	}
	if err := again.SetFault(testEID, keyport.Fault{Kind: keyport.FaultNone}); err != nil {
		t.Fatal(err)
	}
	if third, err := sandbox.Open(path); err != nil || third.Fault(testEID).Active() {
		t.Fatalf("a cleared fault is still in the file: %+v %v", third.Fault(testEID), err)
	}
	for _, bad := range []string{`[]`, `{"123":{"fault":"lost"}}`, `{"` + string(testEID) + `":{"fault":"melt"}}`} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := sandbox.Open(path); err == nil {
			t.Errorf("a book file %s opens", bad)
		}
	}
}

// counterOf is the sequence counter in an SCP03 INITIALIZE UPDATE answer
// (its last 3 bytes before the SW).
func counterOf(t *testing.T, r []byte) int {
	t.Helper()
	if len(r) != 32+2 || !bytes.HasSuffix(r, []byte{0x90, 0}) {
		t.Fatalf("INITIALIZE UPDATE answered %X", r)
	}
	return int(r[29])<<16 | int(r[30])<<8 | int(r[31])
}

func TestChannelAnswersTheFaultsSWAndMakesTheCounterJumpOnARealCard(t *testing.T) {
	ctx := context.Background()
	card, err := vcard.New(string(testEID), vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := sandbox.Open("")
	ch := b.Channel(testEID, card)
	selectISD := mustHex("00A4040008A000000151000000")
	initUpdate := mustHex("8050000008" + "0102030405060708")
	script := func(apdus ...[]byte) [][]byte {
		var out [][]byte
		for _, a := range apdus {
			r, err := ch.Transmit(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r)
		}
		return out
	}
	// No fault: the card answers itself.
	r := script(selectISD, initUpdate)
	c0 := counterOf(t, r[1])

	drift, _ := keyport.ParseFault([]byte(`{"fault":"drift","drift":3}`))
	b.SetFault(testEID, drift)
	r = script(selectISD, initUpdate)
	if c := counterOf(t, r[1]); c != c0+4 {
		t.Errorf("with drift 3 the counter went from %d to %d, want %d", c0, c, c0+4)
	}
	if note := b.TakeInjected(testEID); note == "" || b.TakeInjected(testEID) != "" {
		t.Errorf("the drift's note is %q, and is taken once", note)
	}

	sw, _ := keyport.ParseFault([]byte(`{"fault":"sw","command":1,"sw":"6A88"}`))
	b.SetFault(testEID, sw)
	r = script(selectISD, initUpdate, initUpdate)
	if !bytes.Equal(r[1], []byte{0x6A, 0x88}) {
		t.Errorf("command 1 answered %X, want 6A88", r[1])
	}
	// Command 1 never reached the card: its counter moved by one only.
	if c := counterOf(t, r[2]); c != c0+5 {
		t.Errorf("after the refused command the counter is %d, want %d", c, c0+5)
	}

	drop, _ := keyport.ParseFault([]byte(`{"fault":"drop","command":1}`))
	b.SetFault(testEID, drop)
	script(selectISD, initUpdate)
	if _, err := ch.Transmit(ctx, initUpdate); !errors.Is(err, sandbox.ErrInjected) {
		t.Errorf("command 2 after a drop after command 1: %v", err)
	}
}

func FuzzOpen(f *testing.F) {
	f.Add([]byte(`{"` + string(testEID) + `":{"fault":"sw","command":3,"sw":"6A88"}}`))
	f.Add([]byte(`{"` + string(testEID) + `":{"fault":"slow","delay_ms":20}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "faults.json")
		os.WriteFile(path, data, 0o600)
		b, err := sandbox.Open(path)
		if err != nil {
			return
		}
		// What opened is kept as it reads: set again, it reads back the same.
		f := b.Fault(testEID)
		if err := b.SetFault(testEID, f); err != nil {
			t.Fatal(err)
		}
		again, err := sandbox.Open(path)
		if err != nil || again.Fault(testEID) != f {
			t.Fatalf("%q: %+v reads back as %+v (%v)", data, f, again.Fault(testEID), err)
		}
	})
}
