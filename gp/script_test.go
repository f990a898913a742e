package gp

import (
	"encoding/json"
	"testing"
)

type ramHTTPVectors struct {
	Headers   json.RawMessage `json:"headers"`
	RealTrace struct {
		Steps []map[string]string `json:"steps"`
	} `json:"real_trace_plain_http_from_otaman_findings"`
	ScriptEncoding map[string]string          `json:"script_encoding"`
	Examples       map[string]string          `json:"examples"`
	Trigger        map[string]json.RawMessage `json:"trigger_and_session_params"`
	TLS            json.RawMessage            `json:"tls"`
}

// TestScriptExamplesRoundTrip encodes every command script example of
// ram_http.json and parses every response script example.
func TestScriptExamplesRoundTrip(t *testing.T) {
	var v ramHTTPVectors
	loadVectors(t, "ram_http.json", &v)
	cov := newCoverage(t, "ram_http.json examples")
	ff21 := GetData(DataExtendedCardResources)
	sel := Select(unhex(t, "A000000151000000"))
	sel.Ne = 0 // the constructed example sends SELECT as case 3
	cmdCases := map[string]struct {
		cmds []Command
		opts ScriptOptions
	}{
		"get_data_ff21_indefinite": {[]Command{ff21}, ScriptOptions{}},
		"get_data_ff21_definite":   {[]Command{ff21}, ScriptOptions{Definite: true}},
		"A2_variant_definite":      {[]Command{GetData(DataCIN)}, ScriptOptions{Definite: true, ComprehensionRequired: true}},
		"two_apdus_indefinite":     {[]Command{sel, GetStatus(StatusISD, false, nil)}, ScriptOptions{}},
	}
	for name, c := range cmdCases {
		cov.use(name)
		got := EncodeCommandScript(c.cmds, c.opts)
		wantBytes(t, name, got, v.Examples[name])
		s, err := ParseCommandScript(got)
		if err != nil || len(s.Commands) != len(c.cmds) || s.Options != c.opts {
			t.Errorf("%s: parse back %+v %v", name, s, err)
			continue
		}
		for i := range c.cmds {
			if hexs(s.Commands[i].Bytes()) != hexs(c.cmds[i].Bytes()) {
				t.Errorf("%s: command %d %X", name, i, s.Commands[i].Bytes())
			}
		}
	}
	respCases := map[string]ResponseScript{
		"response_indefinite_1cmd": {Executed: 1, HasExecuted: true, Responses: []Response{{Data: unhex(t, "9305"), SW: SWOK}}},
		"response_definite_1cmd":   {Executed: 1, HasExecuted: true, Responses: []Response{{Data: unhex(t, "01"), SW: SWOK}}, Definite: true},
	}
	for name, want := range respCases {
		cov.use(name)
		s, err := ParseResponseScript(unhex(t, v.Examples[name]))
		if err != nil || s.Executed != want.Executed || !s.HasExecuted || s.Definite != want.Definite || len(s.Responses) != 1 ||
			hexs(s.Responses[0].Bytes()) != hexs(want.Responses[0].Bytes()) {
			t.Errorf("%s: %+v %v", name, s, err)
		}
		wantBytes(t, name+" re-encoded", want.Bytes(), v.Examples[name])
	}
	cov.use("source")
	cov.check(keysOf(v.Examples))
}

// TestScriptRealTraceParses parses the bodies of the live card trace: the
// card's AF response has no 80 count.
func TestScriptRealTraceParses(t *testing.T) {
	var v ramHTTPVectors
	loadVectors(t, "ram_http.json", &v)
	steps := v.RealTrace.Steps
	if len(steps) != 4 {
		t.Fatalf("want 4 trace steps, got %d", len(steps))
	}
	s, err := ParseCommandScript(unhex(t, steps[0]["body_hex"]))
	if err != nil || len(s.Commands) != 1 || hexs(s.Commands[0].Bytes()) != "80CA008500" {
		t.Errorf("step 1 script %+v %v", s, err)
	}
	r, err := ParseResponseScript(unhex(t, steps[1]["card_body_hex"]))
	if err != nil || r.HasExecuted || len(r.Responses) != 1 || r.Responses[0].SW != SWReferencedDataNotFound || len(r.Responses[0].Data) != 0 {
		t.Errorf("step 2 response %+v %v", r, err)
	}
	s, err = ParseCommandScript(unhex(t, steps[1]["body_hex"]))
	if err != nil || len(s.Commands) != 1 || hexs(s.Commands[0].Bytes()) != hexs(GetStatus(StatusISD, false, nil).Bytes()) {
		t.Errorf("step 2 script %+v %v", s, err)
	}
	// Steps 3 and 4 carry no hex body; their meaning (a 25-byte R-APDU,
	// then 6D00 and 204) is the tolerant-parse case above.
}

