package vcard_test

import (
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// A new module has no OTA key set (without Config.TestOTAKeys): a packet is
// refused until one is loaded with PUT KEY on the ISD (KVN 01, key IDs
// KIc 1, KID 2, DEK 3), which key information then lists and which opens
// packets from then on.
func TestOTAKeySetIsLoadedWithPutKey(t *testing.T) {
	card := newCard(t, vcard.Config{})
	kic, kid := h("11112222333344445555666677778888"), h("99990000AAAABBBBCCCCDDDDEEEEFFFF")
	keys := otaKeys(t, kic, kid)
	p := gp.CommandPacket{SPI: fullSecurity, KIc: keys.KIc, KID: keys.KID, TAR: gp.ISDTAR, Counter: 1, Data: triggerTLV}
	if st := porStatus(t, sendPacket(t, card, p, keys), keys); st != gp.PoRSecurityError {
		t.Fatalf("before PUT KEY: PoR %v, want security error", st)
	}

	hst := processHost(t, card)
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	cmd, want := hst.putKey(0, vcard.DefaultOTAKVN, keyTriple{kic, kid, h("0F0E0D0C0B0A09080706050403020100")})
	if got := hst.mustSec(cmd); string(got) != string(want) {
		t.Fatalf("PUT KEY answered %X, want %X", got, want)
	}
	// Adding the same KVN again is refused.
	if r := hst.sec(cmd); r.SW != gp.SWIncorrectData {
		t.Fatalf("second add: %v, want 6A80", r.SW)
	}
	r := hst.sec(gp.GetData(gp.DataKeyInformation))
	ki, err := gp.ParseKeyInformation(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	ota := 0
	for _, k := range ki {
		if k.KVN == vcard.DefaultOTAKVN {
			ota++
		}
	}
	if ota != 3 {
		t.Fatalf("key information lists %d keys of KVN 01: %+v", ota, ki)
	}

	if st := porStatus(t, sendPacket(t, card, p, keys), keys); st != gp.PoROK {
		t.Fatalf("after PUT KEY: PoR %v", st)
	}
	if st := porStatus(t, sendPacket(t, card, p, keys), keys); st != gp.PoRCounterLow {
		t.Fatalf("replay: PoR %v, want counter low", st)
	}
	// Replacing the key set (P1 = KVN) starts its counter afresh.
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	cmd, _ = hst.putKey(vcard.DefaultOTAKVN, vcard.DefaultOTAKVN, keyTriple{kic, kid, kid})
	hst.mustSec(cmd)
	if st := porStatus(t, sendPacket(t, card, p, keys), keys); st != gp.PoROK {
		t.Fatalf("after the replacement: PoR %v", st)
	}
}

// porStatus reads the PoR of a fullSecurity packet: secured, or plain when
// the card could not verify the packet.
func porStatus(t *testing.T, r gp.Response, keys gp.OTAKeys) gp.PoRStatus {
	t.Helper()
	if por, err := gp.OpenSMSPoR(r.Data, fullSecurity, keys); err == nil {
		return por.Status
	}
	plain := fullSecurity
	plain.PoRCiphered, plain.PoRIntegrity = false, gp.IntegrityNone
	por, err := gp.OpenSMSPoR(r.Data, plain, gp.OTAKeys{})
	if err != nil {
		t.Fatalf("PoR %X: %v", r.Data, err)
	}
	return por.Status
}
