package gp

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// testSD is a security domain behind a Channel, played by gp's own card
// side: SELECT by AID, INITIALIZE UPDATE and EXTERNAL AUTHENTICATE through
// a CardSession (pseudo-random, i=70), and, inside or outside the session,
// GET DATA 00E0 and GET STATUS from canned pages. It records every C-APDU
// as it arrived.
type testSD struct {
	t       testing.TB
	aid     []byte
	other   []byte // a longer AID the card matches when asked for a prefix of it
	cs      *CardSession
	seq     uint32
	keyInfo []byte
	pages   []Response // GET STATUS answers, page by page
	page    int
	eaSW    SW // when set, EXTERNAL AUTHENTICATE is answered with it
	got     []Command
	fail    error // when set, Transmit fails with it
}

func newTestSD(t testing.TB, keys KeySet) *testSD {
	t.Helper()
	aid := unhex(t, "A000000151000000")
	cs, err := NewCardSession(CardConfig{Keys: keys, KDD: make([]byte, 10), I: 0x70, AID: aid})
	if err != nil {
		t.Fatal(err)
	}
	return &testSD{t: t, aid: aid, cs: cs}
}

func (c *testSD) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	if c.fail != nil {
		return nil, c.fail
	}
	cmd, err := ParseCommand(apdu)
	if err != nil {
		c.t.Fatalf("card: C-APDU %X: %v", apdu, err)
	}
	c.got = append(c.got, cmd)
	return c.process(cmd).Bytes(), nil
}

func (c *testSD) process(cmd Command) Response {
	switch cmd.INS {
	case INSSelect:
		c.cs.Reset()
		switch {
		case len(cmd.Data) == 0 || bytes.Equal(cmd.Data, c.aid):
			return Response{Data: Encode(0x6F, Encode(0x84, c.aid)), SW: SWOK}
		case c.other != nil && bytes.HasPrefix(c.other, cmd.Data):
			return Response{Data: Encode(0x6F, Encode(0x84, c.other)), SW: SWOK}
		}
		return Response{SW: SWNotFound}
	case INSInitializeUpdate:
		c.seq++
		r, _ := c.cs.InitializeUpdate(cmd, c.seq)
		return r
	case INSExternalAuthenticate:
		if c.eaSW != 0 {
			c.cs.Reset()
			return Response{SW: c.eaSW}
		}
		r, _ := c.cs.ExternalAuthenticate(cmd)
		return r
	}
	plain, err := c.cs.Unwrap(cmd)
	if err != nil {
		var se *SWError
		errors.As(err, &se)
		return Response{SW: se.SW}
	}
	var r Response
	switch {
	case plain.INS == INSGetData && plain.P1 == 0x00 && plain.P2 == 0xE0:
		r = Response{Data: c.keyInfo, SW: SWOK}
	case plain.INS == INSGetStatus:
		if plain.P2 == StatusFirstTLV {
			c.page = 0
		}
		if c.page >= len(c.pages) {
			return Response{SW: SWReferencedDataNotFound}
		}
		r = c.pages[c.page]
		c.page++
	default:
		r = Response{Data: plain.Data, SW: SWOK} // echo
	}
	w, err := c.cs.Wrap(r)
	if err != nil {
		c.t.Fatal(err)
	}
	return w
}

// sentINS lists the instruction bytes the card received.
func (c *testSD) sentINS() []byte {
	var out []byte
	for _, cmd := range c.got {
		out = append(out, cmd.INS)
	}
	return out
}

