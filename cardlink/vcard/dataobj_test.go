package vcard_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// ssdWithKeys creates ssdAID with KVN 30 (vectorKVN30) from the ISD and
// leaves the host with nothing selected in it; personalized also has the
// SSD set itself PERSONALIZED.
func ssdWithKeys(t *testing.T, hst *host, personalized bool) {
	t.Helper()
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)
	if personalized {
		hst.selectAID(ssdAID)
		hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
		hst.mustSec(gp.SetStatus(gp.SetStatusApplication, gp.SetStatusPersonalized, ssdAID))
	}
}

func storeObjects(t *testing.T, objs ...gp.DGI) []gp.Command {
	t.Helper()
	cmds, err := gp.StoreDataObjects(objs)
	if err != nil {
		t.Fatal(err)
	}
	return cmds
}

func TestProviderDataObjectsAreStoredAndReadAtLevel33AndSurviveAReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "module.json")
	card := newCard(t, vcard.Config{StatePath: path})
	hst := processHost(t, card)
	ssdWithKeys(t, hst, true)
	a := bytes.Repeat([]byte{0xA5}, gp.MaxDataObject)
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	for _, c := range storeObjects(t, gp.DGI{Tag: 0x0101, Data: a}, gp.DGI{Tag: 0x0102, Data: []byte("card bank")}) {
		hst.mustSec(c)
	}
	got := hst.mustSec(gp.GetDataObject(0x0101))
	if v, err := gp.ParseDataObject(0x0101, got); err != nil || !bytes.Equal(v, a) {
		t.Fatalf("GET DATA 0101: %X %v", got, err)
	}

	card2, err := vcard.Load(path, vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	hst2 := processHost(t, card2)
	hst2.selectAID(ssdAID)
	hst2.mustAuthenticate(0x30, vectorKVN30, 0x33)
	if v, err := gp.ParseDataObject(0x0102, hst2.mustSec(gp.GetDataObject(0x0102))); err != nil || string(v) != "card bank" {
		t.Fatalf("after reload: %q %v", v, err)
	}
	if r := hst2.sec(gp.GetDataObject(0x0103)); r.SW != gp.SWReferencedDataNotFound {
		t.Fatalf("absent object: %v, want 6A88", r.SW)
	}
}

func TestProviderDataObjectsAreRefusedBelowLevel33With6982(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	ssdWithKeys(t, hst, true)
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	hst.mustSec(storeObjects(t, gp.DGI{Tag: 0x0101, Data: []byte{1}})[0])
	for _, level := range []gp.SecurityLevel{0x01, 0x03, 0x13} {
		hst.selectAID(ssdAID)
		hst.mustAuthenticate(0x30, vectorKVN30, level)
		if r := hst.sec(storeObjects(t, gp.DGI{Tag: 0x0101, Data: []byte{2}})[0]); r.SW != gp.SWSecurityNotSatisfied {
			t.Fatalf("STORE DATA at level %02X: %v, want 6982", byte(level), r.SW)
		}
		if r := hst.sec(gp.GetDataObject(0x0101)); r.SW != gp.SWSecurityNotSatisfied {
			t.Fatalf("GET DATA at level %02X: %v, want 6982", byte(level), r.SW)
		}
	}
	hst.selectAID(ssdAID)
	if r := hst.send(gp.GetDataObject(0x0101)); r.SW != gp.SWSecurityNotSatisfied {
		t.Fatalf("GET DATA without a session: %v, want 6982", r.SW)
	}
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	if v, _ := gp.ParseDataObject(0x0101, hst.mustSec(gp.GetDataObject(0x0101))); !bytes.Equal(v, []byte{1}) {
		t.Fatalf("object after the refused stores: %X", v)
	}
}

func TestProviderDataObjectsNeedAPersonalizedSSDOfItsOwn(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	ssdWithKeys(t, hst, false)
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	if r := hst.sec(storeObjects(t, gp.DGI{Tag: 0x0101, Data: []byte{1}})[0]); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("STORE DATA in a SELECTABLE SSD: %v, want 6985", r.SW)
	}
	if r := hst.sec(gp.GetDataObject(0x0101)); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("GET DATA in a SELECTABLE SSD: %v, want 6985", r.SW)
	}
	// The issuer cannot write the provider's objects through INSTALL [for
	// personalization], nor keep its own in the ISD's range.
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
	hst.mustSec(gp.InstallForPersonalizationCmd(ssdAID))
	if r := hst.sec(storeObjects(t, gp.DGI{Tag: 0x0101, Data: []byte{1}})[0]); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("STORE DATA forwarded to the SSD: %v, want 6985", r.SW)
	}
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
	if r := hst.sec(storeObjects(t, gp.DGI{Tag: 0x0101, Data: []byte{1}})[0]); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("STORE DATA in the ISD: %v, want 6985", r.SW)
	}
	// A locked SSD is not selectable at all.
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.mustSec(gp.SetStatus(gp.SetStatusApplication, gp.SetStatusLock|0x07, ssdAID))
	if sw := hst.selectAID(ssdAID); sw != gp.SWNotFound {
		t.Fatalf("SELECT of the locked SSD: %v, want 6A82", sw)
	}
}

func TestProviderDataObjectsAreBoundedInSizeAndInNumber(t *testing.T) {
	hst := processHost(t, newCard(t, vcard.Config{}))
	ssdWithKeys(t, hst, true)
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	long := gp.StoreData(gp.StoreDataDGI|gp.StoreDataLast, 0, gp.DGI{Tag: 0x0101, Data: make([]byte, gp.MaxDataObject+1)}.Bytes())
	if r := hst.sec(long); r.SW != gp.SWIncorrectData && r.SW != gp.SWWrongLength {
		t.Fatalf("an object of %d bytes: %v, want 6A80", gp.MaxDataObject+1, r.SW)
	}
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	n := vcard.MaxProviderData / gp.MaxDataObject
	var objs []gp.DGI
	for i := range n {
		objs = append(objs, gp.DGI{Tag: 0x0101 + uint16(i), Data: make([]byte, gp.MaxDataObject)})
	}
	for _, c := range storeObjects(t, objs...) {
		hst.mustSec(c)
	}
	over := gp.DGI{Tag: 0x0101 + uint16(n), Data: make([]byte, vcard.MaxProviderData-n*gp.MaxDataObject+1)}
	if r := hst.sec(gp.StoreData(gp.StoreDataDGI|gp.StoreDataLast, 0, over.Bytes())); r.SW != gp.SWNotEnoughMemory {
		t.Fatalf("past %d bytes: %v, want 6A84", vcard.MaxProviderData, r.SW)
	}
	// Replacing an object counts its new size only.
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x33)
	hst.mustSec(gp.StoreData(gp.StoreDataDGI|gp.StoreDataLast, 0, gp.DGI{Tag: 0x0101, Data: []byte{9}}.Bytes()))
	if r := hst.sec(gp.GetDataObject(over.Tag)); r.SW != gp.SWReferencedDataNotFound {
		t.Fatalf("the refused object: %v, want 6A88", r.SW)
	}
}
