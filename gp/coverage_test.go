package gp

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vectorSections says, for every vector file and top-level key, which test
// covers it, or why it is not this package's to cover. A file or key that
// appears in testdata without an entry here fails the test.
var vectorSections = map[string]map[string]string{
	"scp03.json": {
		"description": "doc", "algorithm_summary": "doc (implemented in scp03.go)",
		"sessions_pysim":         "TestSCP03HostSession…, TestSCP03CardSession…, TestSCP03Precomputed…",
		"session_key_kcvs_gppro": "TestSCP03SessionKeysMatchGPProKCVs",
		"kcv_pysim":              "TestKCVMatchesPySim",
		"aes_cmac_rfc4493":       "TestCMACMatchesRFC4493",
	},
	"put_key_derived.json": {
		"status": "doc", "format_reference": "doc",
		"authenticating_keyset_kvn30": "TestPutKey…", "new_keyset_kvn31": "TestPutKey…", "new_keys_kcv": "TestPutKey…",
		"encrypted_keys_under_static_DEK": "TestPutKey…", "amdD_table7_10": "TestPutKey…", "gpcs231_table11_71": "TestPutKey…",
	},
	"gp_commands.json": {
		"status": "doc", "constructed": "TestGPCommandsBuildPublishedTemplates", "public": "TestGPCommandsParsePublicCardData",
	},
	"ram_http.json": {
		"headers": "not gp: HTTP headers are cardlink/'s",
		"tls":     "not gp: TLS-PSK is cardlink/'s",
		"real_trace_plain_http_from_otaman_findings": "TestScriptRealTraceParses",
		"script_encoding":            "TestScriptEncodingRules",
		"examples":                   "TestScriptExamplesRoundTrip",
		"trigger_and_session_params": "TestTriggerParameterTLVsParse",
	},
	"ara_m.json": {
		"aid": "TestAccessRules…", "tags": "TestAccessRules…", "commands": "TestAccessRules…", "vectors": "TestAccessRules…",
	},
	"eid_aid.json": {
		"rule": "doc", "sources": "doc",
		"valid":     "not gp: EID check digits are the root package's (keyport.ParseEID)",
		"invalid":   "not gp: EID check digits are the root package's (keyport.ParseEID)",
		"compute":   "not gp: EID check digits are the root package's (keyport.EIDCheckDigits)",
		"encodings": "TestEIDAndAIDBytes",
		"aid":       "TestEIDAndAIDBytes",
	},
	"key_diversification.json": {
		"source": "doc", "templates": "doc", "note_kdd": "doc", "vectors": "TestKeyDiversificationMatchesGPPro",
	},
	"scp02.json": {
		"pysim_session":            "not done: SCP02 is optional and not implemented",
		"gppro_session_key_kcvs":   "not done: SCP02 is optional and not implemented",
		"gppro_put_key_encryption": "not done: SCP02 is optional and not implemented",
		"kcv_des":                  "TestKeyDiversificationMatchesGPPro (KCVDES)",
	},
}

// TestEveryVectorSectionIsAccountedFor fails when a vector file or one of
// its top-level entries has no covering test or stated reason.
func TestEveryVectorSectionIsAccountedFor(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no vector files: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		sections, ok := vectorSections[name]
		if !ok {
			t.Errorf("%s: unknown vector file", name)
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var top map[string]json.RawMessage
		if err := json.Unmarshal(b, &top); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for k := range top {
			why, ok := sections[k]
			if !ok {
				t.Errorf("%s: entry %q is not covered by any test", name, k)
			} else if strings.HasPrefix(why, "not done") {
				t.Logf("%s %s: %s", name, k, why)
			}
		}
		for k := range sections {
			if _, ok := top[k]; !ok {
				t.Errorf("%s: coverage lists %q, which the file lacks", name, k)
			}
		}
	}
}

// TestVectorCopiesMatchShared keeps testdata in step with /work/shared/vectors
// when that directory exists (it does on the development machine).
func TestVectorCopiesMatchShared(t *testing.T) {
	shared := "/work/shared/vectors"
	if _, err := os.Stat(shared); err != nil {
		t.Skip("shared vectors not present")
	}
	for name := range vectorSections {
		a, err1 := os.ReadFile(filepath.Join(shared, name))
		b, err2 := os.ReadFile(filepath.Join("testdata", name))
		if err1 != nil || err2 != nil || string(a) != string(b) {
			t.Errorf("testdata/%s differs from %s (%v %v)", name, shared, err1, err2)
		}
	}
}
