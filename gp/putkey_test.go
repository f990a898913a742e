package gp

import (
	"bytes"
	"errors"
	"testing"
)

type putKeyVectors struct {
	Status     string            `json:"status"`
	FormatRef  string            `json:"format_reference"`
	AuthKeyset map[string]string `json:"authenticating_keyset_kvn30"`
	NewKeyset  map[string]string `json:"new_keyset_kvn31"`
	NewKCV     map[string]string `json:"new_keys_kcv"`
	Encrypted  map[string]string `json:"encrypted_keys_under_static_DEK"`
	AmdDTable  struct {
		Plain   string `json:"plain_apdu_replace_kvn30_by_kvn31"`
		Wrapped struct {
			IUCmd    string `json:"initialize_update_cmd"`
			IURsp    string `json:"initialize_update_rsp"`
			ExtAuth  string `json:"external_authenticate_cmd"`
			PutKey   string `json:"wrapped_put_key"`
			Response string `json:"expected_response_data_before_sw"`
		} `json:"wrapped_in_pysim_AES128_03_session_as_first_cmd_after_ext_auth"`
	} `json:"amdD_table7_10"`
	GPCSTable struct {
		Plain string `json:"plain_apdu_replace_kvn30_by_kvn31"`
	} `json:"gpcs231_table11_71"`
}

var keyOrder = []string{"enc", "mac", "dek"}

// newPutKey builds the PUT KEY of put_key_derived.json: KVN 30 replaced by
// 31, keys encrypted under the authenticating set's static DEK.
func newPutKey(t *testing.T, v putKeyVectors, tableAmdD bool) PutKey {
	t.Helper()
	p := PutKey{OldKVN: 0x30, NewKVN: 0x31, FirstKID: 1}
	for _, n := range keyOrder {
		k, err := AESKeyComponent(unhex(t, v.AuthKeyset["dek"]), unhex(t, v.NewKeyset[n]))
		if err != nil {
			t.Fatal(err)
		}
		if hexs(k.Encrypted) != v.Encrypted[n] || hexs(k.KCV) != v.NewKCV[n] {
			t.Errorf("%s: encrypted %X KCV %X, want %s %s", n, k.Encrypted, k.KCV, v.Encrypted[n], v.NewKCV[n])
		}
		if !tableAmdD {
			k.Length = 0
		}
		p.Keys = append(p.Keys, k)
	}
	return p
}

// TestPutKeyBuildsBothEncodingsBitExact checks both key data forms.
func TestPutKeyBuildsBothEncodingsBitExact(t *testing.T) {
	var v putKeyVectors
	loadVectors(t, "put_key_derived.json", &v)
	for _, tc := range []struct {
		name  string
		amdD  bool
		plain string
	}{{"AmdD Table 7-10", true, v.AmdDTable.Plain}, {"GPCS Table 11-71", false, v.GPCSTable.Plain}} {
		p := newPutKey(t, v, tc.amdD)
		c, err := p.Command()
		if err != nil {
			t.Fatal(err)
		}
		wantBytes(t, tc.name, c.Bytes(), tc.plain)
		back, err := ParsePutKey(c)
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.name, err)
		}
		for i, k := range back.Keys {
			if (k.Length == 16) != tc.amdD || !bytes.Equal(k.Encrypted, p.Keys[i].Encrypted) || !bytes.Equal(k.KCV, p.Keys[i].KCV) {
				t.Errorf("%s: parsed key %d %+v", tc.name, i, k)
			}
			clear, err := DecryptKey(unhex(t, v.AuthKeyset["dek"]), k.Encrypted, 16)
			if err != nil || hexs(clear) != v.NewKeyset[keyOrder[i]] {
				t.Errorf("%s: decrypted key %d %X %v", tc.name, i, clear, err)
			}
		}
		if back.OldKVN != 0x30 || back.NewKVN != 0x31 || back.FirstKID != 1 {
			t.Errorf("%s: parsed %+v", tc.name, back)
		}
	}
}

