package vcard_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// triggerTLV is the Amendment B trigger example of PROTOCOLS.md 3.2
// (otaman tests) with real connection parameters in 84: bearer
// description, buffer size 0578, TCP client port 8443, IPv4 127.0.0.1.
var (
	otaConnection = h("35070201030402000339020578" + "3C0302" + "20FB" + "3E05217F000001")
	triggerTLV    = gp.Encode(0x81, gp.Encode(0x83,
		gp.Encode(0x84, otaConnection),
		h("850A06"+"6B6579706F72"+"020101"),
		h("8607B0002503010203"),
		gp.Encode(0x89, h("8A008B008C00"))))
)

func otaKeys(t *testing.T, kic, kid []byte) gp.OTAKeys {
	t.Helper()
	c, err := gp.NewOTAKey(gp.OTAAlgAES, kic)
	if err != nil {
		t.Fatal(err)
	}
	m, err := gp.NewOTAKey(gp.OTAAlgAES, kid)
	if err != nil {
		t.Fatal(err)
	}
	coding := byte(vcard.DefaultOTAKVN<<4) | gp.OTAAlgAES
	return gp.OTAKeys{KIc: coding, KID: coding, Cipher: c, MAC: m}
}

var fullSecurity = gp.SPI{Integrity: gp.IntegrityCC, Ciphered: true, Counter: gp.CounterHigher,
	PoR: gp.PoRAlways, PoRIntegrity: gp.IntegrityCC, PoRCiphered: true}

// envelopes seals p under keys and frames it as the ENVELOPE (SMS-PP
// DOWNLOAD) APDUs a handset would send, one per SMS.
func envelopes(t *testing.T, p gp.CommandPacket, keys gp.OTAKeys) [][]byte {
	t.Helper()
	pkt, err := p.Seal(keys)
	if err != nil {
		t.Fatal(err)
	}
	uds, err := gp.SMSPPSegments(pkt, 7)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, ud := range uds {
		tpdu, err := gp.OTADeliver(gp.Address{TOA: 0x91, Digits: "4420123456"}, [7]byte{0x62, 0x21, 0x10, 0x41, 0x00, 0x00, 0x00}, ud).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, gp.SMSPPDownload{Address: h("911122"), TPDU: tpdu}.Envelope().Bytes())
	}
	return out
}

func send(t *testing.T, c *vcard.Card, apdu []byte) gp.Response {
	t.Helper()
	r, err := gp.ParseResponse(c.Process(apdu))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sendPacket delivers p and returns the last envelope's response.
func sendPacket(t *testing.T, c *vcard.Card, p gp.CommandPacket, keys gp.OTAKeys) gp.Response {
	t.Helper()
	var r gp.Response
	for i, e := range envelopes(t, p, keys) {
		if i > 0 && (r.SW != gp.SWOK || len(r.Data) != 0) {
			t.Fatalf("segment %d answered %X %v, want a bare 9000", i-1, r.Data, r.SW)
		}
		r = send(t, c, e)
	}
	return r
}

func TestOTATriggerOpensChannel(t *testing.T) {
	card := newCard(t, vcard.Config{TestOTAKeys: true})
	keys := otaKeys(t, vcard.DefaultOTAKIc, vcard.DefaultOTAKID)
	p := gp.CommandPacket{SPI: fullSecurity, KIc: keys.KIc, KID: keys.KID, TAR: gp.ISDTAR, Counter: 1, Data: triggerTLV}
	r := sendPacket(t, card, p, keys)
	if r.SW>>8 != 0x91 {
		t.Fatalf("SW %v, want 91xx (proactive command pending)", r.SW)
	}
	por, err := gp.OpenSMSPoR(r.Data, fullSecurity, keys)
	if err != nil {
		t.Fatal(err)
	}
	if por.Status != gp.PoROK || por.Counter != 1 || por.TAR != gp.ISDTAR || len(por.Data) != 0 {
		t.Fatalf("PoR %+v", por)
	}
	n := int(r.SW & 0xFF)
	if f := send(t, card, gp.FetchCommand(n+1).Bytes()); f.SW != gp.SW(0x6C00|n) {
		t.Fatalf("FETCH with a wrong Le: %v", f.SW)
	}
	f := send(t, card, gp.FetchCommand(n).Bytes())
	if f.SW != gp.SWOK || len(f.Data) != n {
		t.Fatalf("FETCH: %X %v", f.Data, f.SW)
	}
	oc, err := gp.ParseProactiveCommand(f.Data)
	if err != nil {
		t.Fatal(err)
	}
	if oc.Type != gp.CATTypeOpenChannel || oc.Dest != gp.CATDeviceTerminal || !bytes.Equal(oc.Objects, otaConnection) {
		t.Fatalf("proactive command %+v", oc)
	}
	// A terminal response for another command is refused.
	wrong := gp.TerminalResponse{Number: oc.Number + 1, Type: oc.Type, Qualifier: oc.Qualifier, Result: []byte{0}}
	if r := send(t, card, wrong.Command().Bytes()); r.SW != gp.SWIncorrectData {
		t.Fatalf("wrong terminal response: %v", r.SW)
	}
	tr := gp.TerminalResponse{Number: oc.Number, Type: oc.Type, Qualifier: oc.Qualifier, Result: []byte{gp.CATResultOK}, Objects: h("38028100" + "350702010304020003" + "39020578")}
	if r := send(t, card, tr.Command().Bytes()); r.SW != gp.SWOK || len(r.Data) != 0 {
		t.Fatalf("terminal response: %X %v", r.Data, r.SW)
	}
	if !card.ChannelOpened() {
		t.Fatal("channel not recorded as opened")
	}
	if r := send(t, card, gp.FetchCommand(0).Bytes()); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("second FETCH: %v", r.SW)
	}
	if r := send(t, card, tr.Command().Bytes()); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("second terminal response: %v", r.SW)
	}
}