// TestScriptEncodingRules checks the documented rules: indefinite form ends
// with 00 00, lengths above 127 are BER-coded (81 xx), never a raw byte.
func TestScriptEncodingRules(t *testing.T) {
	var v ramHTTPVectors
	loadVectors(t, "ram_http.json", &v)
	for _, k := range []string{"command_indefinite", "command_definite", "response_indefinite", "response_definite", "lengths", "c_apdu_tag_variant", "ref"} {
		if v.ScriptEncoding[k] == "" {
			t.Errorf("script_encoding.%s missing", k)
		}
	}
	load := Command{CLA: 0x80, INS: 0xE8, P1: 0x00, P2: 0x00, Data: make([]byte, 245)}
	b := EncodeCommandScript([]Command{load}, ScriptOptions{Definite: true})
	// AA 81 FD 22 81 FA <250-byte APDU>
	wantBytes(t, "LOAD script header", b[:6], "AA81FD2281FA")
	s, err := ParseCommandScript(b)
	if err != nil || len(s.Commands) != 1 || len(s.Commands[0].Data) != 245 {
		t.Errorf("245-byte LOAD round trip: %v", err)
	}
}

// TestTriggerParameterTLVsParse parses the Amendment B trigger and session
// parameter examples as BER-TLV.
func TestTriggerParameterTLVsParse(t *testing.T) {
	var v ramHTTPVectors
	loadVectors(t, "ram_http.json", &v)
	str := func(k string) string {
		var s string
		if err := json.Unmarshal(v.Trigger[k], &s); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		return s
	}
	trig, rest, err := ParseTLV(unhex(t, str("example_trigger")))
	if err != nil || len(rest) != 0 || trig.Tag != 0x81 {
		t.Fatalf("trigger: %v", err)
	}
	// 81 is context-specific primitive in BER terms; its value is TLV.
	inner, err := ParseAllTLV(trig.Value)
	if err != nil || len(inner) != 1 || inner[0].Tag != 0x83 {
		t.Fatalf("trigger inner %+v %v", inner, err)
	}
	params, err := ParseAllTLV(inner[0].Value)
	if err != nil || len(params) != 4 {
		t.Fatalf("admin session params %+v %v", params, err)
	}
	for i, want := range []Tag{0x84, 0x85, 0x86, 0x89} {
		if params[i].Tag != want {
			t.Errorf("param %d tag %s, want %s", i, params[i].Tag, want)
		}
	}
	var sec, post, constructs map[string]string
	_ = json.Unmarshal(v.Trigger["example_security_params"], &sec)
	_ = json.Unmarshal(v.Trigger["example_http_post_params"], &post)
	_ = json.Unmarshal(v.Trigger["pysim_constructs"], &constructs)
	for h := range sec {
		t85, _, err := ParseTLV(unhex(t, h))
		if err != nil || t85.Tag != 0x85 || string(t85.Value[1:1+t85.Value[0]]) != "Test123" {
			t.Errorf("security params %s: %v", h, err)
		}
	}
	for h := range post {
		t89, _, err := ParseTLV(unhex(t, h))
		if err != nil {
			t.Fatal(err)
		}
		kids, err := ParseAllTLV(t89.Value)
		if err != nil || len(kids) != 3 || string(kids[0].Value) != "megafon.ru" || string(kids[2].Value) != "/sd" {
			t.Errorf("HTTP POST params %s: %+v %v", h, kids, err)
		}
	}
	for h, meaning := range constructs {
		x, _, err := ParseTLV(unhex(t, h))
		if err != nil || string(x.Value) != meaning {
			t.Errorf("%s = %q %v, want %q", h, x.Value, err, meaning)
		}
	}
}
