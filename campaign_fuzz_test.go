package keyport_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
)

// FuzzParseCampaignRequest: any body is a checked request or an
// *InvalidError, never a panic; a request that passes has a known
// operation, its rate and cap in range and at most one selection.
func FuzzParseCampaignRequest(f *testing.F) {
	for _, s := range []string{
		`{"op":"lock","targets":{"batch":"b1"}}`,
		`{"op":"unlock","rate":10,"module_cap":2,"busy":"skip","targets":{"eids":["89049032123451234512345678901235","89049032123451234512345678901235/A0000001515350410101"]}}`,
		`{"op":"release","targets":{"all_personalized":true}}`,
		`{"op":"access-rule.add","params":{"certificate_sha256":"00"},"targets":{"all_personalized":true}}`,
		`{"op":"data-script"}`,
		`{"op":"lock","targets":{}}`,
		`{"op":"x"}`,
		`[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := keyport.ParseCampaignRequest(body)
		if err != nil {
			var ie *keyport.InvalidError
			if !errors.As(err, &ie) || req != nil {
				t.Fatalf("%q: %v (%T)", body, err, err)
			}
			return
		}
		if req.Rate < 1 || req.Rate > keyport.MaxCampaignRate || req.ModuleCap < 1 || len(req.Targets.EIDs) > keyport.MaxCampaignTargets {
			t.Fatalf("%q passed as %+v", body, req)
		}
		if req.Busy != keyport.BusyWait && req.Busy != keyport.BusySkip {
			t.Fatalf("%q: busy %q", body, req.Busy)
		}
		n := 0
		if req.Targets.Batch != "" {
			n++
		}
		if len(req.Targets.EIDs) > 0 {
			n++
		}
		if req.Targets.AllPersonalized {
			n++
		}
		if n != 1 && !req.Op.Scripted() || n != 0 && req.Op.Scripted() {
			t.Fatalf("%q: %d selections for %s", body, n, req.Op)
		}
	})
}

// FuzzParseCampaignScripts: any upload yields well-formed scripts, each
// domain once, line numbers increasing, or an *InvalidError; never a panic.
func FuzzParseCampaignScripts(f *testing.F) {
	line := `{"eid":"89049032123451234512345678901235","aid":"A0000001515350410101","apdus":["8050300008` + strings.Repeat("00", 8) + `00"]}`
	for _, s := range []string{line + "\n", line + "\n" + line + "\n", "\n\n" + line, `{"eid":1}`, `{"eid":"x","aid":"y","apdus":[]}`, line + "\n{", "{}\n{}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, upload []byte) {
		seen := map[string]bool{}
		last := 0
		n, err := keyport.ParseCampaignScripts(bytes.NewReader(upload), func(l int, s *keyport.CampaignScript) error {
			key := string(s.EID) + "/" + string(s.AID)
			if seen[key] || l <= last || len(s.APDUs) == 0 {
				t.Fatalf("line %d: %s again, or after line %d, or no APDU", l, key, last)
			}
			if _, err := keyport.ParseEID(string(s.EID)); err != nil {
				t.Fatalf("line %d: bad EID passed", l)
			}
			if _, err := keyport.ParseAID(string(s.AID)); err != nil {
				t.Fatalf("line %d: bad AID passed", l)
			}
			seen[key], last = true, l
			return nil
		})
		if err != nil {
			var ie *keyport.InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("%v (%T)", err, err)
			}
			return
		}
		if n != len(seen) || n == 0 {
			t.Fatalf("%d scripts, %d seen", n, len(seen))
		}
	})
}