func TestHostOpensSCP03AtTheStrongestLevelAndWrapsEveryCommandAfterIt(t *testing.T) {
	ctx := context.Background()
	card := newTestSD(t, testKeys)
	h := NewHost(card)
	fci, found, err := h.Select(ctx, card.aid)
	if err != nil || !found || !bytes.Equal(FCIDFName(fci), card.aid) {
		t.Fatalf("SELECT: found %v, FCI %X, %v", found, fci, err)
	}
	hs, _ := NewHostSession(testKeys, nil)
	iu, err := h.InitializeUpdate(ctx, hs)
	if err != nil {
		t.Fatal(err)
	}
	if iu.SequenceCounter != 1 || iu.I != 0x70 {
		t.Errorf("INITIALIZE UPDATE data %+v", iu)
	}
	if err := h.ExternalAuthenticate(ctx, StrongestLevel(iu.I)); err != nil {
		t.Fatal(err)
	}
	if h.Session() != hs || !card.cs.Authenticated() || card.cs.Level() != 0x33 {
		t.Fatalf("session %p, card authenticated %v at %s", h.Session(), card.cs.Authenticated(), card.cs.Level())
	}
	secret := bytes.Repeat([]byte{0x5A}, 16)
	data, err := h.SendOK(ctx, StoreData(StoreDataLast, 0, secret))
	if err != nil || !bytes.Equal(data, secret) {
		t.Fatalf("echo through the session: %X, %v", data, err)
	}
	last := card.got[len(card.got)-1]
	if last.CLA&0x04 == 0 || bytes.Contains(last.Data, secret) {
		t.Errorf("the command went out as %s: want C-MAC and C-DEC", last)
	}
	if h.APDUs() != 4 || len(card.got) != 4 {
		t.Errorf("host counted %d APDUs, the card received %d, want 4", h.APDUs(), len(card.got))
	}
}

func TestHostChecksTheCardCryptogramBeforeSendingExternalAuthenticate(t *testing.T) {
	ctx := context.Background()
	card := newTestSD(t, testKeys)
	h := NewHost(card)
	other := AESKey(bytes.Repeat([]byte{0x33}, 16))
	iu, err := h.Authenticate(ctx, card.aid, KeySet{KVN: 0x30, ENC: other, MAC: other}, LevelCMAC)
	if !errors.Is(err, ErrCryptogram) {
		t.Fatalf("wrong keys: %v, want ErrCryptogram", err)
	}
	if len(iu.CardChallenge) != 8 {
		t.Errorf("the card's answer is not returned with the mismatch: %+v", iu)
	}
	if got := card.sentINS(); !bytes.Equal(got, []byte{INSSelect, INSInitializeUpdate}) {
		t.Errorf("the card received INS %X, want A4 50 and no EXTERNAL AUTHENTICATE", got)
	}
	if h.Session() != nil {
		t.Error("a session is open")
	}
	if err := h.ExternalAuthenticate(ctx, LevelCMAC); !errors.Is(err, ErrState) {
		t.Errorf("EXTERNAL AUTHENTICATE after a mismatch: %v, want ErrState", err)
	}
	if len(card.got) != 2 {
		t.Errorf("%d commands reached the card", len(card.got))
	}
}

func TestHostReportsTheStatusOfAFailedHandshakeAsAnSWError(t *testing.T) {
	ctx := context.Background()
	card := newTestSD(t, testKeys)
	h := NewHost(card)
	_, err := h.Authenticate(ctx, card.aid, KeySet{KVN: 0x31, ENC: testKeys.ENC, MAC: testKeys.MAC}, LevelCMAC)
	var se *SWError
	if !errors.As(err, &se) || se.SW != SWReferencedDataNotFound {
		t.Fatalf("unknown KVN 31: %v, want 6A88", err)
	}
	card.eaSW = SWAuthFailed
	_, err = h.Open(ctx, testKeys, LevelCMAC)
	if !errors.As(err, &se) || se.SW != SWAuthFailed || se.Op != "EXTERNAL AUTHENTICATE" {
		t.Fatalf("EXTERNAL AUTHENTICATE answered 6300: %v", err)
	}
	if h.Session() != nil {
		t.Error("a session is open after a refused EXTERNAL AUTHENTICATE")
	}
	_, err = h.Authenticate(ctx, unhex(t, "A0000001515350"), testKeys, LevelCMAC)
	if !errors.As(err, &se) || se.SW != SWNotFound {
		t.Fatalf("an AID the card lacks: %v, want 6A82", err)
	}
}

