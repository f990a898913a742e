package gp

import (
	"errors"
	"testing"
)

func TestParseTLVReadsTagsAndLengths(t *testing.T) {
	for _, tc := range []struct {
		in    string
		tag   Tag
		value string
		rest  string
		indef bool
	}{
		{"4F02A0B1FF", 0x4F, "A0B1", "FF", false},
		{"9F700107", 0x9F70, "07", "", false},
		{"BF3E035A0101", 0xBF3E, "5A0101", "", false},
		{"DF8101020102", 0xDF8101, "0102", "", false},
		{"C18100", 0xC1, "", "", false},
		{"C1820001AA", 0xC1, "AA", "", false},
		{"C183000001AA", 0xC1, "AA", "", false},
		{"C18400000001AA", 0xC1, "AA", "", false},
		{"AE80220180000099", 0xAE, "220180", "99", true},
		{"AE80E38022010000000000", 0xAE, "E3802201000000", "", true},
	} {
		x, rest, err := ParseTLV(unhex(t, tc.in))
		if err != nil || x.Tag != tc.tag || hexs(x.Value) != tc.value || hexs(rest) != tc.rest || x.Indefinite != tc.indef {
			t.Errorf("%s: %+v rest %X %v", tc.in, x, rest, err)
			continue
		}
		if x.Indefinite && hexs(x.Bytes()) != tc.in[:len(tc.in)-len(tc.rest)] {
			t.Errorf("%s: re-encoded %X", tc.in, x.Bytes())
		}
	}
}

func TestParseTLVReportsTruncationExactly(t *testing.T) {
	for _, tc := range []struct {
		in, msg string
		want    error
	}{
		{"", "gp: TLV at offset 0: no tag: gp: truncated input", ErrTruncated},
		{"9F", "gp: TLV at offset 0: tag ends after 1 bytes: gp: truncated input", ErrTruncated},
		{"4F", "gp: TLV 4F at offset 0: no length: gp: truncated input", ErrTruncated},
		{"4F03AABB", "gp: TLV 4F at offset 0: length 3 exceeds 2 remaining bytes: gp: truncated input", ErrTruncated},
		{"4F81", "gp: TLV 4F at offset 0: length field needs 1 bytes, 0 left: gp: truncated input", ErrTruncated},
		{"4F8200", "gp: TLV 4F at offset 0: length field needs 2 bytes, 1 left: gp: truncated input", ErrTruncated},
		{"4F84FFFFFFFF00", "gp: TLV 4F at offset 0: length 4294967295 exceeds 1 remaining bytes: gp: truncated input", ErrTruncated},
		{"4F85", "gp: TLV 4F at offset 0: invalid length byte 85: gp: malformed input", ErrMalformed},
		{"4F80", "gp: TLV 4F at offset 0: indefinite length on a primitive tag: gp: malformed input", ErrMalformed},
		{"AE802201AA", "gp: TLV AE: indefinite length without end-of-contents 00 00: gp: truncated input", ErrTruncated},
		{"AE802201AA00", "gp: TLV AE: indefinite length without end-of-contents 00 00: gp: truncated input", ErrTruncated},
		{"00", "gp: TLV at offset 0: tag 00 (end-of-contents) outside an indefinite length: gp: malformed input", ErrMalformed},
		{"9F8181818101", "gp: TLV at offset 0: tag longer than 4 bytes: gp: malformed input", ErrMalformed},
	} {
		_, _, err := ParseTLV(unhex(t, tc.in))
		if !errors.Is(err, tc.want) || err.Error() != tc.msg {
			t.Errorf("%q: %v, want %q", tc.in, err, tc.msg)
		}
	}
}

func TestParseAllTLVGivesOffsetOfTheBadObject(t *testing.T) {
	_, err := ParseAllTLV(unhex(t, "4F01AA9F7003"))
	if err == nil || err.Error() != "gp: TLV 9F70 at offset 3: length 3 exceeds 0 remaining bytes: gp: truncated input" {
		t.Errorf("%v", err)
	}
}

func TestDeeplyNestedIndefiniteLengthIsRefused(t *testing.T) {
	var b []byte
	for i := 0; i < 40; i++ {
		b = append(b, 0xE1, 0x80)
	}
	for i := 0; i < 40; i++ {
		b = append(b, 0, 0)
	}
	if _, _, err := ParseTLV(b); !errors.Is(err, ErrMalformed) {
		t.Errorf("40 nested indefinite lengths: %v", err)
	}
}

func TestEncodeUsesShortestBERLength(t *testing.T) {
	for n, want := range map[int]string{0: "00", 127: "7F", 128: "8180", 255: "81FF", 256: "820100", 65535: "82FFFF", 65536: "83010000", 1 << 24: "8401000000"} {
		if got := hexs(EncodeLength(n)); got != want {
			t.Errorf("%d: %s, want %s", n, got, want)
		}
	}
	if got := hexs(Encode(0xBF3E, []byte{0x5A, 0x00})); got != "BF3E025A00" {
		t.Errorf("Encode %s", got)
	}
	if !Tag(0xE3).Constructed() || Tag(0x9F70).Constructed() || !Tag(0xBF3E).Constructed() {
		t.Error("Constructed")
	}
}
