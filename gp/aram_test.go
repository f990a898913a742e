package gp

import (
	"bytes"
	"encoding/json"
	"testing"
)

type aramVectors struct {
	AID      map[string]string            `json:"aid"`
	Tags     map[string]string            `json:"tags"`
	Commands map[string]string            `json:"commands"`
	Vectors  map[string]map[string]string `json:"vectors"`
}

// TestAccessRulesMatchPublishedEncodings decodes and re-encodes every ARA-M
// vector and builds the published STORE DATA commands.
func TestAccessRulesMatchPublishedEncodings(t *testing.T) {
	var v aramVectors
	loadVectors(t, "ara_m.json", &v)
	cov := newCoverage(t, "ara_m.json vectors")

	cov.use("aosp_rule")
	aosp := unhex(t, v.Vectors["aosp_rule"]["hex"])
	rules, err := ParseAccessRules(aosp)
	if err != nil || len(rules) != 1 {
		t.Fatalf("AOSP rule: %v", err)
	}
	r := rules[0]
	if r.AID != nil || len(r.DeviceAppID) != 20 || r.Package != "com.google.android.apps.myapp" || hexs(r.Perm) != "0000000000000001" || r.APDU != nil {
		t.Errorf("AOSP rule %+v", r)
	}
	wantBytes(t, "AOSP rule re-encoded", r.Bytes(), hexs(aosp))

	cov.use("public_store_apdu")
	pub := AccessRule{AID: unhex(t, "FFFFFFFFFFFF"), DeviceAppID: unhex(t, "E46872F28B350B7E1F140DE535C2A8D5804F0BE3"),
		APDU: []byte{0x01}, Perm: unhex(t, "0000000000000001")}
	wantBytes(t, "public STORE DATA", StoreAccessRule(pub).Bytes(), v.Vectors["public_store_apdu"]["hex"])
	c, _ := ParseCommand(unhex(t, v.Vectors["public_store_apdu"]["hex"]))
	back, err := ParseAccessRules(c.Data)
	if err != nil || len(back) != 1 || !bytes.Equal(back[0].Bytes(), pub.Bytes()) {
		t.Errorf("public STORE DATA parse %+v %v", back, err)
	}

	cov.use("constructed_from_pysim_test_script")
	py := AccessRule{AID: unhex(t, "FFFFFFFFFFBB"), DeviceAppID: unhex(t, "AA6872F28B340B2345678905D5C2BBD5A04F0BDD"),
		APDU: []byte{0x01}, NFC: []byte{0x01}, Perm: unhex(t, "0000000000000004")}
	wantBytes(t, "pySim STORE DATA", StoreAccessRule(py).Bytes(), v.Vectors["constructed_from_pysim_test_script"]["apdu"])
	cov.check(keysOf(v.Vectors))

	if hexs(ARAMAID) != v.AID["ARA-M"] {
		t.Errorf("ARA-M AID %X, want %s", ARAMAID, v.AID["ARA-M"])
	}
	for _, k := range []string{"ARA-M ELF", "PKCS#15 (ARF fallback)"} {
		if _, _, err := SplitAID(unhex(t, v.AID[k])); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}

	cmds := newCoverage(t, "ara_m.json commands")
	for name, want := range map[string]string{
		"get_all":         hexs(GetData(DataAccessRulesAll).Bytes()),
		"get_refresh_tag": hexs(GetData(0xDF20).Bytes()),
		"delete_all":      hexs(DeleteAllAccessRules().Bytes()),
	} {
		cmds.use(name)
		if got := compact(v.Commands[name]); len(got) < len(want) || got[:len(want)] != want {
			t.Errorf("%s: built %s, vector %q", name, want, v.Commands[name])
		}
	}
	cmds.use("store")        // 80 E2 90 00: StoreAccessRule above
	cmds.use("get_specific") // 80 CA FF 50 Lc REF-DO: template only
	cmds.use("get_config")   // 80 CA DF 21: template only
	cmds.check(keysOf(v.Commands))

	// Tag table: the tags this package encodes must agree with it.
	for name, tag := range map[string]string{"REF-AR-DO": "E2", "REF-DO": "E1", "AR-DO": "E3", "APDU-AR-DO": "D0", "NFC-AR-DO": "D1",
		"PERM-AR-DO": "DB", "Command-Store-REF-AR-DO": "F0", "Command-Delete": "F1", "Response-ALL-REF-AR-DO": "FF40"} {
		if got := v.Tags[name]; len(got) < len(tag) || got[:len(tag)] != tag {
			t.Errorf("tag %s = %q, package uses %s", name, got, tag)
		}
	}
	_ = json.Valid
}

// compact drops the spaces and commentary after a hex template: "80 CA FF 40 00 (…)" → "80CAFF4000".
func compact(s string) string {
	var out []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ':
		case (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'):
			out = append(out, c)
		default:
			return string(out)
		}
	}
	return string(out)
}
