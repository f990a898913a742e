package gp

import (
	"encoding/json"
	"strings"
	"testing"
)

type eidAIDVectors struct {
	Rule      string            `json:"rule"`
	Valid     json.RawMessage   `json:"valid"`
	Invalid   json.RawMessage   `json:"invalid"`
	Compute   json.RawMessage   `json:"compute"`
	Encodings map[string]string `json:"encodings"`
	Sources   string            `json:"sources"`
	AID       struct {
		Length     string            `json:"length"`
		Structure  string            `json:"structure"`
		FPrefix    string            `json:"F_prefix"`
		Examples   map[string]string `json:"examples"`
		Targeted   string            `json:"targeted_application_header"`
		SourcesAID string            `json:"sources"`
	} `json:"aid"`
}

// TestEIDAndAIDBytes covers the byte-level parts of eid_aid.json: the GET
// EID command and response, and AID structure. The EID check-digit lists
// (valid, invalid, compute) are the root package's (keyport.ParseEID).
func TestEIDAndAIDBytes(t *testing.T) {
	var v eidAIDVectors
	loadVectors(t, "eid_aid.json", &v)
	get := v.Encodings["eUICC GET EID (ISD-R STORE DATA)"]
	cmdHex, _, _ := strings.Cut(get, " ->")
	wantBytes(t, "GET EID", GetEID().Bytes(), cmdHex)
	rspHex, eid, _ := strings.Cut(v.Encodings["example_rsp"], " -> EID ")
	got, err := ParseEIDResponse(unhex(t, rspHex))
	if err != nil || got != strings.Fields(eid)[0] {
		t.Errorf("EID %s %v, want %s", got, err, strings.Fields(eid)[0])
	}
	for name, h := range v.AID.Examples {
		rid, pix, err := SplitAID(unhex(t, strings.Fields(h)[0]))
		if err != nil || len(rid) != 5 || len(pix) > 11 {
			t.Errorf("AID %s: %v", name, err)
		}
	}
	hdr := strings.Fields(strings.SplitN(v.AID.Targeted, "e.g. ", 2)[1])[0]
	aid, err := ParseTargetedApplication(hdr)
	if err != nil || hexs(aid) != "A000000151000000" {
		t.Fatalf("%s: %X %v", hdr, aid, err)
	}
	if s, _ := TargetedApplication(aid); s != hdr {
		t.Errorf("TargetedApplication %s, want %s", s, hdr)
	}
	if _, err := ParseEIDResponse(unhex(t, "BF3E125A10898821199000000000000000000000000A")); err == nil {
		t.Error("non-decimal EID accepted")
	}
}
