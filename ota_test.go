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
