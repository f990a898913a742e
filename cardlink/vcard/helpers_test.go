package vcard_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// Test keys (PROTOCOLS.md vectors/put_key_derived.json).
var (
	defaultKeys = keyTriple{vcard.DefaultKey, vcard.DefaultKey, vcard.DefaultKey}
	vectorKVN30 = keyTriple{h("000102030405060708090A0B0C0D0E0F"), h("101112131415161718191A1B1C1D1E1F"), h("202122232425262728292A2B2C2D2E2F")}
	vectorKVN31 = keyTriple{h("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"), h("B0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF"), h("C0C1C2C3C4C5C6C7C8C9CACBCCCDCECF")}
	ssdAID      = h("F0010203040501")
	ssdELF      = h("A0000001515350")
	ssdModule   = h("A000000151535041")
)

// keyTriple is an SCP03 key set: ENC, MAC, DEK.
type keyTriple [3][]byte

func h(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// host is the off-card entity of the tests: gp's host over tx (the card's
// Process, or PC/SC), with raw access to the wire for the tests that send
// what a well-behaved host would not.
type host struct {
	t  testing.TB
	tx func([]byte) ([]byte, error)
	h  *gp.Host
	// sess is h's open session, nil if none: tests wrap by hand with it.
	sess *gp.HostSession
	dek  []byte
	aid  []byte // selected application, for pseudo-random challenges
}

func newHost(t testing.TB, tx func([]byte) ([]byte, error)) *host {
	ch := gp.ChannelFunc(func(_ context.Context, b []byte) ([]byte, error) { return tx(b) })
	return &host{t: t, tx: tx, h: gp.NewHost(ch)}
}

func processHost(t testing.TB, c *vcard.Card) *host {
	return newHost(t, func(b []byte) ([]byte, error) { return c.Process(b), nil })
}

// raw sends bytes and returns the parsed response.
func (hst *host) raw(apdu []byte) gp.Response {
	hst.t.Helper()
	b, err := hst.tx(apdu)
	if err != nil {
		hst.t.Fatalf("transmit %X: %v", apdu, err)
	}
	r, err := gp.ParseResponse(b)
	if err != nil {
		hst.t.Fatalf("response %X to %X: %v", b, apdu, err)
	}
	return r
}

// send sends a command without secure messaging, even inside a session.
func (hst *host) send(c gp.Command) gp.Response {
	hst.t.Helper()
	return hst.raw(c.Bytes())
}

// selectAID selects an application and ends any session; it returns the
// card's status word as it is.
func (hst *host) selectAID(aid []byte) gp.SW {
	hst.t.Helper()
	hst.h.EndSession()
	hst.sess, hst.aid = nil, aid
	return hst.send(gp.Select(aid)).SW
}

// authenticate runs INITIALIZE UPDATE and EXTERNAL AUTHENTICATE and returns
// the status of the first that failed (or 9000).
func (hst *host) authenticate(kvn byte, keys keyTriple, level gp.SecurityLevel) gp.SW {
	hst.t.Helper()
	ctx := context.Background()
	ks := gp.KeySet{KVN: kvn, ENC: gp.AESKey(keys[0]), MAC: gp.AESKey(keys[1])}
	hs, err := gp.NewHostSession(ks, nil)
	if err != nil {
		hst.t.Fatal(err)
	}
	hst.sess = nil
	iu, err := hst.h.InitializeUpdate(ctx, hs)
	var se *gp.SWError
	switch {
	case errors.As(err, &se):
		return se.SW
	case errors.Is(err, gp.ErrCryptogram):
		// Wrong keys: carry on as an attacker would, so the card sees an
		// EXTERNAL AUTHENTICATE with a wrong host cryptogram.
		forged, _ := gp.NewHostSession(ks, nil)
		if _, err := forged.Precompute(iu.SequenceCounter, hst.aid, iu.I); err != nil {
			hst.t.Fatal(err)
		}
		ea, err := forged.ExternalAuthenticate(level)
		if err != nil {
			hst.t.Fatal(err)
		}
		return hst.send(ea).SW
	case err != nil:
		hst.t.Fatalf("INITIALIZE UPDATE: %v", err)
	}
	if err := hst.h.ExternalAuthenticate(ctx, level); err != nil {
		if errors.As(err, &se) {
			return se.SW
		}
		hst.t.Fatal(err)
	}
	hst.sess, hst.dek = hst.h.Session(), keys[2]
	return gp.SWOK
}

// mustAuthenticate is authenticate that fails the test unless it succeeds.
func (hst *host) mustAuthenticate(kvn byte, keys keyTriple, level gp.SecurityLevel) {
	hst.t.Helper()
	if sw := hst.authenticate(kvn, keys, level); sw != gp.SWOK {
		hst.t.Fatalf("authenticate KVN %02X level %02X: %v", kvn, byte(level), sw)
	}
}

// sec sends a command wrapped in the open session and unwraps the answer.
func (hst *host) sec(c gp.Command) gp.Response {
	hst.t.Helper()
	if hst.sess == nil {
		hst.t.Fatal("no open session")
	}
	r, err := hst.h.Send(context.Background(), c)
	if err != nil {
		hst.t.Fatalf("%X: %v", c.Bytes(), err)
	}
	return r
}

// mustSec is sec that fails the test unless the status is 9000.
func (hst *host) mustSec(c gp.Command) []byte {
	hst.t.Helper()
	r := hst.sec(c)
	if r.SW != gp.SWOK {
		hst.t.Fatalf("%X answered %v", c.Bytes(), r.SW)
	}
	return r.Data
}

// createSSD installs and makes selectable an SSD (SD + AM, SCP03 i=70) from
// the open ISD session.
func (hst *host) createSSD(aid []byte) {
	hst.t.Helper()
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	hst.mustSec(gp.InstallForInstallCmd(ssdELF, ssdModule, aid, gp.PrivSecurityDomain|gp.PrivAuthorizedManagement, params, true))
}

// loadKeys loads a key set into an SD with INSTALL [for personalization] and
// STORE DATA DGI 00B9/8113, keys under the open session's DEK.
func (hst *host) loadKeys(aid []byte, kvn byte, keys keyTriple) {
	hst.t.Helper()
	hst.mustSec(gp.InstallForPersonalizationCmd(aid))
	hst.mustSec(gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 0, hst.keyLoadDGIs(kvn, keys)))
}

