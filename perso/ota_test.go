package perso_test

import (
	"context"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/perso"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// Perso generates the ISD's OTA key set in the HSM, loads it with PUT KEY
// and registers it with the MSISDN: a trigger sealed with the HSM's handles
// of the stored blobs is accepted by the card (PoR OK, OPEN CHANNEL pending).
func TestPersoLoadsTheOTAKeysAndRegistersThemWithTheMSISDN(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		svc, h := persoWorld(t, s)
		eid := fixture.EID(t, 9)
		card := newSimCard(t, eid)
		req := perso.Request{Batch: "p1", Domains: 1, MSISDN: "+491520000999",
			MSISDNs: map[keyport.EID]string{fixture.EID(t, 8): "491520000888"}}
		rep, err := station(svc, h).Personalize(ctx, persoAdmin, card, req)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OTAKeysLoaded || !rep.OTAKeys {
			t.Fatalf("report %+v", rep)
		}
		m, err := s.GetModule(ctx, eid)
		if err != nil {
			t.Fatal(err)
		}
		o, err := s.GetModuleOTA(ctx, m.ID)
		if err != nil || o.MSISDN != "491520000999" || o.KVN != keyport.OTAKVN || !o.Keys.Complete() {
			t.Fatalf("module OTA %+v, %v", o, err)
		}
		if _, err := s.GetPersoKeys(ctx, eid); err == nil {
			t.Fatal("the perso record outlived the registration")
		}
		target, err := svc.SMSTarget(ctx, eid, h)
		if err != nil || target.Counter != 1 {
			t.Fatalf("SMS target %+v, %v", target, err)
		}
		p := gp.CommandPacket{SPI: gp.SPI{Integrity: gp.IntegrityCC, Ciphered: true, Counter: gp.CounterHigher, PoR: gp.PoRAlways, PoRIntegrity: gp.IntegrityCC},
			KIc: target.KIc, KID: target.KID, TAR: gp.ISDTAR, Counter: target.Counter, Data: []byte{0x01}}
		sealed, err := p.Seal(target.Keys)
		if err != nil {
			t.Fatal(err)
		}
		uds, _ := gp.SMSPPSegments(sealed, 1)
		tpdu, _ := gp.OTADeliver(gp.Address{TOA: 0x91, Digits: "1234"}, [7]byte{}, uds[0]).Bytes()
		r, err := gp.ParseResponse(card.card.Process(gp.SMSPPDownload{TPDU: tpdu}.Envelope().Bytes()))
		if err != nil || r.SW != gp.SWOK {
			t.Fatalf("ENVELOPE: %+v %v", r, err)
		}
		por, err := gp.OpenSMSPoR(r.Data, p.SPI, target.Keys)
		if err != nil || por.Status != gp.PoROK || por.Counter != 1 {
			t.Fatalf("PoR %+v, %v", por, err)
		}

		// Run again: the card has the key set; nothing is loaded twice.
		rep, err = station(svc, h).Personalize(ctx, persoAdmin, card, req)
		if err != nil || !rep.AlreadyRegistered || rep.OTAKeysLoaded {
			t.Fatalf("second run %+v, %v", rep, err)
		}
	})
}

// A bad MSISDN stops perso before the module is registered.
func TestPersoRefusesABadMSISDN(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		svc, h := persoWorld(t, s)
		eid := fixture.EID(t, 10)
		card := newSimCard(t, eid)
		if _, err := station(svc, h).Personalize(ctx, persoAdmin, card, perso.Request{Batch: "p1", Domains: 1, MSISDN: "0049 152"}); err == nil {
			t.Fatal("perso accepted a bad MSISDN")
		}
		if _, err := s.GetModule(ctx, eid); err == nil {
			t.Fatal("the module was registered")
		}
	})
}