// TestPutKeyWrappedInPySimSessionBitExact wraps the PUT KEY as the first
// command after EXTERNAL AUTHENTICATE in the pySim AES128_03 session, on the
// host and on the card, and checks the response against the declared KCVs.
func TestPutKeyWrappedInPySimSessionBitExact(t *testing.T) {
	var v putKeyVectors
	loadVectors(t, "put_key_derived.json", &v)
	w := v.AmdDTable.Wrapped
	keys := KeySet{KVN: 0x30, ENC: AESKey(unhex(t, v.AuthKeyset["enc"])), MAC: AESKey(unhex(t, v.AuthKeyset["mac"]))}
	iu, _ := ParseCommand(unhex(t, w.IUCmd))
	h, err := NewHostSession(keys, iu.Data)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes(t, "INITIALIZE UPDATE", h.InitializeUpdate().Bytes(), w.IUCmd)
	if err := h.OnInitUpdateResponse(Response{Data: unhex(t, w.IURsp), SW: SWOK}); err != nil {
		t.Fatal(err)
	}
	ea, err := h.ExternalAuthenticate(LevelCMAC | LevelCDEC)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes(t, "EXTERNAL AUTHENTICATE", ea.Bytes(), w.ExtAuth)
	p := newPutKey(t, v, true)
	plain, _ := p.Command()
	wc, err := h.Wrap(plain)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes(t, "wrapped PUT KEY", wc.Bytes(), w.PutKey)

	// Card side: the same session, unwrapping to the plain PUT KEY.
	cs, err := NewCardSession(CardConfig{Keys: keys, KDD: make([]byte, 10), I: 0x70, AID: isdrAID})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := cs.InitializeUpdate(iu, 1)
	if err != nil || hexs(resp.Data) != w.IURsp {
		t.Fatalf("card INITIALIZE UPDATE %X %v", resp.Data, err)
	}
	if _, err := cs.ExternalAuthenticate(ea); err != nil {
		t.Fatal(err)
	}
	got, err := cs.Unwrap(wc)
	if err != nil {
		t.Fatal(err)
	}
	wantBytes(t, "card-side unwrapped PUT KEY", got.Bytes(), v.AmdDTable.Plain)

	pr, err := ParsePutKeyResponse(unhex(t, w.Response))
	if err != nil {
		t.Fatal(err)
	}
	if err := pr.Confirms(p); err != nil {
		t.Errorf("response %s does not confirm: %v", w.Response, err)
	}
	wantBytes(t, "PUT KEY response", pr.Bytes(), w.Response)
	pr.KCVs[2] = []byte{0, 0, 0}
	if err := pr.Confirms(p); err == nil {
		t.Error("a wrong KCV confirmed the PUT KEY")
	}
}

// TestParsePutKeyRejectsKCVLengthPastTheEnd is the regression for a byte
// overflow (1+FF wrapping to 0) found by fuzzing the same pattern in INSTALL.
func TestParsePutKeyRejectsKCVLengthPastTheEnd(t *testing.T) {
	// KCV length FF followed by exactly 255 bytes: valid, and 1+FF must
	// not wrap to 0.
	c := Command{CLA: 0x80, INS: INSPutKey, P1: 0x01, P2: 0x01, Data: append([]byte{0x01, 0x88, 0x00, 0xFF}, make([]byte, 255)...)}
	p, err := ParsePutKey(c)
	if err != nil || len(p.Keys) != 1 || len(p.Keys[0].KCV) != 255 {
		t.Fatalf("KCV of 255 bytes: %+v %v", p, err)
	}
	c.Data = c.Data[:len(c.Data)-1]
	if _, err := ParsePutKey(c); err == nil {
		t.Fatal("accepted a KCV length of FF with 254 bytes")
	}
	if _, err := ParseInstall(0x04, unhex(t, "FF")); err == nil {
		t.Fatal("accepted an INSTALL field length of FF with no bytes")
	}
}

func TestKCVRefusesAKeyThatIsNotAES128192Or256(t *testing.T) {
	for _, n := range []int{0, 3, 8, 15, 17, 33} {
		if kcv, err := KCV(make([]byte, n)); !errors.Is(err, ErrMalformed) {
			t.Errorf("KCV of a %d-byte key = %X, %v; want ErrMalformed", n, kcv, err)
		}
	}
}
