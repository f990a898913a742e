package vcard_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

func TestManageChannelOpensTheLowestFreeChannelUpTo19ThenAnswers6A81(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	for want := 1; want <= 19; want++ {
		if n := hst.openChannel(); n != want {
			t.Fatalf("MANAGE CHANNEL open: channel %d, want %d", n, want)
		}
	}
	if sw := hst.send(gp.ManageChannelOpen()).SW; sw != gp.SWFunctionNotSupported {
		t.Fatalf("20th channel: %v, want 6A81", sw)
	}
	if sw := hst.send(gp.ManageChannelClose(2)).SW; sw != gp.SWOK {
		t.Fatalf("close channel 2: %v", sw)
	}
	if n := hst.openChannel(); n != 2 {
		t.Fatalf("after closing 2 the card opened %d", n)
	}
}

func TestCommandsOnAChannelThatIsNotOpenAnswer6881(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	for _, cla := range []byte{0x01, 0x03, 0x81, 0x40, 0x4F, 0xC3} {
		if sw := hst.raw(append([]byte{cla}, h("A4040000")...)).SW; sw != gp.SWChannelNotSupported {
			t.Errorf("SELECT with CLA %02X on a closed channel: %v, want 6881", cla, sw)
		}
	}
	n := hst.openChannel()
	ch := hst.onChannel(n)
	if sw := ch.selectAID(vcard.ISDAID); sw != gp.SWOK {
		t.Fatalf("SELECT on channel %d: %v", n, sw)
	}
	if sw := ch.send(gp.ManageChannelClose(0)).SW; sw != gp.SWOK { // P2 00: the channel it came on
		t.Fatalf("close channel %d from itself: %v", n, sw)
	}
	if sw := ch.send(gp.GetData(gp.DataCPLC)).SW; sw != gp.SWChannelNotSupported {
		t.Fatalf("GET DATA on the closed channel: %v, want 6881", sw)
	}
}

func TestManageChannelRefusesTheBasicChannelUnknownChannelsAndTheGPClass(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ISDAID)
	cases := map[string]struct {
		apdu string
		want gp.SW
	}{
		"close the basic channel":                 {"0070800000", gp.SWIncorrectP1P2},
		"close channel 0 by number":               {"00708000", gp.SWIncorrectP1P2},
		"close a channel not open":                {"00708005", gp.SWReferencedDataNotFound},
		"close channel 20":                        {"00708014", gp.SWIncorrectP1P2},
		"open channel 20":                         {"00700014", gp.SWIncorrectP1P2},
		"unknown P1":                              {"0070400001", gp.SWIncorrectP1P2},
		"GP class: the ISD's, not MANAGE CHANNEL": {"8070000001", gp.SWINSNotSupported},
		"secure messaging":                        {"0470000001", gp.SW(0x6882)},
		"with data":                               {"007000000101", gp.SWWrongLength},
	}
	for name, c := range cases {
		if sw := hst.raw(h(c.apdu)).SW; sw != c.want {
			t.Errorf("%s (%s): %v, want %v", name, c.apdu, sw, c.want)
		}
	}
	// Opening a given number answers no data; opening it twice is refused.
	if r := hst.raw(h("00700007")); r.SW != gp.SWOK || len(r.Data) != 0 {
		t.Fatalf("open channel 7: %X %v", r.Data, r.SW)
	}
	if sw := hst.raw(h("00700007")).SW; sw != gp.SWIncorrectP1P2 {
		t.Fatalf("open channel 7 again: %v, want 6A86", sw)
	}
	if sw := hst.onChannel(7).selectAID(vcard.ARAMAID); sw != gp.SWOK {
		t.Fatalf("SELECT ARA-M on channel 7 (CLA 43): %v", sw)
	}
}

