package keyport

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

var (
	testEID    = "89049032123451234512345678901235"
	wrapped24  = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0xA5}, 24))
	goodImport = `{"eid":"` + testEID + `","isd_aid":"A000000151000000","domains":[{"aid":"A0000001515350410101","kvn":48,"keys":{"enc":"` + wrapped24 + `","mac":"` + wrapped24 + `","dek":"` + wrapped24 + `"},"kcv":{"enc":"ee72cb","mac":"0A0B0C","dek":"010203"}}]}`
)

func TestParseImportLineKeepsTheWrappedKeysAsGiven(t *testing.T) {
	m, err := ParseImportLine([]byte(goodImport))
	if err != nil {
		t.Fatal(err)
	}
	if m.EID != EID(testEID) || m.ISDAID != "A000000151000000" || len(m.Domains) != 1 {
		t.Fatalf("parsed %+v", m)
	}
	d := m.Domains[0]
	if d.KVN != 48 || d.State != Unassigned || d.KeySource != KeyImported || d.KCV[UsageENC] != "EE72CB" {
		t.Errorf("domain %+v", d)
	}
	if !bytes.Equal(d.Wrapped[UsageDEK], bytes.Repeat([]byte{0xA5}, 24)) {
		t.Error("wrapped key altered")
	}
}

func TestParseImportLineNamesTheBadField(t *testing.T) {
	cases := map[string]string{
		`not json`:    "not a JSON object",
		`{"eid":"1"}`: "32 digits",
		`{"eid":"` + testEID + `","isd_aid":"A0","domains":[]}`:                                    "isd_aid",
		`{"eid":"` + testEID + `","isd_aid":"A000000151000000","domains":[]}`:                      "at least one domain",
		`{"eid":"` + testEID + `","isd_aid":"A000000151000000","domains":[],"extra":1}`:            "unknown field",
		strings.Replace(goodImport, `"kvn":48`, `"kvn":200`, 1):                                    "1 to 127",
		strings.Replace(goodImport, `"kvn":48,`, ``, 1):                                            "kvn: missing",
		strings.Replace(goodImport, `"mac":"`+wrapped24, `"mac":"!!`, 1):                           "keys.mac: not standard base64",
		strings.Replace(goodImport, `"dek":"`+wrapped24, `"dek":"AAAA`, 1):                         "24, 32 or 40 bytes",
		strings.Replace(goodImport, `"ee72cb"`, `"ee72"`, 1):                                       "6 hex digits",
		strings.Replace(goodImport, `"kcv":{"enc"`, `"kcv":{"foo":"000000","enc"`, 1):              `unknown field "foo"`,
		strings.Replace(goodImport, `,"dek":"010203"`, ``, 1):                                      `missing "dek"`,
		strings.Replace(goodImport, `"aid":"A0000001515350410101"`, `"aid":"A000000151000000"`, 1): "appears twice",
		goodImport + ` {}`: "more than one JSON value",
	}
	for in, want := range cases {
		_, err := ParseImportLine([]byte(in))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseImportLine(%.60q…) = %v, want %q", in, err, want)
		}
	}
}

func TestLineScannerNumbersLinesAndRefusesOverlongOnes(t *testing.T) {
	sc := newLineScanner(strings.NewReader("\n a \n\nb\n"), MaxImportLine)
	l, _ := sc.next()
	if string(l) != "a" || sc.line != 2 {
		t.Errorf("first: %q at %d", l, sc.line)
	}
	l, _ = sc.next()
	if string(l) != "b" || sc.line != 4 {
		t.Errorf("second: %q at %d", l, sc.line)
	}
	sc = newLineScanner(strings.NewReader("x\n"+strings.Repeat("y", MaxImportLine+1)), MaxImportLine)
	sc.next()
	_, err := sc.next()
	var le *LineError
	if !errors.As(err, &le) || le.Line != 2 {
		t.Errorf("overlong line: %v", err)
	}
}

func FuzzParseImportLine(f *testing.F) {
	f.Add([]byte(goodImport))
	f.Add([]byte(`{"eid":"` + testEID + `","isd_aid":"A000000151000000","domains":[{}]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[`))
	f.Fuzz(func(t *testing.T, line []byte) {
		m, err := ParseImportLine(line)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if len(m.Domains) == 0 {
			t.Fatal("accepted a module with no domain")
		}
		for _, d := range m.Domains {
			for _, u := range Usages {
				if len(d.Wrapped[u]) < 24 || len(d.KCV[u]) != 6 {
					t.Fatalf("accepted domain %s without %s key or KCV", d.AID, u)
				}
			}
		}
	})
}