func TestHostSelectCountsAPartialAIDMatchAndA6A82AsNotFound(t *testing.T) {
	ctx := context.Background()
	card := newTestSD(t, testKeys)
	card.other = unhex(t, "A00000015153504101")
	h := NewHost(card)
	for _, aid := range []string{"A000000151535041", "A0000001515350410102"} {
		if _, found, err := h.Select(ctx, unhex(t, aid)); err != nil || found {
			t.Errorf("SELECT %s: found %v, %v; want not found", aid, found, err)
		}
	}
	if _, found, err := h.Select(ctx, card.other); err != nil || !found {
		t.Errorf("SELECT of the whole AID: found %v, %v", found, err)
	}
	fci, found, err := h.Select(ctx, nil)
	if err != nil || !found || !bytes.Equal(FCIDFName(fci), card.aid) {
		t.Errorf("SELECT of the ISD: found %v, FCI %X, %v", found, fci, err)
	}
}

func TestSelectEndsTheSecureChannel(t *testing.T) {
	ctx := context.Background()
	card := newTestSD(t, testKeys)
	h := NewHost(card)
	if _, err := h.Authenticate(ctx, card.aid, testKeys, LevelCMAC); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.Select(ctx, card.aid); err != nil {
		t.Fatal(err)
	}
	if h.Session() != nil {
		t.Fatal("the session survived SELECT")
	}
	card.keyInfo = KeyInformationBytes([]KeyInfo{{KID: 1, KVN: 0x30, Components: []KeyComponentInfo{{Type: KeyTypeAES, Length: 16}}}})
	if _, err := h.KeyVersions(ctx); err != nil {
		t.Fatalf("GET DATA after SELECT went out wrapped: %v", err)
	}
	if last := card.got[len(card.got)-1]; last.CLA != CLAGP {
		t.Errorf("GET DATA after SELECT has CLA %02X", last.CLA)
	}
}

func TestKeyVersionsListsEachKVNOnceInTheCardsOrder(t *testing.T) {
	card := newTestSD(t, testKeys)
	aes := []KeyComponentInfo{{Type: KeyTypeAES, Length: 16}}
	card.keyInfo = KeyInformationBytes([]KeyInfo{{KID: 1, KVN: 0x31, Components: aes}, {KID: 2, KVN: 0x31, Components: aes},
		{KID: 1, KVN: 0x30, Components: aes}, {KID: 3, KVN: 0x31, Components: aes}})
	kvns, err := NewHost(card).KeyVersions(context.Background())
	if err != nil || !bytes.Equal(kvns, []byte{0x31, 0x30}) {
		t.Fatalf("KVNs %X, %v; want 31 30", kvns, err)
	}
}

func TestGetStatusFollows6310PagesInsideTheSession(t *testing.T) {
	ctx := context.Background()
	card := newTestSD(t, testKeys)
	entry := func(aid string) []byte {
		return RegistryEntry{AID: unhex(t, aid), LifeCycle: LifeCycleSelectable, Privileges: PrivSecurityDomain}.Bytes()
	}
	card.pages = []Response{
		{Data: append(entry("A00000015153504101"), entry("A00000015153504102")...), SW: SWMoreData},
		{Data: entry("A00000015153504103"), SW: SWMoreData},
		{Data: entry("A00000015153504104"), SW: SWOK},
	}
	h := NewHost(card)
	if _, err := h.Authenticate(ctx, card.aid, testKeys, LevelCMAC|LevelCDEC|LevelRMAC|LevelRENC); err != nil {
		t.Fatal(err)
	}
	es, err := h.GetStatus(ctx, StatusApplications)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 4 || !bytes.Equal(es[3].AID, unhex(t, "A00000015153504104")) {
		t.Fatalf("entries %+v", es)
	}
	var p2 []byte
	for _, c := range card.got[3:] {
		p2 = append(p2, c.P2)
	}
	if !bytes.Equal(p2, []byte{StatusFirstTLV, StatusNextTLV, StatusNextTLV}) {
		t.Errorf("GET STATUS P2s %X, want 02 03 03", p2)
	}

	card.pages = nil
	if es, err := h.GetStatus(ctx, StatusApplications); err != nil || len(es) != 0 {
		t.Errorf("no applications (6A88): %+v, %v; want an empty list", es, err)
	}
	card.pages = []Response{{SW: SWSecurityNotSatisfied}}
	var se *SWError
	if _, err := h.GetStatus(ctx, StatusApplications); !errors.As(err, &se) || se.SW != SWSecurityNotSatisfied || se.Op != "GET STATUS" {
		t.Errorf("GET STATUS answered 6982: %v", err)
	}
}

