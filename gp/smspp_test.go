package gp

import (
	"bytes"
	"errors"
	"testing"
)

// The SMS-DELIVER header of pySim's OTA vectors (tests/unittests/test_ota.py,
// SmsOtaTestCase encoded_tpdu): originator 12345678 (TOA 81), PID 7F,
// DCS F6, SCTS 22705200000000, TP-UDHI set, TP-MMS clear. (pySim sets
// that test's UDL to 3, so only the bytes before UDL and the user data
// after it are compared.)
func TestSMSDeliverVector(t *testing.T) {
	want := unhex(t, "400881214365877ff6227052000000000302700000201506193535b00011ae733256918d050b87c94fbfe12e4dc402f262c41cf67f2f")
	pkt := unhex(t, scp80Vectors[1].cmd)
	uds, err := SMSPPSegments(pkt, 0)
	if err != nil || len(uds) != 1 {
		t.Fatalf("%d segments, %v", len(uds), err)
	}
	var scts [7]byte
	copy(scts[:], unhex(t, "22705200000000"))
	d := OTADeliver(Address{TOA: 0x81, Digits: "12345678"}, scts, uds[0])
	d.MoreMessages = true
	b, err := d.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	const hdr = 1 + 1 + 1 + 4 + 2 + 7
	if !bytes.Equal(b[:hdr], want[:hdr]) || !bytes.Equal(b[hdr+1:], want[hdr+1:]) || int(b[hdr]) != len(uds[0]) {
		t.Fatalf("TPDU\n%X, want\n%X (UDL %d)", b, want, len(uds[0]))
	}
	back, err := ParseSMSDeliver(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Originator != d.Originator || back.PID != 0x7F || back.DCS != 0xF6 || !back.UDHI || !back.MoreMessages || !bytes.Equal(back.UserData, uds[0]) {
		t.Fatalf("parsed %+v", back)
	}
	joined, err := JoinSMSPP([][]byte{back.UserData})
	if err != nil || !bytes.Equal(joined, pkt) {
		t.Fatalf("joined %X, %v", joined, err)
	}
}

func TestSMSPPConcatenation(t *testing.T) {
	for _, n := range []int{1, 137, 138, 132 + 134, 132 + 134 + 1, 1000} {
		pkt := make([]byte, n)
		for i := range pkt {
			pkt[i] = byte(i)
		}
		uds, err := SMSPPSegments(pkt, 0x42)
		if err != nil {
			t.Fatal(err)
		}
		wantSegs := 1
		if n > 137 {
			wantSegs = 1 + (n-132+133)/134
		}
		if len(uds) != wantSegs {
			t.Fatalf("%d bytes: %d segments, want %d", n, len(uds), wantSegs)
		}
		for i, ud := range uds {
			if len(ud) > MaxUserData {
				t.Fatalf("segment %d of %d bytes", i, len(ud))
			}
			u, err := ParseUserData(ud)
			if err != nil {
				t.Fatal(err)
			}
			_, cpi := u.Find(IEICommandPacket)
			if cpi != (i == 0) {
				t.Fatalf("segment %d: CPI %v", i, cpi)
			}
			if ref, total, seq, ok := u.Concat(); wantSegs > 1 && (!ok || ref != 0x42 || int(total) != wantSegs || int(seq) != i+1) {
				t.Fatalf("segment %d: concat %v %d %d %d", i, ok, ref, total, seq)
			}
		}
		// Any order reassembles.
		rev := make([][]byte, len(uds))
		for i := range uds {
			rev[len(uds)-1-i] = uds[i]
		}
		got, err := JoinSMSPP(rev)
		if err != nil || !bytes.Equal(got, pkt) {
			t.Fatalf("%d bytes: joined %d bytes, %v", n, len(got), err)
		}
		if len(uds) > 1 {
			if _, err := JoinSMSPP(uds[1:]); !errors.Is(err, ErrTruncated) {
				t.Fatalf("missing segment: %v", err)
			}
			if _, err := JoinSMSPP(append([][]byte{uds[0]}, uds[0:len(uds)-1]...)); err == nil {
				t.Fatal("duplicate segment accepted")
			}
		}
	}
	if _, err := SMSPPSegments(make([]byte, 256*134), 1); !errors.Is(err, ErrMalformed) {
		t.Fatalf("too long: %v", err)
	}
}

func TestSMSDeliverErrors(t *testing.T) {
	good, _ := OTADeliver(Address{TOA: 0x91, Digits: "4412345"}, [7]byte{}, []byte{2, 0x70, 0, 1}).Bytes()
	if _, err := ParseSMSDeliver(good); err != nil {
		t.Fatal(err)
	}
	bad := map[string][]byte{
		"short":        good[:5],
		"submit":       append([]byte{0x01}, good[1:]...),
		"UDL too long": bytes.Clone(good[:len(good)-1]),
		"extra byte":   append(bytes.Clone(good), 0),
		"7-bit DCS":    func() []byte { b := bytes.Clone(good); b[8] = 0x00; return b }(),
		"bad fill":     func() []byte { b := bytes.Clone(good); b[6] = 0x05; return b }(),
	}
	for name, b := range bad {
		if _, err := ParseSMSDeliver(b); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := (SMSDeliver{Originator: Address{TOA: 0x91, Digits: "1"}, DCS: 0x00}).Bytes(); err == nil {
		t.Error("7-bit DCS encoded")
	}
	if _, err := (SMSDeliver{Originator: Address{TOA: 0x91, Digits: "1x"}, DCS: 0xF6}).Bytes(); err == nil {
		t.Error("bad digit encoded")
	}
}

// The trigger example of the Amendment B parameters (PROTOCOLS.md 3.2,
// otaman tests) and the OPEN CHANNEL built from it.
func TestAdminTriggerAndOpenChannel(t *testing.T) {
	trig := unhex(t, "811F831D8404020281828504000201018607B000250301020389068A008B008C00")
	a, err := ParseAdminTrigger(trig)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Connection, unhex(t, "02028182")) || !bytes.Equal(a.Security, unhex(t, "00020101")) ||
		!bytes.Equal(a.Retry, unhex(t, "B000250301020389"[:14])) || len(a.Host) != 0 || a.URI == nil {
		t.Fatalf("trigger %+v", a)
	}
	conn := unhex(t, "35070201030402000339020578"+"3C0302"+"1F90"+"3E0521C0A80001")
	oc, err := OpenChannel(1, conn)
	if err != nil {
		t.Fatal(err)
	}
	b := oc.Bytes()
	if !bytes.HasPrefix(b, unhex(t, "D0"+"22"+"8103014001"+"82028182")) {
		t.Fatalf("OPEN CHANNEL %X", b)
	}
	back, err := ParseProactiveCommand(b)
	if err != nil || back.Type != CATTypeOpenChannel || back.Number != 1 || back.Dest != CATDeviceTerminal || !bytes.Equal(back.Objects, conn) {
		t.Fatalf("parsed %+v, %v", back, err)
	}
	tr := TerminalResponse{Number: 1, Type: CATTypeOpenChannel, Qualifier: 1, Result: []byte{CATResultOK}, Objects: unhex(t, "38028100")}
	tb := tr.Bytes()
	if !bytes.Equal(tb, unhex(t, "810301400182028281830100"+"38028100")) {
		t.Fatalf("terminal response %X", tb)
	}
	tback, err := ParseTerminalResponse(tb)
	if err != nil || tback.Number != 1 || tback.Result[0] != 0 || !bytes.Equal(tback.Objects, tr.Objects) {
		t.Fatalf("parsed %+v, %v", tback, err)
	}
	if _, err := ParseAdminTrigger(unhex(t, "8105830384020102")); err == nil {
		t.Fatal("trigger without 85 accepted")
	}
}

func TestSMSPPDownloadEnvelope(t *testing.T) {
	e := SMSPPDownload{Address: unhex(t, "911122"), TPDU: unhex(t, "4000")}
	cmd := e.Envelope()
	if cmd.INS != 0xC2 || !bytes.Equal(cmd.Data, unhex(t, "D10D"+"82028381"+"8603911122"+"8B024000")) {
		t.Fatalf("envelope %X", cmd.Bytes())
	}
	back, err := ParseSMSPPDownload(cmd.Data)
	if err != nil || !bytes.Equal(back.TPDU, e.TPDU) || !bytes.Equal(back.Address, e.Address) {
		t.Fatalf("%+v, %v", back, err)
	}
	for _, s := range []string{"D1060B024000", "D10882028183" + "0B024000", "D004820283810B00", "D1028202"} {
		if _, err := ParseSMSPPDownload(unhex(t, s)); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
}
