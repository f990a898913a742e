package gp

import (
	"bytes"
	"errors"
	"testing"
)

var testKeys = KeySet{KVN: 0x30, ENC: AESKey(bytes.Repeat([]byte{0x11}, 16)), MAC: AESKey(bytes.Repeat([]byte{0x22}, 16))}

// openPair runs INITIALIZE UPDATE and EXTERNAL AUTHENTICATE between a host
// and a card session.
func openPair(t testing.TB, keys KeySet, i byte, level SecurityLevel, hostChallenge []byte) (*HostSession, *CardSession) {
	t.Helper()
	h, err := NewHostSession(keys, hostChallenge)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewCardSession(CardConfig{Keys: keys, KDD: make([]byte, 10), I: i, AID: unhex(t, "A000000151000000")})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.InitializeUpdate(h.InitializeUpdate(), 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.OnInitUpdateResponse(resp); err != nil {
		t.Fatal(err)
	}
	ea, err := h.ExternalAuthenticate(level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExternalAuthenticate(ea); err != nil {
		t.Fatal(err)
	}
	return h, c
}

func exchange(t testing.TB, h *HostSession, c *CardSession, cmd Command, resp Response) (Command, Response) {
	t.Helper()
	w, err := h.Wrap(cmd)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := ParseCommand(w.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Unwrap(wire)
	if err != nil {
		t.Fatal(err)
	}
	wr, err := c.Wrap(resp)
	if err != nil {
		t.Fatal(err)
	}
	back, err := h.Unwrap(wr)
	if err != nil {
		t.Fatal(err)
	}
	return got, back
}

func TestSCP03HostAndCardAgreeAtEveryLevelAndMode(t *testing.T) {
	long := bytes.Repeat([]byte{0x5A}, 300)
	for _, i := range []byte{0x00, 0x70} {
		for _, level := range []SecurityLevel{0x01, 0x03, 0x11, 0x13, 0x33} {
			for _, hc := range [][]byte{bytes.Repeat([]byte{1}, 8), bytes.Repeat([]byte{2}, 16)} {
				if i == 0x00 && level&LevelRMAC != 0 {
					continue
				}
				h, c := openPair(t, testKeys, i, level, hc)
				for _, cmd := range []Command{
					{CLA: 0x80, INS: 0xF2, P1: 0x80, P2: 0x02},
					{CLA: 0x80, INS: 0xCA, P1: 0x00, P2: 0x66, Ne: 256},
					{CLA: 0x81, INS: 0xE2, P1: 0x90, Data: []byte{1, 2, 3}},
					{CLA: 0x80, INS: 0xE2, P1: 0x90, Data: long, Ne: 256},
				} {
					for _, resp := range []Response{{SW: SWOK}, {Data: []byte{9, 8, 7}, SW: SWOK}, {Data: []byte{1}, SW: 0x6310}, {SW: 0x6A88}} {
						got, back := exchange(t, h, c, cmd, resp)
						if !bytes.Equal(got.Bytes(), cmd.Bytes()) || !bytes.Equal(back.Bytes(), resp.Bytes()) {
							t.Fatalf("i=%02X level %s S%d: command %X→%X, response %X→%X", i, level, len(hc), cmd.Bytes(), got.Bytes(), resp.Bytes(), back.Bytes())
						}
					}
				}
			}
		}
	}
}

func TestCardRejectsTamperedCommandWith6982AndClosesSession(t *testing.T) {
	h, c := openPair(t, testKeys, 0x70, 0x33, nil)
	w, _ := h.Wrap(Command{CLA: 0x80, INS: 0xE2, P1: 0x90, Data: []byte{1, 2, 3}})
	w.Data[0] ^= 1
	_, err := c.Unwrap(w)
	var swe *SWError
	if !errors.As(err, &swe) || swe.SW != SWSecurityNotSatisfied || c.Authenticated() {
		t.Fatalf("tampered command: %v, session open %v", err, c.Authenticated())
	}
}

func TestCardRejectsPlainCommandInsideSession(t *testing.T) {
	_, c := openPair(t, testKeys, 0x70, 0x01, nil)
	_, err := c.Unwrap(Command{CLA: 0x80, INS: 0xF2, P1: 0x80, P2: 0x02})
	var swe *SWError
	if !errors.As(err, &swe) || swe.SW != SWSecurityNotSatisfied {
		t.Fatalf("plain command in session: %v", err)
	}
}

func TestCardAnswers6300ToWrongHostCryptogram(t *testing.T) {
	h, _ := NewHostSession(testKeys, nil)
	c, _ := NewCardSession(CardConfig{Keys: testKeys, KDD: make([]byte, 10), I: 0x70, AID: []byte{1, 2, 3, 4, 5}})
	resp, _ := c.InitializeUpdate(h.InitializeUpdate(), 1)
	// A host with other MAC key: its EXTERNAL AUTHENTICATE MAC fails first.
	other := testKeys
	other.MAC = AESKey(bytes.Repeat([]byte{0x33}, 16))
	h2, _ := NewHostSession(other, h.HostChallenge())
	if err := h2.OnInitUpdateResponse(resp); !errors.Is(err, ErrCryptogram) {
		t.Fatalf("card cryptogram under wrong keys: %v", err)
	}
	if err := h.OnInitUpdateResponse(resp); err != nil {
		t.Fatal(err)
	}
	ea, _ := h.ExternalAuthenticate(LevelCMAC)
	// Replace the cryptogram and recompute nothing: the MAC check fails (6982).
	bad := ea
	bad.Data = append([]byte{}, ea.Data...)
	bad.Data[0] ^= 1
	if r, err := c.ExternalAuthenticate(bad); r.SW != SWSecurityNotSatisfied || err == nil {
		t.Fatalf("bad EXTERNAL AUTHENTICATE MAC: %v %v", r.SW, err)
	}
	// A correctly MAC'd but wrong host cryptogram gets 6300 (AmdD 7.1.2).
	resp, _ = c.InitializeUpdate(h.InitializeUpdate(), 2)
	h3, _ := NewHostSession(testKeys, h.HostChallenge())
	if err := h3.OnInitUpdateResponse(resp); err != nil {
		t.Fatal(err)
	}
	wrong := make([]byte, 8)
	h3.ch.chain = [16]byte{}
	eaCmd := Command{CLA: 0x80, INS: 0x82, P1: 0x01}
	m := h3.ch.commandMAC(0x84, eaCmd, wrong)
	eaCmd.CLA, eaCmd.Data = 0x84, append(wrong, m[:8]...)
	if r, err := c.ExternalAuthenticate(eaCmd); r.SW != SWAuthFailed || err == nil || c.Authenticated() {
		t.Fatalf("wrong host cryptogram: %v %v", r.SW, err)
	}
}

func TestCardAnswersInitializeUpdateErrors(t *testing.T) {
	c, _ := NewCardSession(CardConfig{Keys: testKeys, KDD: make([]byte, 10), I: 0x70, AID: []byte{1, 2, 3, 4, 5}})
	for _, tc := range []struct {
		cmd Command
		sw  SW
	}{
		{InitializeUpdate(0x31, make([]byte, 8)), SWReferencedDataNotFound},
		{InitializeUpdate(0x30, make([]byte, 7)), SWWrongLength},
		{Command{CLA: 0x80, INS: 0x50, P1: 0x30, P2: 0x01, Data: make([]byte, 8)}, SWIncorrectP1P2},
	} {
		r, err := c.InitializeUpdate(tc.cmd, 1)
		var swe *SWError
		if !errors.As(err, &swe) || swe.SW != tc.sw || r.SW != tc.sw {
			t.Errorf("%X: %v, want %s", tc.cmd.Bytes(), err, tc.sw)
		}
	}
	if r, _ := c.ExternalAuthenticate(Command{CLA: 0x84, INS: 0x82, P1: 1, Data: make([]byte, 16)}); r.SW != SWConditionsNotSatisfied {
		t.Errorf("EXTERNAL AUTHENTICATE without INITIALIZE UPDATE: %s", r.SW)
	}
}

func TestCardRefusesRMACLevelWhenIParameterLacksIt(t *testing.T) {
	h, _ := NewHostSession(testKeys, nil)
	c, _ := NewCardSession(CardConfig{Keys: testKeys, KDD: make([]byte, 10), I: 0x00})
	resp, _ := c.InitializeUpdate(h.InitializeUpdate(), 0)
	if err := h.OnInitUpdateResponse(resp); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ExternalAuthenticate(0x33); !errors.Is(err, ErrMalformed) {
		t.Errorf("host built level 33 with i=00: %v", err)
	}
}

func TestHostRejectsTamperedRMACAndSkipsItOnErrors(t *testing.T) {
	h, c := openPair(t, testKeys, 0x70, 0x13, nil)
	w, _ := h.Wrap(Command{CLA: 0x80, INS: 0xCA, P1: 0x00, P2: 0x66, Ne: 256})
	if _, err := c.Unwrap(w); err != nil {
		t.Fatal(err)
	}
	// 6A88 goes out without an R-MAC and the host accepts it as is.
	r, _ := c.Wrap(Response{SW: 0x6A88})
	if len(r.Data) != 0 {
		t.Fatalf("R-MAC on an error status: %X", r.Data)
	}
	if got, err := h.Unwrap(r); err != nil || got.SW != 0x6A88 {
		t.Fatalf("host on 6A88: %v", err)
	}
	w, _ = h.Wrap(Command{CLA: 0x80, INS: 0xCA, P1: 0x00, P2: 0x66, Ne: 256})
	c.Unwrap(w)
	r, _ = c.Wrap(Response{Data: []byte{1, 2}, SW: SWOK})
	r.Data[len(r.Data)-1] ^= 1
	if _, err := h.Unwrap(r); !errors.Is(err, ErrMAC) {
		t.Fatalf("tampered R-MAC: %v", err)
	}
	if _, err := h.Wrap(Command{CLA: 0x80, INS: 0xF2}); !errors.Is(err, ErrState) {
		t.Errorf("session still open after a bad R-MAC: %v", err)
	}
}

func TestHostSessionMethodsOutOfOrderFail(t *testing.T) {
	h, _ := NewHostSession(testKeys, nil)
	if _, err := h.ExternalAuthenticate(LevelCMAC); !errors.Is(err, ErrState) {
		t.Error(err)
	}
	if _, err := h.Wrap(Command{}); !errors.Is(err, ErrState) {
		t.Error(err)
	}
	if _, err := h.Precompute(1, []byte{1, 2, 3, 4, 5}, 0x00); !errors.Is(err, ErrState) {
		t.Error(err)
	}
	if _, err := NewHostSession(testKeys, make([]byte, 5)); !errors.Is(err, ErrMalformed) {
		t.Error(err)
	}
	if err := h.OnInitUpdateResponse(Response{SW: 0x6A88}); err == nil || err.Error() != "gp: INITIALIZE UPDATE: card returned 6A88 referenced data not found" {
		t.Error(err)
	}
}

func TestSecurityLevelStrings(t *testing.T) {
	if s := SecurityLevel(0x33).String(); s != "C-MAC+C-DEC+R-MAC+R-ENC" {
		t.Error(s)
	}
	if SecurityLevel(0x31).Valid() || !SecurityLevel(0x13).Valid() {
		t.Error("Valid")
	}
}

func BenchmarkSCP03Wrap(b *testing.B) {
	h, _ := openPair(b, testKeys, 0x70, 0x33, nil)
	cmd := Command{CLA: 0x80, INS: 0xE2, P1: 0x90, Data: bytes.Repeat([]byte{0xA5}, 200), Ne: 256}
	b.SetBytes(int64(len(cmd.Data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Wrap(cmd); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSCP03Unwrap(b *testing.B) {
	h, c := openPair(b, testKeys, 0x70, 0x33, nil)
	cmd := Command{CLA: 0x80, INS: 0xE2, P1: 0x90, Data: bytes.Repeat([]byte{0xA5}, 200), Ne: 256}
	// Unwrap on the card needs the host's MAC chain in step, so each round
	// wraps one command off the clock.
	b.SetBytes(int64(len(cmd.Data)))
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		w, err := h.Wrap(cmd)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := c.Unwrap(w); err != nil {
			b.Fatal(err)
		}
	}
}

func TestExpectedRMACIsTheOneTheCardPutsOnItsAnswer(t *testing.T) {
	h, c := openPair(t, testKeys, 0x70, 0x13, nil)
	w, _ := h.Wrap(Command{CLA: 0x80, INS: 0xD8, P1: 0x30, P2: 0x81, Data: []byte{0x31}, Ne: 256})
	if _, err := c.Unwrap(w); err != nil {
		t.Fatal(err)
	}
	answer := []byte{0x31, 0xEE, 0x72, 0xCB}
	want, err := h.ExpectedRMAC(answer, SWOK)
	if err != nil || len(want) != 8 {
		t.Fatalf("expected R-MAC %X: %v", want, err)
	}
	r, _ := c.Wrap(Response{Data: answer, SW: SWOK})
	if !bytes.Equal(r.Data[len(answer):], want) {
		t.Fatalf("card's R-MAC %X, expected %X", r.Data[len(answer):], want)
	}
	if other, _ := h.ExpectedRMAC([]byte{0x32, 0xEE, 0x72, 0xCB}, SWOK); bytes.Equal(other, want) {
		t.Fatal("another answer has the same R-MAC")
	}
	if m, err := h.ExpectedRMAC(nil, 0x6A88); m != nil || err != nil {
		t.Fatalf("an error status has an R-MAC: %X %v", m, err)
	}
	h33, _ := openPair(t, testKeys, 0x70, 0x33, nil)
	h33.Wrap(Command{CLA: 0x80, INS: 0xCA, P2: 0x66})
	if _, err := h33.ExpectedRMAC(answer, SWOK); !errors.Is(err, ErrMalformed) {
		t.Fatalf("level 33: %v", err)
	}
	if _, err := (&HostSession{}).ExpectedRMAC(answer, SWOK); !errors.Is(err, ErrState) {
		t.Fatalf("closed session: %v", err)
	}
}
