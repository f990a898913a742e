package gp

import (
	"bytes"
	"errors"
	"testing"
)

// expectScript is a precomputed session on counter seq (IU, EA at level
// 13, a wrapped PUT KEY of three keys and SET STATUS), as a provider
// builds it offline, and the plain answer data of its commands.
func expectScript(t *testing.T, keys KeySet, aid []byte, seq uint32) ([]Command, [][]byte) {
	t.Helper()
	hs, err := NewHostSession(keys, bytes.Repeat([]byte{0xA5}, 8))
	if err != nil {
		t.Fatal(err)
	}
	iu := hs.InitializeUpdate()
	if _, err := hs.Precompute(seq, aid, 0x70); err != nil {
		t.Fatal(err)
	}
	ea, err := hs.ExternalAuthenticate(LevelCMAC | LevelCDEC | LevelRMAC)
	if err != nil {
		t.Fatal(err)
	}
	pk := PutKey{OldKVN: keys.KVN, NewKVN: keys.KVN + 1, FirstKID: 1}
	answer := []byte{keys.KVN + 1}
	for n := range 3 {
		kc, err := AESKeyComponent(bytes.Repeat([]byte{0x40}, 16), bytes.Repeat([]byte{byte(0x50 + n)}, 16))
		if err != nil {
			t.Fatal(err)
		}
		pk.Keys = append(pk.Keys, kc)
		answer = append(answer, kc.KCV...)
	}
	put, err := pk.Command()
	if err != nil {
		t.Fatal(err)
	}
	wput, err := hs.Wrap(put)
	if err != nil {
		t.Fatal(err)
	}
	wset, err := hs.Wrap(SetStatus(SetStatusApplication, SetStatusPersonalized, aid))
	if err != nil {
		t.Fatal(err)
	}
	return []Command{iu, ea, wput, wset}, [][]byte{nil, nil, answer, nil}
}

// The answers ExpectAnswers predicts are, byte for byte, the ones a card
// session holding the keys gives to the script (but for the card's key
// diversification data), and CheckAnswers proves them.
func TestExpectAnswersAreTheAnswersOfACardHoldingTheKeys(t *testing.T) {
	aid := []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41}
	keys := KeySet{KVN: 0x30, ENC: AESKey(bytes.Repeat([]byte{0x40}, 16)), MAC: AESKey(bytes.Repeat([]byte{0x41}, 16))}
	cmds, plain := expectScript(t, keys, aid, 8)
	want, err := ExpectAnswers(keys, aid, 0x70, 8, cmds, plain)
	if err != nil {
		t.Fatal(err)
	}
	kdd := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	cs, err := NewCardSession(CardConfig{Keys: keys, KDD: kdd, I: 0x70, AID: aid})
	if err != nil {
		t.Fatal(err)
	}
	got := make([]Response, 4)
	if got[0], err = cs.InitializeUpdate(cmds[0], 8); err != nil {
		t.Fatal(err)
	}
	if got[1], err = cs.ExternalAuthenticate(cmds[1]); err != nil {
		t.Fatal(err)
	}
	for n := 2; n < 4; n++ {
		if _, err := cs.Unwrap(cmds[n]); err != nil {
			t.Fatal(err)
		}
		if got[n], err = cs.Wrap(Response{Data: plain[n], SW: SWOK}); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got[0].Data[10:], want[0].Data[10:]) || !bytes.Equal(want[0].Data[:10], make([]byte, 10)) {
		t.Fatalf("INITIALIZE UPDATE answer\n got %X\nwant %X", got[0].Data, want[0].Data)
	}
	for n := 1; n < 4; n++ {
		if !bytes.Equal(got[n].Bytes(), want[n].Bytes()) {
			t.Fatalf("answer %d\n got %X\nwant %X", n+1, got[n].Bytes(), want[n].Bytes())
		}
	}
	if _, _, err := CheckAnswers(keys, aid, cmds, want); err != nil {
		t.Fatalf("the expected answers do not prove themselves: %v", err)
	}
}

// A script the card would refuse has no expected answers: built on
// another counter (its host cryptogram is not this session's), under other
// keys, or with a command altered after it was wrapped (its C-MAC).
func TestExpectAnswersRefusesAScriptTheCardWouldRefuse(t *testing.T) {
	aid := []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41}
	keys := KeySet{KVN: 0x30, ENC: AESKey(bytes.Repeat([]byte{0x40}, 16)), MAC: AESKey(bytes.Repeat([]byte{0x41}, 16))}
	cmds, plain := expectScript(t, keys, aid, 8)
	if _, err := ExpectAnswers(keys, aid, 0x70, 9, cmds, plain); err == nil {
		t.Error("a script built on counter 8 was expected to succeed on counter 9")
	}
	other := KeySet{KVN: 0x30, ENC: keys.ENC, MAC: AESKey(bytes.Repeat([]byte{0x42}, 16))}
	if _, err := ExpectAnswers(other, aid, 0x70, 8, cmds, plain); err == nil {
		t.Error("a script was expected to succeed under other keys")
	}
	bad := append([]Command(nil), cmds...)
	bad[2].Data = append([]byte(nil), bad[2].Data...)
	bad[2].Data[3] ^= 1
	var swe *SWError
	if _, err := ExpectAnswers(keys, aid, 0x70, 8, bad, plain); !errors.As(err, &swe) || swe.SW != SWSecurityNotSatisfied {
		t.Errorf("an altered PUT KEY: %v, want the card's 6982", err)
	}
	if _, err := ExpectAnswers(keys, aid, 0x00, 8, cmds, plain); err == nil {
		t.Error("answers were expected for a random card challenge")
	}
}