func TestOTARefusals(t *testing.T) {
	good := otaKeys(t, vcard.DefaultOTAKIc, vcard.DefaultOTAKID)
	wrongKID := otaKeys(t, vcard.DefaultOTAKIc, vcard.DefaultKey)
	wrongKIc := otaKeys(t, vcard.DefaultKey, vcard.DefaultOTAKID)
	pkt := func(spi gp.SPI, cntr uint64, data []byte) gp.CommandPacket {
		return gp.CommandPacket{SPI: spi, KIc: good.KIc, KID: good.KID, TAR: gp.ISDTAR, Counter: cntr, Data: data}
	}
	oneHigher := fullSecurity
	oneHigher.Counter = gp.CounterOneHigher
	noCounter := fullSecurity
	noCounter.Counter = gp.CounterAvailable
	noCC := fullSecurity
	noCC.Integrity = gp.IntegrityNone
	plainPoR := fullSecurity
	plainPoR.PoRCiphered, plainPoR.PoRIntegrity = false, gp.IntegrityNone
	otherTAR := pkt(fullSecurity, 9, triggerTLV)
	otherTAR.TAR = [3]byte{0xB0, 0x00, 0x10}
	otherKVN := pkt(fullSecurity, 9, triggerTLV)
	otherKVN.KIc, otherKVN.KID = 0x22, 0x22

	type step struct {
		name    string
		p       gp.CommandPacket
		keys    gp.OTAKeys
		want    gp.PoRStatus
		secured bool // the PoR carries the SPI's PoR security
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"valid then replayed", []step{
			{"first", pkt(fullSecurity, 5, triggerTLV), good, gp.PoROK, true},
			{"replay", pkt(fullSecurity, 5, triggerTLV), good, gp.PoRCounterLow, true},
			{"lower", pkt(fullSecurity, 4, triggerTLV), good, gp.PoRCounterLow, true},
			{"higher", pkt(fullSecurity, 9, triggerTLV), good, gp.PoROK, true},
		}},
		{"wrong MAC", []step{
			{"wrong KID", pkt(fullSecurity, 1, triggerTLV), wrongKID, gp.PoRIntegrityFailed, false},
			{"same counter, right keys", pkt(fullSecurity, 1, triggerTLV), good, gp.PoROK, true},
		}},
		{"wrong KIc", []step{
			{"wrong KIc", pkt(plainPoR, 1, triggerTLV), wrongKIc, 0xFF, false},
			{"same counter, right keys", pkt(plainPoR, 1, triggerTLV), good, gp.PoROK, false},
		}},
		{"counter one higher", []step{
			{"1", pkt(oneHigher, 1, triggerTLV), good, gp.PoROK, true},
			{"3", pkt(oneHigher, 3, triggerTLV), good, gp.PoRCounterHigh, true},
			{"2", pkt(oneHigher, 2, triggerTLV), good, gp.PoROK, true},
		}},
		{"counter at its maximum", []step{
			{"max", pkt(fullSecurity, gp.MaxCounter, triggerTLV), good, gp.PoROK, true},
			{"blocked", pkt(fullSecurity, gp.MaxCounter, triggerTLV), good, gp.PoRCounterBlocked, true},
		}},
		{"insufficient security", []step{
			{"no replay check", pkt(noCounter, 1, triggerTLV), good, gp.PoRInsufficientSecurity, false},
			{"no CC", pkt(noCC, 1, triggerTLV), good, gp.PoRInsufficientSecurity, false},
		}},
		{"unknown TAR and key set", []step{
			{"TAR", otherTAR, good, gp.PoRTARUnknown, false},
			{"KVN 2", otherKVN, good, gp.PoRSecurityError, false},
		}},
		{"other content", []step{
			{"GET STATUS", pkt(fullSecurity, 1, h("80F21000024F0000")), good, gp.PoROK, true},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			card := newCard(t, vcard.Config{TestOTAKeys: true})
			for _, s := range tt.steps {
				r := sendPacket(t, card, s.p, s.keys)
				spi := s.p.SPI
				if !s.secured {
					spi.PoRCiphered, spi.PoRIntegrity = false, gp.IntegrityNone
				}
				por, err := gp.OpenSMSPoR(r.Data, spi, good)
				if err != nil {
					t.Fatalf("%s: PoR %X: %v", s.name, r.Data, err)
				}
				if s.want == 0xFF { // a wrong KIc garbles PCNTR or the CC
					if por.Status != gp.PoRIntegrityFailed && por.Status != gp.PoRCipheringError {
						t.Fatalf("%s: status %v", s.name, por.Status)
					}
				} else if por.Status != s.want {
					t.Fatalf("%s: status %v, want %v", s.name, por.Status, s.want)
				}
				pending := r.SW>>8 == 0x91
				wantPending := s.want == gp.PoROK && bytes.Equal(s.p.Data, triggerTLV)
				if pending != wantPending || (!pending && r.SW != gp.SWOK) {
					t.Fatalf("%s: SW %v", s.name, r.SW)
				}
				if s.want == gp.PoROK && !bytes.Equal(s.p.Data, triggerTLV) && !bytes.Equal(por.Data, h("016D00")) {
					t.Fatalf("%s: PoR data %X", s.name, por.Data)
				}
				if s.secured && por.Counter != s.p.Counter {
					t.Fatalf("%s: PoR counter %d", s.name, por.Counter)
				}
				if pending { // clear it for the next step
					if f := send(t, card, gp.FetchCommand(0).Bytes()); f.SW != gp.SWOK {
						t.Fatalf("%s: FETCH %v", s.name, f.SW)
					}
				}
			}
		})
	}
}

func TestOTACounterSurvivesReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "module.json")
	card := newCard(t, vcard.Config{StatePath: path, TestOTAKeys: true})
	keys := otaKeys(t, vcard.DefaultOTAKIc, vcard.DefaultOTAKID)
	p := gp.CommandPacket{SPI: fullSecurity, KIc: keys.KIc, KID: keys.KID, TAR: gp.ISDTAR, Counter: 41, Data: triggerTLV}
	if r := sendPacket(t, card, p, keys); r.SW>>8 != 0x91 {
		t.Fatalf("SW %v", r.SW)
	}
	again, err := vcard.Load(path, vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := sendPacket(t, again, p, keys)
	por, err := gp.OpenSMSPoR(r.Data, fullSecurity, keys)
	if err != nil || por.Status != gp.PoRCounterLow {
		t.Fatalf("replay after reload: %+v, %v", por, err)
	}
	// A power cycle forgets the pending proactive command.
	card.Reset()
	if r := send(t, card, gp.FetchCommand(0).Bytes()); r.SW != gp.SWConditionsNotSatisfied {
		t.Fatalf("FETCH after reset: %v", r.SW)
	}
}

func TestOTAConcatenatedAndNoPoR(t *testing.T) {
	card := newCard(t, vcard.Config{TestOTAKeys: true})
	keys := otaKeys(t, vcard.DefaultOTAKIc, vcard.DefaultOTAKID)
	long := bytes.Repeat(h("00A4040008A000000151000000"), 25) // 325 bytes: three SMS
	p := gp.CommandPacket{SPI: fullSecurity, KIc: keys.KIc, KID: keys.KID, TAR: gp.ISDTAR, Counter: 1, Data: long}
	if n := len(envelopes(t, p, keys)); n != 3 {
		t.Fatalf("%d SMS, want 3", n)
	}
	r := sendPacket(t, card, p, keys)
	por, err := gp.OpenSMSPoR(r.Data, fullSecurity, keys)
	if err != nil || por.Status != gp.PoROK || !bytes.Equal(por.Data, h("016D00")) {
		t.Fatalf("PoR %+v, %v", por, err)
	}
	none := fullSecurity
	none.PoR = gp.PoRNone
	p = gp.CommandPacket{SPI: none, KIc: keys.KIc, KID: keys.KID, TAR: gp.ISDTAR, Counter: 2, Data: triggerTLV}
	if r := sendPacket(t, card, p, keys); r.SW>>8 != 0x91 || len(r.Data) != 0 {
		t.Fatalf("no PoR asked: %X %v", r.Data, r.SW)
	}
	onErr := fullSecurity
	onErr.PoR = gp.PoROnError
	p.SPI, p.Counter = onErr, 2
	r = sendPacket(t, card, p, keys)
	if len(r.Data) == 0 {
		t.Fatal("PoR on error: no PoR for a replayed counter")
	}
	// Not an OTA SMS, not an SMS-PP download: refused without a PoR.
	for _, bad := range [][]byte{
		h("80C2000006D1048202838100"),
		gp.SMSPPDownload{TPDU: h("00")}.Envelope().Bytes(),
		h("00C20000020000"),
	} {
		if r := send(t, card, bad); r.SW == gp.SWOK || len(r.Data) != 0 {
			t.Errorf("%X: %X %v", bad, r.Data, r.SW)
		}
	}
}
