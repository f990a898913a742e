package gp

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestStoreDataObjectsNumbersTheBlocksAndFlagsTheLast(t *testing.T) {
	cmds, err := StoreDataObjects([]DGI{{Tag: 0x0101, Data: []byte{1, 2}}, {Tag: 0x0102, Data: bytes.Repeat([]byte{7}, MaxDataObject)}})
	if err != nil {
		t.Fatal(err)
	}
	if got := cmds[0].Bytes(); !bytes.Equal(got, unhex(t, "80E2080005010102"+"0102")) {
		t.Errorf("first block %X", got)
	}
	if c := cmds[1]; c.P1 != 0x88 || c.P2 != 1 || len(c.Data) != 3+MaxDataObject || c.Data[2] != MaxDataObject {
		t.Errorf("last block %X", c.Bytes())
	}
}

func TestStoreDataObjectsRefusesObjectsOutsideTheRangeOrTooLong(t *testing.T) {
	for _, d := range []DGI{{Tag: 0x00B9}, {Tag: 0x8113}, {Tag: 0x9F7F}, {Tag: 0x2000}, {Tag: 0x0101, Data: make([]byte, MaxDataObject+1)}} {
		if _, err := StoreDataObjects([]DGI{d}); !errors.Is(err, ErrMalformed) {
			t.Errorf("DGI %04X of %d bytes: %v", d.Tag, len(d.Data), err)
		}
	}
	if _, err := StoreDataObjects(nil); err == nil {
		t.Error("no objects accepted")
	}
}

func TestParseDataObjectWantsTheAskedDGIAlone(t *testing.T) {
	v, err := ParseDataObject(0x0101, unhex(t, "010103AABBCC"))
	if err != nil || !bytes.Equal(v, unhex(t, "AABBCC")) {
		t.Fatalf("%X %v", v, err)
	}
	for _, s := range []string{"010203AABBCC", "010103AABBCC0101", "010105AABB", "01"} {
		if _, err := ParseDataObject(0x0101, unhex(t, s)); err == nil {
			t.Errorf("%s accepted", s)
		}
	}
	long := DGI{Tag: 0x0101, Data: make([]byte, 300)}.Bytes()
	if _, err := ParseDataObject(0x0101, long); err == nil || !strings.Contains(err.Error(), "longer") {
		t.Errorf("300-byte object: %v", err)
	}
}

func FuzzParseDataObject(f *testing.F) {
	f.Add(uint16(0x0101), unhex(f, "010103AABBCC"))
	f.Add(uint16(0x0101), unhex(f, "0101FF0003AABBCC"))
	f.Fuzz(func(t *testing.T, dgi uint16, b []byte) {
		v, err := ParseDataObject(dgi, b)
		if err != nil {
			return
		}
		if len(v) > MaxDataObject || !bytes.Equal(DGI{Tag: dgi, Data: v}.Bytes(), b) && b[2] != 0xFF {
			t.Fatalf("%04X %X → %X", dgi, b, v)
		}
	})
}

func TestDGIBytesUsesTheTwoByteLengthUpToItsLimitAndRefusesMore(t *testing.T) {
	for _, n := range []int{0, 254, 255, 300, MaxDGIData} {
		b := DGI{Tag: 0x0101, Data: make([]byte, n)}.Bytes()
		got, err := ParseDGIs(b)
		if err != nil || len(got) != 1 || len(got[0].Data) != n {
			t.Fatalf("%d bytes: parsed back as %d DGIs (%v)", n, len(got), err)
		}
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a DGI of 65536 bytes was encoded: its length field cannot say it")
		}
	}()
	DGI{Tag: 0x0101, Data: make([]byte, MaxDGIData+1)}.Bytes()
}
