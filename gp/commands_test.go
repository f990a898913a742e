package gp

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
)

type gpCommandVectors struct {
	Constructed map[string]json.RawMessage `json:"constructed"`
	Public      map[string]json.RawMessage `json:"public"`
}

// obj decodes one vector entry into a map of strings (nested objects are
// left as raw JSON text).
func obj(t *testing.T, raw json.RawMessage) map[string]string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("entry %s: %v", raw, err)
	}
	out := map[string]string{}
	for k, v := range m {
		var s string
		if json.Unmarshal(v, &s) != nil {
			s = string(v)
		}
		out[k] = s
	}
	return out
}

func wantBytes(t *testing.T, name string, got []byte, wantHex string) {
	t.Helper()
	if hexs(got) != wantHex {
		t.Errorf("%s: got %X, want %s", name, got, wantHex)
	}
}

// TestGPCommandsBuildPublishedTemplates builds every constructed command
// template of gp_commands.json and compares the bytes.
func TestGPCommandsBuildPublishedTemplates(t *testing.T) {
	var v gpCommandVectors
	loadVectors(t, "gp_commands.json", &v)
	cov := newCoverage(t, "gp_commands.json constructed")
	isd := unhex(t, "A000000151000000")
	ssd := unhex(t, "F0010203040501")
	build := map[string]func() Command{
		"select_isd_by_aid":           func() Command { return Select(isd) },
		"select_default_isd_no_data":  func() Command { return Select(nil) },
		"initialize_update_kvn30":     func() Command { return InitializeUpdate(0x30, unhex(t, "1122334455667788")) },
		"install_for_personalization": func() Command { return InstallForPersonalizationCmd(ssd) },
		"install_for_extradition_ssd_to_itself": func() Command {
			return InstallForExtraditionCmd(ssd, ssd)
		},
		"install_for_install_and_make_selectable_ssd_AM": func() Command {
			params := InstallParams{AppSpecific: SCPParam(0x03, 0x70)}.Bytes()
			return InstallForInstallCmd(unhex(t, "A0000001515350"), unhex(t, "A000000151535041"), ssd,
				PrivSecurityDomain|PrivAuthorizedManagement, params, true)
		},
		"get_status_isd":                        func() Command { return GetStatus(StatusISD, false, nil) },
		"get_status_apps_and_ssds":              func() Command { return GetStatus(StatusApplications, false, nil) },
		"get_status_elfs_and_modules":           func() Command { return GetStatus(StatusLoadFilesModules, false, nil) },
		"get_data_cplc":                         func() Command { return GetData(DataCPLC) },
		"get_data_key_information_template":     func() Command { return GetData(DataKeyInformation) },
		"get_data_card_recognition_data":        func() Command { return GetData(DataCardRecognition) },
		"get_data_card_capability_information":  func() Command { return GetData(DataCardCapabilities) },
		"get_data_sequence_counter":             func() Command { return GetData(DataSequenceCounter) },
		"get_data_extended_card_resources":      func() Command { return GetData(DataExtendedCardResources) },
		"set_status_lock_ssd":                   func() Command { return SetStatus(SetStatusApplication, SetStatusLock, ssd) },
		"set_status_ssd_personalized_by_itself": func() Command { return SetStatus(SetStatusApplication, SetStatusPersonalized, ssd) },
		"set_status_card_lock":                  func() Command { return SetStatus(SetStatusCard, byte(CardLocked), nil) },
		"delete_ssd":                            func() Command { return Delete(ssd, false) },
		"delete_key":                            func() Command { return DeleteKey(0x01, 0x31) },
	}
	for name, raw := range v.Constructed {
		f, ok := build[name]
		if !ok {
			continue
		}
		cov.use(name)
		e := obj(t, raw)
		c := f()
		wantBytes(t, name, c.Bytes(), e["apdu"])
		// Every template must also parse back to the same command.
		p, err := ParseCommand(c.Bytes())
		if err != nil || !bytes.Equal(p.Bytes(), c.Bytes()) {
			t.Errorf("%s: reparse %X %v", name, p.Bytes(), err)
		}
	}

	e := obj(t, v.Constructed["get_status_apps_and_ssds"])
	wantBytes(t, "get_status next page", GetStatus(StatusApplications, true, nil).Bytes(), strings.Fields(e["next_page"])[0])

	cov.use("get_data_iin_cin")
	e = obj(t, v.Constructed["get_data_iin_cin"])
	wantBytes(t, "IIN", GetData(DataIIN).Bytes(), e["apdu_iin"])
	wantBytes(t, "CIN", GetData(DataCIN).Bytes(), e["apdu_cin"])

	cov.use("install_for_install_and_make_selectable_ssd_DM")
	if p := PrivDelegatedManagement; hexs(p.Bytes()) != obj(t, v.Constructed["install_for_install_and_make_selectable_ssd_DM"])["privileges"][:6] ||
		!slices.Equal(p.Names(), []string{"SecurityDomain", "DelegatedManagement"}) {
		t.Errorf("DM privileges %s", p)
	}

	cov.use("get_status_with_tag_list")
	c, err := ParseCommand(unhex(t, obj(t, v.Constructed["get_status_with_tag_list"])["apdu"]))
	if err != nil || c.INS != INSGetStatus || c.P1 != StatusLoadFiles || c.Ne != 0 {
		t.Fatalf("get_status_with_tag_list: %+v %v", c, err)
	}
	// The pySim template announces a 5-byte tag list (5C 05) but carries 4
	// bytes (4F 9F70 C5): the parser must report the truncation, not guess.
	search, rest, err := ParseTLV(c.Data)
	if err != nil || search.Tag != 0x4F || hexs(search.Value) != "1234" {
		t.Fatalf("search criteria %+v %v", search, err)
	}
	if _, _, err := ParseTLV(rest); !errors.Is(err, ErrTruncated) {
		t.Errorf("tag list 5C 05 with 4 bytes: %v, want ErrTruncated", err)
	}

	cov.use("store_data_dgi_last_block")
	for p1, want := range map[byte]byte{StoreDataLast | StoreDataDGI: 0x88, StoreDataLast: 0x80, StoreDataLast | StoreDataBERTLV: 0x90,
		StoreDataLast | StoreDataEncrypted | StoreDataDGI: 0xE8} {
		if p1 != want {
			t.Errorf("STORE DATA P1 %02X, want %02X", p1, want)
		}
	}

	cov.use("store_data_key_loading")
	kl := []KeyLoad{{Usage: KeyUsageENC, Type: KeyTypeAES, Length: 16, KID: 1, KVN: 0x30, KCV: unhex(t, "C35280"), Encrypted: bytes.Repeat([]byte{0xAB}, 16)},
		{Usage: KeyUsageMAC, Access: []byte{0x00}, Type: KeyTypeAES, Length: 16, KID: 2, KVN: 0x30, KCV: unhex(t, "013808"), Encrypted: bytes.Repeat([]byte{0xCD}, 16)}}
	enc := KeyLoadDGIs(kl)
	wantBytes(t, "key loading DGIs", enc[:25], "00B916B914950138800188810110820101830130"+"8403C35280")
	back, err := ParseKeyLoadDGIs(enc)
	if err != nil || len(back) != 2 || back[1].KID != 2 || !bytes.Equal(back[1].Encrypted, kl[1].Encrypted) || hexs(back[1].Access) != "00" {
		t.Errorf("key loading round trip %+v %v", back, err)
	}
	sd := StoreData(StoreDataLast|StoreDataDGI, 0, enc)
	if sd.Bytes()[2] != 0x88 || sd.Ne != 0 {
		t.Errorf("STORE DATA %X", sd.Bytes())
	}

	cov.use("put_key") // covered by put_key_derived.json (TestPutKey…)
	cov.check(keysOf(v.Constructed))
}

