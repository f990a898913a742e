package keyport

import (
	"errors"
	"strings"
	"testing"
)

func TestNormalizeMSISDNAcceptsE164Only(t *testing.T) {
	for in, want := range map[string]string{"": "", "+4915200000001": "4915200000001", "4915200000001": "4915200000001",
		"1": "1", "+123456789012345": "123456789012345"} {
		if got, err := NormalizeMSISDN(in); err != nil || got != want {
			t.Errorf("NormalizeMSISDN(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"+", "0049152", "+1234567890123456", "49 152", "49-152", "+49152x", "++49", " "} {
		if got, err := NormalizeMSISDN(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("NormalizeMSISDN(%q) = %q, %v; want ErrInvalid", in, got, err)
		}
	}
}

func TestImportLineTakesAnOptionalMSISDN(t *testing.T) {
	with := strings.Replace(goodImport, `{"eid"`, `{"msisdn":"+4915200000001","eid"`, 1)
	m, err := ParseImportLine([]byte(with))
	if err != nil || m.MSISDN != "4915200000001" {
		t.Fatalf("%+v, %v", m, err)
	}
	if m, err := ParseImportLine([]byte(goodImport)); err != nil || m.MSISDN != "" {
		t.Fatalf("without: %+v, %v", m, err)
	}
	bad := strings.Replace(goodImport, `{"eid"`, `{"msisdn":"0152","eid"`, 1)
	var ie *InvalidError
	if _, err := ParseImportLine([]byte(bad)); !errors.As(err, &ie) || ie.Field != "msisdn" {
		t.Fatalf("bad MSISDN: %v", err)
	}
}

// MaskedMSISDN keeps the length and only the last three digits of a
// number, in any form it comes (a "+" or not), masks all of a short one,
// and turns anything but those digits into "*".
func TestMaskedMSISDNShowsOnlyTheLastThreeDigits(t *testing.T) {
	for in, want := range map[string]string{
		"":                  "",
		"4915200000123":     "+**********123",
		"+4915200000123":    "+**********123",
		"1234567":           "+****567",
		"123456":            "+******",
		"12":                "+**",
		"+":                 "+",
		"keyport":           "+*******",
		"49152000001x3":     "+**********1*3",
		"4915\n200000123":   "+***********123",
		"49152000001é23":    "+************23",
		"123456789012345":   "+************345",
		"+1234567890123456": "+*************456",
	} {
		if got := MaskedMSISDN(in); got != want {
			t.Errorf("MaskedMSISDN(%q) = %q, want %q", in, got, want)
		}
	}
}

// FuzzMaskedMSISDN: whatever the sender put in an address, the masked
// form is "+" and "*" but for at most three digits, the input's own last
// ones, at the end; one of fewer than seven characters shows none.
func FuzzMaskedMSISDN(f *testing.F) {
	for _, s := range []string{"", "+", "4915200000123", "+4915200000123", "123456", "1234567", "keyport", "+49 152 000 00123", "é1é2é3é4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := MaskedMSISDN(s)
		if s == "" {
			if got != "" {
				t.Fatalf("MaskedMSISDN(\"\") = %q", got)
			}
			return
		}
		in := []rune(strings.TrimPrefix(s, "+"))
		if !strings.HasPrefix(got, "+") || len(got) != 1+len(in) {
			t.Fatalf("MaskedMSISDN(%q) = %q: want \"+\" and one character per input character", s, got)
		}
		body := got[1:]
		if strings.Trim(body, "*0123456789") != "" {
			t.Fatalf("MaskedMSISDN(%q) = %q: want only \"*\" and digits", s, got)
		}
		for i, c := range body { // ASCII only: i counts characters
			if c == '*' {
				continue
			}
			if i < len(in)-3 || len(in) < 7 || in[i] != c {
				t.Fatalf("MaskedMSISDN(%q) = %q shows %q at %d", s, got, c, i)
			}
		}
	})
}