func TestEachChannelHasItsOwnSelectionAndSCP03Session(t *testing.T) {
	card := newCard(t, vcard.Config{})
	basic := processHost(t, card)
	basic.selectAID(vcard.ISDAID)
	basic.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
	basic.createSSD(ssdAID)
	basic.loadKeys(ssdAID, 0x30, vectorKVN30)

	// Channel 1: ARA-M, read without a session; the ISD session on the
	// basic channel goes on undisturbed.
	one := basic.onChannel(basic.openChannel())
	if sw := one.selectAID(vcard.ARAMAID); sw != gp.SWOK {
		t.Fatalf("SELECT ARA-M on channel 1: %v", sw)
	}
	if r := one.send(gp.GetData(gp.DataRefreshTag)); r.SW != gp.SWOK {
		t.Fatalf("ARA-M refresh tag on channel 1: %v", r.SW)
	}
	if e, found := findEntry(basic.registry(gp.StatusApplications), ssdAID); !found || e.LifeCycle != 0x07 {
		t.Fatalf("GET STATUS in the basic channel's session: %+v %v", e, found)
	}

	// Channel 2: an SCP03 session of its own on the SSD.
	two := basic.onChannel(basic.openChannel())
	two.selectAID(ssdAID)
	two.mustAuthenticate(0x30, vectorKVN30, 0x33)
	two.mustSec(gp.StoreData(gp.StoreDataLast|gp.StoreDataBERTLV, 0, h("DF2003AABBCC")))
	if got := two.mustSec(gp.GetData(0xDF20)); !bytes.Equal(got, h("DF2003AABBCC")) {
		t.Fatalf("GET DATA DF20 on channel 2: %X", got)
	}
	// Channel 1 has no session: its SSD data needs one.
	one.selectAID(ssdAID)
	if sw := one.send(gp.GetData(0xDF20)).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("GET DATA DF20 on channel 1 without a session: %v, want 6982", sw)
	}
	// SELECT on channel 1 ended nothing elsewhere.
	two.mustSec(gp.GetData(0xDF20))
	basic.registry(gp.StatusApplications)

	// A wrapped command of channel 2's session sent on channel 1 fails
	// there, and channel 2's session survives it.
	w, err := two.sess.Wrap(gp.GetData(0xDF20))
	if err != nil {
		t.Fatal(err)
	}
	if sw := one.send(w).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("channel 2's wrapped command on channel 1: %v, want 6982", sw)
	}

	// Closing channel 2 ends its session; a new channel 2 starts afresh.
	if sw := basic.send(gp.ManageChannelClose(2)).SW; sw != gp.SWOK {
		t.Fatalf("close channel 2: %v", sw)
	}
	if n := basic.openChannel(); n != 2 {
		t.Fatalf("reopened channel %d, want 2", n)
	}
	if sw := basic.onChannel(2).send(gp.GetData(0xDF20)).SW; sw != gp.SWConditionsNotSatisfied {
		t.Fatalf("GET DATA on the new channel 2 with nothing selected: %v, want 6985", sw)
	}
}

func TestChannelOpenedFromAnotherStartsWithItsSelectionButNotItsSession(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	one := hst.onChannel(hst.openChannel())
	one.selectAID(vcard.ISDAID)
	one.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	n, err := gp.ParseManageChannelOpen(one.send(gp.ManageChannelOpen()))
	if err != nil || n != 2 {
		t.Fatalf("MANAGE CHANNEL open on channel 1: %d %v", n, err)
	}
	two := hst.onChannel(2)
	if r := two.send(gp.GetData(gp.DataCPLC)); r.SW != gp.SWOK {
		t.Fatalf("GET DATA CPLC on channel 2 (ISD inherited): %v", r.SW)
	}
	if sw := two.send(gp.GetStatus(gp.StatusApplications, false, nil)).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("GET STATUS on channel 2 (no session inherited): %v, want 6982", sw)
	}
	// Channel 1's session is untouched.
	one.mustSec(gp.GetStatus(gp.StatusApplications, false, nil))
}

func TestResetClosesEveryChannel(t *testing.T) {
	card := newCard(t, vcard.Config{})
	hst := processHost(t, card)
	n := hst.openChannel()
	hst.onChannel(n).selectAID(vcard.ISDAID)
	card.Reset()
	if sw := hst.onChannel(n).send(gp.GetData(gp.DataCPLC)).SW; sw != gp.SWChannelNotSupported {
		t.Fatalf("channel %d after reset: %v, want 6881", n, sw)
	}
	if n := hst.openChannel(); n != 1 {
		t.Fatalf("first channel after reset: %d", n)
	}
}