// TestGPCommandsParsePublicCardData parses every public card answer of
// gp_commands.json.
func TestGPCommandsParsePublicCardData(t *testing.T) {
	var v gpCommandVectors
	loadVectors(t, "gp_commands.json", &v)
	cov := newCoverage(t, "gp_commands.json public")

	cov.use("kaoh_get_status_response_P1_40")
	e := obj(t, v.Public["kaoh_get_status_response_P1_40"])
	wantBytes(t, "kaoh GET STATUS command", GetStatus(StatusApplications, false, nil).Bytes(), e["plain_cmd"])
	r, err := ParseResponse(unhex(t, e["response"]))
	if err != nil || r.SW != SWOK {
		t.Fatal(err)
	}
	entries, err := ParseGetStatus(r.Data)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 4 {
		t.Fatalf("want 4 registry entries, got %d", len(entries))
	}
	first := entries[0]
	if hexs(first.AID) != "A0000005591010FFFFFFFF8900001000" || first.LifeCycle != 0x3F ||
		first.Privileges != PrivSecurityDomain|PrivAuthorizedManagement|PrivTrustedPath ||
		hexs(first.LoadFileAID) != "A0000001515350" || hexs(first.LoadFileVersion) != "0100" ||
		hexs(first.SecurityDomain) != "A0000005591010FFFFFFFF8900000100" {
		t.Errorf("first entry %+v", first)
	}
	if entries[1].LifeCycle != LifeCycleSelectable || entries[1].Privileges != 0 || hexs(entries[3].AID) != "A00000055910100002" {
		t.Errorf("entries %+v", entries)
	}

	cov.use("gppro_isd_registry_entry")
	entries, err = ParseGetStatus(unhex(t, obj(t, v.Public["gppro_isd_registry_entry"])["data"]))
	if err != nil || len(entries) != 1 {
		t.Fatal(err)
	}
	isd := entries[0]
	if hexs(isd.AID) != "A000000003000000" || isd.LifeCycle.CardString() != "01 OP_READY" || isd.Privileges != 0x9EFE80 ||
		hexs(isd.ImplicitSelection) != "4041424380818283" || hexs(isd.LoadFileAID) != "D276000005AAFFCAFE0001" ||
		hexs(isd.LoadFileVersion) != "0001" || hexs(isd.SecurityDomain) != "A000000003000000" {
		t.Errorf("GPPro ISD entry %+v", isd)
	}

	cov.use("gppro_isd_entry_minimal")
	min := unhex(t, obj(t, v.Public["gppro_isd_entry_minimal"])["data"])
	entries, err = ParseGetStatus(min)
	if err != nil || len(entries) != 1 || hexs(entries[0].AID) != "A0000001510000" || entries[0].LifeCycle.CardString() != "07 INITIALIZED" ||
		entries[0].Privileges != PrivSecurityDomain {
		t.Errorf("minimal ISD entry %+v %v", entries, err)
	}

	cov.use("gppro_privileges")
	if got := Privileges(0x80C000).Names(); !slices.Equal(got, []string{"SecurityDomain", "TrustedPath", "AuthorizedManagement"}) {
		t.Errorf("80C000 = %v", got)
	}
	if got := Privileges(0x9EFE80).Names(); len(got) != 13 {
		t.Errorf("9EFE80 has %d privileges, want 13: %v", len(got), got)
	}

	cov.use("gppro_card_recognition_data")
	cov.use("gppro_card_recognition_note")
	var crd []string
	if err := json.Unmarshal(v.Public["gppro_card_recognition_data"], &crd); err != nil || len(crd) != 2 {
		t.Fatal(err)
	}
	want := []CardRecognition{
		{GPVersion: "2.1.1", SCPs: []SCPOption{{0x02, 0x15}}},
		{GPVersion: "2.2", SCPs: []SCPOption{{0x03, 0x70}, {0x80, 0x00}}},
	}
	for i, h := range crd {
		cr, err := ParseCardRecognition(unhex(t, h))
		if err != nil || cr.GPVersion != want[i].GPVersion || !slices.Equal(cr.SCPs, want[i].SCPs) {
			t.Errorf("card recognition %d: %+v %v, want %+v", i, cr, err, want[i])
		}
	}

	cov.use("gppro_card_capabilities")
	var capsHex string
	_ = json.Unmarshal(v.Public["gppro_card_capabilities"], &capsHex)
	caps, rest, err := ParseTLV(unhex(t, capsHex))
	if err != nil || len(rest) != 0 || caps.Tag != 0x67 {
		t.Fatalf("card capabilities: %v", err)
	}
	kids, err := caps.Children()
	if err != nil || len(kids) != 9 || kids[0].Tag != 0xA0 || kids[1].Tag != 0xA0 {
		t.Fatalf("card capabilities children %d %v", len(kids), err)
	}
	scp03, _ := kids[0].Children()
	if s, _ := Find(scp03, 0x80); hexs(s.Value) != "03" {
		t.Errorf("first capability is SCP %X", s.Value)
	}
	if s, _ := Find(scp03, 0x82); hexs(s.Value) != "07" {
		t.Errorf("SCP03 key sizes %X, want 07 (128/192/256)", s.Value)
	}

	cov.use("pysim_key_information_data")
	wantKI := map[string]KeyInfo{
		"C00401708010": {KID: 1, KVN: 0x70, Components: []KeyComponentInfo{{KeyTypeDES, 16}}},
		"C00402038810": {KID: 2, KVN: 3, Components: []KeyComponentInfo{{KeyTypeAES, 16}}},
	}
	for k, val := range obj(t, v.Public["pysim_key_information_data"]) {
		if k == "source" {
			continue
		}
		ki, err := ParseKeyInformation(unhex(t, k))
		w, ok := wantKI[k]
		if !ok || err != nil || len(ki) != 1 || ki[0].KID != w.KID || ki[0].KVN != w.KVN || !slices.Equal(ki[0].Components, w.Components) {
			t.Errorf("key information %s (%s): %+v %v", k, val, ki, err)
		}
		if ok {
			wantBytes(t, "key information template", KeyInformationBytes(ki), "E006"+k)
		}
	}

	cov.use("pysim_install_params")
	ip := obj(t, v.Public["pysim_install_params"])
	wantBytes(t, "default install params", InstallParams{}.Bytes(), ip["default"])
	full := InstallParams{NonVolatileQuota: 256, VolatileQuota: 256, TS102226: unhex(t, "010001001505000000000000000000000000")}
	wantBytes(t, "pySim install params", full.Bytes(), ip[`gen_install_parameters(256,256,"010001001505000000000000000000000000")`])
	if back, err := ParseInstallParams(full.Bytes()); err != nil || back.VolatileQuota != 256 || back.NonVolatileQuota != 256 || !bytes.Equal(back.TS102226, full.TS102226) {
		t.Errorf("install params round trip %+v %v", back, err)
	}

	cov.use("otaman_install_for_install_applet_real_card")
	raw := unhex(t, obj(t, v.Public["otaman_install_for_install_applet_real_card"])["apdu"])
	c, err := ParseCommand(raw)
	if err != nil {
		t.Fatal(err)
	}
	in, err := ParseInstall(c.P1, c.Data)
	if err != nil {
		t.Fatal(err)
	}
	if hexs(in.LoadFileAID) != "AA1902BC225801" || hexs(in.ModuleAID) != "AA1902BC22580101" || hexs(in.AID) != "AA1902BC22580101" ||
		hexs(in.Privileges) != "00" || in.Token != nil {
		t.Errorf("otaman INSTALL %+v", in)
	}
	params, err := ParseInstallParams(in.Params)
	if err != nil || len(params.AppSpecific) != 0 || hexs(params.UICC) != "800A00000F01000000000000" {
		t.Errorf("otaman install params %+v %v", params, err)
	}
	wantBytes(t, "otaman INSTALL re-encoded", in.Command().Bytes(), hexs(raw))

	cov.use("kaoh_delete_application_wrapped")
	// The kaoh session that wrapped this DELETE is not among the vectors
	// (scp03.json has only the pySim sessions), so only the shapes are checked.
	kd := obj(t, v.Public["kaoh_delete_application_wrapped"])
	plain, err := ParseCommand(unhex(t, kd["plain"]))
	if err != nil || plain.P2 != 0x80 {
		t.Fatalf("kaoh DELETE plain %v", err)
	}
	wantBytes(t, "kaoh DELETE", Delete(unhex(t, "A00100015141434C"), true).Bytes()[:len(plain.Bytes())], kd["plain"])
	wrapped, err := ParseCommand(unhex(t, kd["wrapped_level03"]))
	if err != nil || wrapped.CLA != 0x84 || len(wrapped.Data) != 16+8 {
		t.Errorf("kaoh DELETE wrapped %+v %v", wrapped, err)
	}
	cov.check(keysOf(v.Public))
}