func TestGetStatusGivesUpOnACardThatNeverEndsItsPages(t *testing.T) {
	card := newTestSD(t, testKeys)
	more := Response{Data: RegistryEntry{AID: unhex(t, "A00000015153504101"), LifeCycle: LifeCycleSelectable}.Bytes(), SW: SWMoreData}
	for range maxStatusPages + 1 {
		card.pages = append(card.pages, more)
	}
	h := NewHost(card)
	if _, err := h.GetStatus(context.Background(), StatusApplications); err == nil {
		t.Fatal("GET STATUS over endless 6310 pages succeeded")
	}
	if h.APDUs() != maxStatusPages {
		t.Errorf("%d GET STATUS sent, want %d", h.APDUs(), maxStatusPages)
	}
}

func TestSendOKNamesTheCommandAndTheStatusWord(t *testing.T) {
	card := ChannelFunc(func(context.Context, []byte) ([]byte, error) { return []byte{0x6A, 0x80}, nil })
	_, err := NewHost(card).SendOK(context.Background(), InstallForPersonalizationCmd(unhex(t, "A00000015153504101")))
	var se *SWError
	if !errors.As(err, &se) || se.SW != SWIncorrectData || err.Error() != "gp: INSTALL: card returned 6A80 incorrect values in command data" {
		t.Fatalf("error %v", err)
	}
}

func TestHostCountsAnAPDUWhoseAnswerWasLostAndSendsNothingAfterCancel(t *testing.T) {
	card := newTestSD(t, testKeys)
	lost := errors.New("reader gone")
	card.fail = lost
	h := NewHost(card)
	if _, err := h.Send(context.Background(), GetData(DataCPLC)); !errors.Is(err, lost) {
		t.Fatalf("transport failure: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.Send(ctx, GetData(DataCPLC)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if h.APDUs() != 1 {
		t.Errorf("APDUs %d, want 1", h.APDUs())
	}
}

func TestStrongestLevelFollowsTheIParameter(t *testing.T) {
	for _, c := range []struct {
		i    byte
		want SecurityLevel
	}{{0x00, 0x03}, {0x10, 0x03}, {0x30, 0x13}, {0x70, 0x33}, {0x60, 0x33}} {
		if got := StrongestLevel(c.i); got != c.want || !levelAllowed(got, c.i) {
			t.Errorf("i=%02X: %s, want %s", c.i, got, c.want)
		}
	}
}

func TestINSNameNamesEveryCommandKeyportSends(t *testing.T) {
	for ins, want := range map[byte]string{
		INSSelect: "SELECT", INSInitializeUpdate: "INITIALIZE UPDATE", INSExternalAuthenticate: "EXTERNAL AUTHENTICATE",
		INSPutKey: "PUT KEY", INSSetStatus: "SET STATUS", INSStoreData: "STORE DATA", INSInstall: "INSTALL",
		INSGetStatus: "GET STATUS", INSGetData: "GET DATA", INSDelete: "DELETE", 0xC0: "INS C0",
	} {
		if got := INSName(ins); got != want {
			t.Errorf("INSName(%02X) = %q, want %q", ins, got, want)
		}
	}
}
