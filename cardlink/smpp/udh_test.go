package smpp

import (
	"bytes"
	"testing"
)

func TestSegmentsFitOneMessageUpTo137Octets(t *testing.T) {
	segs, err := Segments(make([]byte, 137), 9)
	if err != nil || len(segs) != 1 || len(segs[0]) != 140 || !bytes.Equal(segs[0][:3], []byte{0x02, 0x70, 0x00}) {
		t.Fatalf("137 octets: %d segments %v", len(segs), err)
	}
}

func TestSegmentsConcatenateFrom138OctetsWithIEI70InTheFirstOnly(t *testing.T) {
	pkt := make([]byte, 138)
	for i := range pkt {
		pkt[i] = byte(i)
	}
	segs, err := Segments(pkt, 0x42)
	if err != nil || len(segs) != 2 {
		t.Fatalf("138 octets: %d segments %v", len(segs), err)
	}
	// TS 31.115 §6.3 / TS 23.040 §9.2.3.24.1.
	if want := []byte{0x07, 0x00, 0x03, 0x42, 0x02, 0x01, 0x70, 0x00}; !bytes.Equal(segs[0][:8], want) {
		t.Errorf("first UDH % X, want % X", segs[0][:8], want)
	}
	if want := []byte{0x05, 0x00, 0x03, 0x42, 0x02, 0x02}; !bytes.Equal(segs[1][:6], want) {
		t.Errorf("second UDH % X, want % X", segs[1][:6], want)
	}
	var whole []byte
	for _, s := range segs {
		if len(s) > 140 {
			t.Errorf("segment of %d octets", len(s))
		}
		ies, rest, err := SplitUDH(s)
		if err != nil || ies[0].ID != IEIConcat8 {
			t.Fatalf("SplitUDH: %v %v", ies, err)
		}
		whole = append(whole, rest...)
	}
	if !bytes.Equal(whole, pkt) {
		t.Fatal("segments do not join to the packet")
	}
}

func TestSegmentsRefuseEmptyAndOverlongPackets(t *testing.T) {
	if _, err := Segments(nil, 0); err == nil {
		t.Error("empty packet accepted")
	}
	if segs, err := Segments(make([]byte, MaxPacket), 0); err != nil || len(segs) != 255 {
		t.Errorf("MaxPacket: %d segments %v", len(segs), err)
	}
	if _, err := Segments(make([]byte, MaxPacket+1), 0); err == nil {
		t.Error("a packet needing 256 segments accepted")
	}
}

func TestSplitUDHRefusesHeadersLongerThanTheData(t *testing.T) {
	for _, ud := range [][]byte{{}, {0x05, 0x00, 0x03}, {0x02, 0x70, 0x01}, {0x01, 0x70}} {
		if _, _, err := SplitUDH(ud); err == nil {
			t.Errorf("% X accepted", ud)
		}
	}
}

func TestProofOfReceiptIsTheDataAfterIEI71(t *testing.T) {
	m := MO{ESMClass: ESMClassUDHI, UserData: []byte{0x02, 0x71, 0x00, 0xAA, 0xBB}}
	if rp, ok := m.ResponsePacket(); !ok || !bytes.Equal(rp, []byte{0xAA, 0xBB}) {
		t.Fatalf("%X %v", rp, ok)
	}
	if _, ok := (MO{UserData: []byte{0x02, 0x71, 0x00}}).ResponsePacket(); ok {
		t.Error("no UDHI, still a response packet")
	}
}
