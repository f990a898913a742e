package gp

import (
	"errors"
	"testing"
)

func TestParseCommandDecodesEveryCase(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		data     string
		ne       int
	}{
		{"case 1", "80F22002", "", 0},
		{"case 2S", "80CA006600", "", 256},
		{"case 2S Le 10", "80CA006610", "", 16},
		{"case 3S", "80F0408007F0010203040501", "F0010203040501", 0},
		{"case 4S", "00A4040008A00000015100000000", "A000000151000000", 256},
		{"case 2E", "80CA0066000000", "", 65536},
		{"case 2E Le 0101", "80CA0066000101", "", 257},
		{"case 3E", "80E20000000003AABBCC", "AABBCC", 0},
		{"case 4E", "80E20000000003AABBCC0000", "AABBCC", 65536},
		{"case 4E Le 0200", "80E20000000003AABBCC0200", "AABBCC", 512},
	} {
		c, err := ParseCommand(unhex(t, tc.in))
		if err != nil || hexs(c.Data) != tc.data || c.Ne != tc.ne {
			t.Errorf("%s: %+v %v", tc.name, c, err)
		}
	}
}

func TestParseCommandRejectsEveryMalformedLength(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error
		msg  string
	}{
		{"", ErrTruncated, "gp: command APDU of 0 bytes is shorter than its 4-byte header: gp: truncated input"},
		{"80CA00", ErrTruncated, "gp: command APDU of 3 bytes is shorter than its 4-byte header: gp: truncated input"},
		{"80E2000003AABB", ErrTruncated, "gp: command Lc 3 but only 2 data bytes: gp: truncated input"},
		{"80E2000001AABBCC", ErrMalformed, "gp: command Lc 1 leaves 2 trailing bytes (at most 1 Le byte allowed): gp: malformed input"},
		{"80E200000000", ErrMalformed, "gp: command extended length field has 2 bytes, want 3: gp: malformed input"},
		{"80E20000000000AA", ErrMalformed, "gp: command extended Lc is 0 but 1 bytes follow: gp: malformed input"},
		{"80E20000000003AABB", ErrTruncated, "gp: command extended Lc 3 but only 2 data bytes: gp: truncated input"},
		{"80E20000000001AA00", ErrMalformed, "gp: command extended Lc 1 leaves 1 trailing bytes (want 0 or a 2-byte Le): gp: malformed input"},
		{"80E20000000001AA000000", ErrMalformed, "gp: command extended Lc 1 leaves 3 trailing bytes (want 0 or a 2-byte Le): gp: malformed input"},
	} {
		_, err := ParseCommand(unhex(t, tc.in))
		if !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.msg)
		}
	}
}

func TestCommandBytesChoosesShortOrExtended(t *testing.T) {
	long := make([]byte, 256)
	for _, tc := range []struct {
		c    Command
		want string
	}{
		{Command{CLA: 0x80, INS: 0xCA, P1: 0x00, P2: 0x66, Ne: 256}, "80CA006600"},
		{Command{CLA: 0x80, INS: 0xCA, P1: 0x00, P2: 0x66, Ne: 257}, "80CA0066000101"},
		{Command{CLA: 0x80, INS: 0xCA, P1: 0x00, P2: 0x66, Ne: 65536}, "80CA0066000000"},
		{Command{CLA: 0x80, INS: 0xE2, Data: []byte{1}, Ne: 300}, "80E200000000010101 2C"},
	} {
		want := tc.want
		if len(want) > 20 {
			want = "80E2000000000101012C"
		}
		if got := hexs(tc.c.Bytes()); got != want {
			t.Errorf("%+v: %s, want %s", tc.c, got, want)
		}
	}
	c := Command{CLA: 0x80, INS: 0xE2, Data: long, Ne: 256}
	b := c.Bytes()
	if len(b) != 4+3+256+2 || b[4] != 0 || b[5] != 1 || b[6] != 0 || b[len(b)-2] != 1 || b[len(b)-1] != 0 {
		t.Errorf("extended encoding %X", b[:8])
	}
	back, err := ParseCommand(b)
	if err != nil || len(back.Data) != 256 || back.Ne != 256 {
		t.Errorf("round trip %v", err)
	}
	if err := (Command{Ne: 65537}).Valid(); !errors.Is(err, ErrMalformed) {
		t.Errorf("Ne 65537 valid: %v", err)
	}
}

func TestParseResponseSplitsStatusWord(t *testing.T) {
	r, err := ParseResponse(unhex(t, "01029000"))
	if err != nil || hexs(r.Data) != "0102" || r.SW != SWOK || r.Err() != nil {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := ParseResponse([]byte{0x90}); !errors.Is(err, ErrTruncated) {
		t.Errorf("1-byte response: %v", err)
	}
	r, _ = ParseResponse(unhex(t, "6A88"))
	var swe *SWError
	if !errors.As(r.Err(), &swe) || swe.SW != SWReferencedDataNotFound || r.Err().Error() != "gp: card returned 6A88 referenced data not found" {
		t.Errorf("error %v", r.Err())
	}
	if hexs(r.Bytes()) != "6A88" {
		t.Errorf("bytes %X", r.Bytes())
	}
}

func TestSWStringNamesGPStatusWords(t *testing.T) {
	for sw, want := range map[SW]string{
		0x6A82: "6A82 file or application not found",
		0x6310: "6310 more data available",
		0x6982: "6982 security status not satisfied",
		0x6985: "6985 conditions of use not satisfied",
		0x6A80: "6A80 incorrect values in command data",
		0x6A84: "6A84 not enough memory space",
		0x6A86: "6A86 incorrect parameters P1-P2",
		0x6A88: "6A88 referenced data not found",
		0x6D00: "6D00 instruction code not supported or invalid",
		0x6E00: "6E00 class not supported",
		0x6700: "6700 wrong length",
		0x6983: "6983 authentication method blocked",
		0x6581: "6581 memory failure",
		0x63C2: "63C2 verification failed, 2 retries left",
		0x6110: "6110 16 response bytes still available",
		0x6C20: "6C20 wrong Le field, exact length is 32",
		0x1234: "1234 unknown status",
	} {
		if got := sw.String(); got != want {
			t.Errorf("%04X: %q, want %q", uint16(sw), got, want)
		}
	}
	e := &SWError{SW: 0x6982, Op: "PUT KEY"}
	if e.Error() != "gp: PUT KEY: card returned 6982 security status not satisfied" {
		t.Error(e.Error())
	}
}
