package gp

import (
	"bytes"
	"errors"
	"testing"
)

// proofScript precomputes a script at level as a provider does (i=70,
// counter known), runs it against gp's card side, and returns the
// commands and the card's wrapped answers.
func proofScript(t *testing.T, level SecurityLevel) (KeySet, []Command, []Response) {
	t.Helper()
	return proofScriptFor(t, level)
}

var proofAID = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41, 0x01}

func proofScriptFor(t *testing.T, level SecurityLevel) (KeySet, []Command, []Response) {
	t.Helper()
	aid := proofAID
	keys := KeySet{KVN: 0x30, ENC: AESKey(bytes.Repeat([]byte{0x11}, 16)), MAC: AESKey(bytes.Repeat([]byte{0x22}, 16))}
	card, err := NewCardSession(CardConfig{Keys: keys, KDD: make([]byte, 10), I: 0x70, AID: aid})
	if err != nil {
		t.Fatal(err)
	}
	hs, err := NewHostSession(keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	iu := hs.InitializeUpdate()
	if _, err := hs.Precompute(5, aid, 0x70); err != nil {
		t.Fatal(err)
	}
	ea, err := hs.ExternalAuthenticate(level)
	if err != nil {
		t.Fatal(err)
	}
	cmds := []Command{iu, ea}
	for _, c := range []Command{GetData(DataKeyInformation), SetStatus(SetStatusApplication, SetStatusPersonalized, aid)} {
		w, err := hs.Wrap(c)
		if err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, w)
	}
	r0, err := card.InitializeUpdate(iu, 5)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := card.ExternalAuthenticate(ea)
	if err != nil {
		t.Fatal(err)
	}
	resps := []Response{r0, r1}
	for i, c := range cmds[2:] {
		if _, err := card.Unwrap(c); err != nil {
			t.Fatal(err)
		}
		r, err := card.Wrap(Response{Data: []byte{0xC0 + byte(i), 0x01, 0x02}, SW: SWOK})
		if err != nil {
			t.Fatal(err)
		}
		resps = append(resps, r)
	}
	return keys, cmds, resps
}

func TestCheckAnswersAcceptsTheCardsOwnAnswersAndUnwrapsThem(t *testing.T) {
	for _, level := range []SecurityLevel{0x13, 0x33} {
		keys, cmds, resps := proofScript(t, level)
		got, l, err := CheckAnswers(keys, proofAID, cmds, resps)
		if err != nil || l != level {
			t.Fatalf("level %02X: %v (level %02X)", byte(level), err, byte(l))
		}
		for i, r := range got[2:] {
			if !bytes.Equal(r.Data, []byte{0xC0 + byte(i), 0x01, 0x02}) || r.SW != SWOK {
				t.Errorf("level %02X answer %d unwrapped to %X %s", byte(level), i+2, r.Data, r.SW)
			}
		}
	}
}

func TestCheckAnswersRefusesAForgedCardCryptogramAndForgedOrMissingRMACs(t *testing.T) {
	keys, cmds, resps := proofScript(t, 0x13)
	forge := func(f func(rs []Response)) []Response {
		rs := make([]Response, len(resps))
		for i, r := range resps {
			rs[i] = Response{Data: append([]byte(nil), r.Data...), SW: r.SW}
		}
		f(rs)
		return rs
	}
	cases := map[string]struct {
		resps []Response
		want  error
	}{
		"card cryptogram changed": {forge(func(rs []Response) { rs[0].Data[len(rs[0].Data)-4] ^= 1 }), ErrCryptogram},
		"R-MAC changed":           {forge(func(rs []Response) { rs[3].Data[len(rs[3].Data)-1] ^= 1 }), ErrMAC},
		"R-MAC missing":           {forge(func(rs []Response) { rs[2].Data = rs[2].Data[:3] }), ErrMAC},
		"data changed":            {forge(func(rs []Response) { rs[2].Data[0] ^= 1 }), ErrMAC},
		"plain 9000, no data":     {forge(func(rs []Response) { rs[3] = Response{SW: SWOK} }), ErrMAC},
	}
	for name, c := range cases {
		if _, _, err := CheckAnswers(keys, proofAID, cmds, c.resps); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	for name, other := range map[string]KeySet{
		"other Key-ENC": {KVN: 0x30, ENC: AESKey(bytes.Repeat([]byte{0x33}, 16)), MAC: keys.MAC},
		"other Key-MAC": {KVN: 0x30, ENC: keys.ENC, MAC: AESKey(bytes.Repeat([]byte{0x33}, 16))},
	} {
		if _, _, err := CheckAnswers(other, proofAID, cmds, resps); !errors.Is(err, ErrCryptogram) {
			t.Errorf("%s: %v, want ErrCryptogram", name, err)
		}
	}
	if _, _, err := CheckAnswers(keys, proofAID[:8], cmds, resps); !errors.Is(err, ErrCryptogram) {
		t.Errorf("another SD's AID: %v, want ErrCryptogram", err)
	}
}

func TestCheckAnswersProvesNothingAfterAnErrorStatusAndRefusesAScriptWithoutTheHandshake(t *testing.T) {
	keys, cmds, resps := proofScript(t, 0x13)
	rs := append(append([]Response(nil), resps[:2]...), Response{SW: SWSecurityNotSatisfied})
	got, _, err := CheckAnswers(keys, proofAID, cmds, rs)
	if err != nil || got[2].SW != SWSecurityNotSatisfied {
		t.Fatalf("error status: %+v %v", got, err)
	}
	if _, _, err := CheckAnswers(keys, proofAID, cmds[2:], resps[2:]); err == nil {
		t.Fatal("a script without INITIALIZE UPDATE and EXTERNAL AUTHENTICATE was checked")
	}
}
