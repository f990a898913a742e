package keyport

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

type eidVectors struct {
	Valid   []struct{ EID string } `json:"valid"`
	Invalid []struct{ EID string } `json:"invalid"`
	Compute []struct {
		Base30 string `json:"base30"`
		EID    string `json:"eid"`
	} `json:"compute"`
	AID struct {
		Examples map[string]string `json:"examples"`
	} `json:"aid"`
}

func loadEIDVectors(t *testing.T) eidVectors {
	t.Helper()
	b, err := os.ReadFile("testdata/eid_aid.json")
	if err != nil {
		t.Fatal(err)
	}
	var v eidVectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Valid) == 0 || len(v.Invalid) == 0 || len(v.Compute) == 0 || len(v.AID.Examples) == 0 {
		t.Fatal("vector file lost its entries")
	}
	return v
}

func TestParseEIDAcceptsEveryPublishedValidEID(t *testing.T) {
	for _, v := range loadEIDVectors(t).Valid {
		got, err := ParseEID(v.EID)
		if err != nil || string(got) != v.EID {
			t.Errorf("ParseEID(%s) = %q, %v", v.EID, got, err)
		}
	}
}

func TestParseEIDRejectsEveryPublishedInvalidEIDForItsCheckDigits(t *testing.T) {
	for _, v := range loadEIDVectors(t).Invalid {
		_, err := ParseEID(v.EID)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "check digits") {
			t.Errorf("ParseEID(%s) err = %v, want check-digit error", v.EID, err)
		}
	}
}

func TestEIDCheckDigitsReproduceThePublishedEIDs(t *testing.T) {
	for _, v := range loadEIDVectors(t).Compute {
		cd, err := EIDCheckDigits(v.Base30)
		if err != nil || v.Base30+cd != v.EID {
			t.Errorf("EIDCheckDigits(%s) = %s, %v; want %s", v.Base30, cd, err, v.EID[30:])
		}
	}
}

func TestParseEIDNamesWhatIsWrong(t *testing.T) {
	cases := map[string]string{
		"":                                        "empty",
		"8904903212345123451234567890123":         "32 digits",
		"890490321234512345123456789012355":       "32 digits",
		"8904903212345123451234567890123A":        "digits only",
		"8904 9032 1234 5123 4512 3456 7890 1234": "check digits",
	}
	for in, want := range cases {
		_, err := ParseEID(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseEID(%q) = %v, want an error saying %q", in, err, want)
		}
	}
	if e, err := ParseEID(" 8904 9032 1234 5123 4512 3456 7890 1235 "); err != nil || e != "89049032123451234512345678901235" {
		t.Errorf("grouped EID: %q, %v", e, err)
	}
}

func TestParseAIDAcceptsTheWellKnownAIDs(t *testing.T) {
	for name, hexAID := range loadEIDVectors(t).AID.Examples {
		for _, part := range strings.Split(hexAID, " / ") {
			a, err := ParseAID(strings.ToLower(part))
			if err != nil || string(a) != strings.ToUpper(part) {
				t.Errorf("%s: ParseAID(%s) = %q, %v", name, part, a, err)
			}
		}
	}
	a, _ := ParseAID("A000000151000000")
	if a.RID() != "A000000151" || a.PIX() != "000000" || len(a.Bytes()) != 8 {
		t.Errorf("RID/PIX split wrong: %s %s", a.RID(), a.PIX())
	}
}

func TestParseAIDRejectsWrongLengthsAndNonHex(t *testing.T) {
	cases := map[string]string{
		"":                                       "empty",
		"A0000001":                               "5 to 16 bytes",
		"A0000001510000000000000000000000000000": "5 to 16 bytes",
		"A00000015G":                             "hexadecimal",
		"A000000151F":                            "hexadecimal",
	}
	for in, want := range cases {
		_, err := ParseAID(in)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseAID(%q) = %v, want %q", in, err, want)
		}
	}
}

func FuzzParseEID(f *testing.F) {
	for _, s := range []string{"89049032123451234512345678901235", "", "8904 9032", "89049032123451234512345678901234", "\x00\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if len(e) != 32 || mod97(string(e)) != 1 {
			t.Fatalf("accepted bad EID %q", e)
		}
		if e2, err := ParseEID(string(e)); err != nil || e2 != e {
			t.Fatalf("not idempotent: %q", e)
		}
	})
}

func FuzzParseAID(f *testing.F) {
	for _, s := range []string{"A000000151000000", "a0 00 00 01 51", "", "zz", "A0000005591010FFFFFFFF8900000100FF"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAID(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if n := len(a.Bytes()); n < 5 || n > 16 {
			t.Fatalf("accepted %d-byte AID", n)
		}
	})
}