func (hst *host) keyLoadDGIs(kvn byte, keys keyTriple) []byte {
	hst.t.Helper()
	usage := []byte{gp.KeyUsageENC, gp.KeyUsageMAC, gp.KeyUsageDEK}
	var loads []gp.KeyLoad
	for i, k := range keys {
		ct, err := gp.EncryptKey(hst.dek, k)
		if err != nil {
			hst.t.Fatal(err)
		}
		kcv, _ := gp.KCV(k)
		loads = append(loads, gp.KeyLoad{Usage: usage[i], Type: gp.KeyTypeAES, Length: len(k), KID: byte(i + 1), KVN: kvn, KCV: kcv, Encrypted: ct})
	}
	return gp.KeyLoadDGIs(loads)
}

// putKey builds PUT KEY replacing oldKVN (0: add) by newKVN, keys under the
// open session's DEK, and returns it with the expected response data.
func (hst *host) putKey(oldKVN, newKVN byte, keys keyTriple) (gp.Command, []byte) {
	hst.t.Helper()
	pk := gp.PutKey{OldKVN: oldKVN, NewKVN: newKVN, FirstKID: 1}
	for _, k := range keys {
		kc, err := gp.AESKeyComponent(hst.dek, k)
		if err != nil {
			hst.t.Fatal(err)
		}
		pk.Keys = append(pk.Keys, kc)
	}
	c, err := pk.Command()
	if err != nil {
		hst.t.Fatal(err)
	}
	want := []byte{newKVN}
	for _, k := range pk.Keys {
		want = append(want, k.KCV...)
	}
	return c, want
}

// registry lists GET STATUS entries of P1 (all pages) in the open session.
func (hst *host) registry(p1 byte) []gp.RegistryEntry {
	hst.t.Helper()
	if hst.sess == nil {
		hst.t.Fatal("no open session")
	}
	es, err := hst.h.GetStatus(context.Background(), p1)
	if err != nil {
		hst.t.Fatal(err)
	}
	return es
}

func findEntry(es []gp.RegistryEntry, aid []byte) (gp.RegistryEntry, bool) {
	for _, e := range es {
		if bytes.Equal(e.AID, aid) {
			return e, true
		}
	}
	return gp.RegistryEntry{}, false
}

// counter reads the sequence counter of the selected SD's default key set.
func (hst *host) counter() uint32 {
	hst.t.Helper()
	r := hst.send(gp.GetData(gp.DataSequenceCounter))
	if r.SW != gp.SWOK {
		hst.t.Fatalf("GET DATA C1: %v", r.SW)
	}
	n, err := gp.ParseSequenceCounter(r.Data)
	if err != nil {
		hst.t.Fatal(err)
	}
	return n
}

func newCard(t testing.TB, cfg vcard.Config) *vcard.Card {
	t.Helper()
	c, err := vcard.New(vcard.DefaultEID, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// onChannel returns a host whose commands travel on logical channel n of
// the same card (gp.LogicalChannel recodes their class byte).
func (hst *host) onChannel(n int) *host {
	inner := gp.ChannelFunc(func(_ context.Context, b []byte) ([]byte, error) { return hst.tx(b) })
	lc := gp.LogicalChannel{Ch: inner, N: n}
	return newHost(hst.t, func(b []byte) ([]byte, error) { return lc.Transmit(context.Background(), b) })
}

// openChannel sends MANAGE CHANNEL open (the card chooses) and returns the
// new channel's number.
func (hst *host) openChannel() int {
	hst.t.Helper()
	n, err := gp.ParseManageChannelOpen(hst.send(gp.ManageChannelOpen()))
	if err != nil {
		hst.t.Fatal(err)
	}
	return n
}