func TestFurtherClassCodingReachesChannels4To19(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	for range 5 {
		hst.openChannel()
	}
	// Channel 5 is CLA 41 (interindustry) and C1 (GP).
	if sw := hst.raw(h("41A4040008A000000151000000")).SW; sw != gp.SWOK {
		t.Fatalf("SELECT ISD with CLA 41: %v", sw)
	}
	if r := hst.raw(h("C1CA9F7F00")); r.SW != gp.SWOK || len(r.Data) != 45 {
		t.Fatalf("GET DATA CPLC with CLA C1: %X %v", r.Data, r.SW)
	}
	// The basic channel did not select anything.
	if sw := hst.raw(h("80CA9F7F00")).SW; sw != gp.SWConditionsNotSatisfied {
		t.Fatalf("GET DATA on the basic channel: %v, want 6985", sw)
	}
	// b6 is secure messaging in the further coding: without a session, 6982.
	if sw := hst.raw(h("E1CA9F7F00")).SW; sw != gp.SWSecurityNotSatisfied {
		t.Fatalf("CLA E1 without a session: %v, want 6982", sw)
	}
	// b5 is chaining.
	if sw := hst.raw(h("51CA9F7F00")).SW; sw != gp.SW(0x6884) {
		t.Fatalf("CLA 51: %v, want 6884", sw)
	}
}

func TestOnChannelRecodesTheClassByte(t *testing.T) {
	cases := []struct {
		cla  byte
		n    int
		want byte
	}{
		{0x00, 1, 0x01}, {0x80, 3, 0x83}, {0x84, 2, 0x86}, {0x03, 0, 0x00},
		{0x00, 4, 0x40}, {0x80, 19, 0xCF}, {0x84, 5, 0xE1}, {0x0C, 4, 0x60},
		{0xE1, 1, 0x85}, {0x41, 0, 0x00}, {0x10, 4, 0x50}, {0xC2, 6, 0xC2},
	}
	for _, c := range cases {
		got, err := gp.OnChannel(c.cla, c.n)
		if err != nil || got != c.want {
			t.Errorf("OnChannel(%02X, %d) = %02X %v, want %02X", c.cla, c.n, got, err, c.want)
		}
		if gp.ChannelOf(got) != c.n {
			t.Errorf("ChannelOf(%02X) = %d, want %d", got, gp.ChannelOf(got), c.n)
		}
	}
	if _, err := gp.OnChannel(0x00, 20); err == nil {
		t.Error("OnChannel accepted channel 20")
	}
}

func TestHostReadsPagedRulesOnAChannelAndDeleteAccessRuleRemovesOneAndChangesTheRefreshTag(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	hst.selectAID(vcard.ARAMAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	var rules []gp.AccessRule
	for i := range 8 {
		r := gp.AccessRule{AID: append(bytes.Clone(ssdAID), byte(i)), DeviceAppID: bytes.Repeat([]byte{byte(i)}, 32), APDU: []byte{1}}
		rules = append(rules, r)
		hst.mustSec(gp.StoreAccessRule(r))
	}
	reader := hst.onChannel(hst.openChannel())
	reader.selectAID(vcard.ARAMAID)
	ctx := context.Background()
	got, err := reader.h.AccessRules(ctx)
	if err != nil || len(got) != 8 || !bytes.Equal(got[7].AID, rules[7].AID) {
		t.Fatalf("AccessRules (several Get-Next pages): %d rules %v", len(got), err)
	}
	tag1, err := reader.h.RefreshTag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hst.mustSec(gp.DeleteAccessRule(rules[3]))
	tag2, err := reader.h.RefreshTag(ctx)
	if err != nil || bytes.Equal(tag1, tag2) {
		t.Fatalf("refresh tag %X after a delete, was %X (%v)", tag2, tag1, err)
	}
	got, err = reader.h.AccessRules(ctx)
	if err != nil || len(got) != 7 {
		t.Fatalf("after deleting one: %d rules %v", len(got), err)
	}
	for _, r := range got {
		if bytes.Equal(r.AID, rules[3].AID) {
			t.Fatalf("rule %X is still there", r.AID)
		}
	}
}
