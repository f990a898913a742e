package keyport_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// Keys of vectors/put_key_derived.json: the first keys (KVN 30) and the
// provider's (KVN 31).
var (
	firstKeys = map[keyport.KeyUsage][]byte{
		keyport.UsageENC: unhex("000102030405060708090A0B0C0D0E0F"),
		keyport.UsageMAC: unhex("101112131415161718191A1B1C1D1E1F"),
		keyport.UsageDEK: unhex("202122232425262728292A2B2C2D2E2F")}
	secondKeys = map[keyport.KeyUsage][]byte{
		keyport.UsageENC: unhex("A0A1A2A3A4A5A6A7A8A9AAABACADAEAF"),
		keyport.UsageMAC: unhex("B0B1B2B3B4B5B6B7B8B9BABBBCBDBEBF"),
		keyport.UsageDEK: unhex("C0C1C2C3C4C5C6C7C8C9CACBCCCDCECF")}
	testSSD = keyport.AID("F0010203040501")
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func spScript(t testing.TB) keyport.ScriptRequest {
	t.Helper()
	req, err := keyport.SecondKeyScript(testSSD, 0x30, 0, 0x31, firstKeys, secondKeys)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestSecondKeyScriptIsInitializeUpdateExternalAuthenticateAtLevel13PutKey30To31AndSetStatusPersonalized(t *testing.T) {
	req := spScript(t)
	if len(req.APDUs) != 4 {
		t.Fatalf("%d APDUs", len(req.APDUs))
	}
	for i, prefix := range []string{"80503000", "84821300", "84D83081", "84F0400F"} {
		if !strings.HasPrefix(req.APDUs[i], prefix) {
			t.Errorf("APDU %d %s, want %s…", i, req.APDUs[i][:8], prefix)
		}
	}
	// vectors/put_key_derived.json: the card answers 31 EE72CB 49B6D5 FB9292.
	if req.Expect.KVN != 0x31 || req.Expect.KCV[keyport.UsageENC] != "EE72CB" || req.Expect.KCV[keyport.UsageMAC] != "49B6D5" ||
		req.Expect.KCV[keyport.UsageDEK] != "FB9292" {
		t.Fatalf("expect %+v", req.Expect)
	}
	for _, u := range keyport.Usages {
		kcv, _ := gp.KCV(secondKeys[u])
		if req.Expect.KCV[u] != strings.ToUpper(hex.EncodeToString(kcv)) {
			t.Errorf("%s KCV %s", u, req.Expect.KCV[u])
		}
	}
}

func TestCheckScriptAcceptsWhatSPScriptBuilds(t *testing.T) {
	p, err := keyport.CheckScript("89049032123451234512345678901235", testSSD, 0x30, spScript(t))
	if err != nil || p.InitUpdate != 0 || p.PutKey != 2 || len(p.APDUs) != 4 {
		t.Fatalf("%+v %v", p, err)
	}
}

func TestCheckScriptRefusesScriptsThatCannotInstallASecondKeySet(t *testing.T) {
	good := spScript(t)
	mod := func(f func(r *keyport.ScriptRequest)) keyport.ScriptRequest {
		r := keyport.ScriptRequest{APDUs: append([]string(nil), good.APDUs...), Expect: keyport.Expectation{KVN: good.Expect.KVN, KCV: map[keyport.KeyUsage]string{}}}
		for k, v := range good.Expect.KCV {
			r.Expect.KCV[k] = v
		}
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name, field string
		req         keyport.ScriptRequest
	}{
		{"no APDU at all", "apdus", mod(func(r *keyport.ScriptRequest) { r.APDUs = nil })},
		{"an APDU that is not hex", "apdus[1]", mod(func(r *keyport.ScriptRequest) { r.APDUs[1] = "zz" })},
		{"an APDU of one byte", "apdus[3]", mod(func(r *keyport.ScriptRequest) { r.APDUs[3] = "00" })},
		{"a SELECT", "apdus[3]", mod(func(r *keyport.ScriptRequest) { r.APDUs[3] = "00A4040007F001020304050100" })},
		{"no INITIALIZE UPDATE first", "apdus", mod(func(r *keyport.ScriptRequest) { r.APDUs = r.APDUs[2:] })},
		{"INITIALIZE UPDATE on another KVN", "apdus[0]", mod(func(r *keyport.ScriptRequest) { r.APDUs[0] = "80503100" + r.APDUs[0][8:] })},
		{"a session without R-MAC", "apdus[1]", mod(func(r *keyport.ScriptRequest) { r.APDUs[1] = "84820300" + r.APDUs[1][8:] })},
		{"no PUT KEY", "apdus", mod(func(r *keyport.ScriptRequest) { r.APDUs = r.APDUs[:2] })},
		{"two PUT KEYs", "apdus[3]", mod(func(r *keyport.ScriptRequest) { r.APDUs[3] = r.APDUs[2] })},
		{"a PUT KEY of another key set", "apdus[2]", mod(func(r *keyport.ScriptRequest) { r.APDUs[2] = "84D83281" + r.APDUs[2][8:] })},
		{"a PUT KEY in clear", "apdus[2]", mod(func(r *keyport.ScriptRequest) { r.APDUs[2] = "80D83081" + r.APDUs[2][8:] })},
		{"the current KVN as the new one", "expect.kvn", mod(func(r *keyport.ScriptRequest) { r.Expect.KVN = 0x30 })},
		{"a KVN above 127", "expect.kvn", mod(func(r *keyport.ScriptRequest) { r.Expect.KVN = 200 })},
		{"a missing KCV", "expect.kcv", mod(func(r *keyport.ScriptRequest) { delete(r.Expect.KCV, keyport.UsageDEK) })},
		{"a KCV of 2 bytes", "expect.kcv.mac", mod(func(r *keyport.ScriptRequest) { r.Expect.KCV[keyport.UsageMAC] = "ABCD" })},
		{"65 APDUs", "apdus", mod(func(r *keyport.ScriptRequest) {
			for len(r.APDUs) < 65 {
				r.APDUs = append(r.APDUs, "80CA006600")
			}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := keyport.CheckScript("89049032123451234512345678901235", testSSD, 0x30, tc.req)
			var inv *keyport.InvalidError
			if !errors.As(err, &inv) || inv.Field != tc.field {
				t.Fatalf("error %v, want an invalid %q", err, tc.field)
			}
		})
	}
}

// answer is the response script a module gives: R-APDUs in order.
func answer(rs ...string) []byte {
	var out gp.ResponseScript
	for _, r := range rs {
		resp, _ := gp.ParseResponse(unhex(r))
		out.Responses = append(out.Responses, resp)
	}
	return out.Bytes()
}

func payload(t *testing.T) *keyport.SecondKeyPayload {
	t.Helper()
	p, err := keyport.CheckScript("89049032123451234512345678901235", testSSD, 0x30, spScript(t))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func putKeyAnswer(p *keyport.SecondKeyPayload) string {
	return "31" + p.Expect.KCV[keyport.UsageENC] + p.Expect.KCV[keyport.UsageMAC] + p.Expect.KCV[keyport.UsageDEK] + "9000"
}

// firstKeySet is the domain's current key set, as Judge checks the card's
// proof with it.
var firstKeySet = gp.KeySet{KVN: 0x30, ENC: gp.AESKey(firstKeys[keyport.UsageENC]), MAC: gp.AESKey(firstKeys[keyport.UsageMAC])}

// cardAnswers runs p's script on gp's card side of the SSD (i=70, the
// sequence counter at 1 as `keyport sp script` predicted) and returns the
// R-APDUs a genuine card gives, R-MACs included, the PUT KEY answering
// putKey (KVN ‖ KCVs) and stopping after n commands.
func cardAnswers(t *testing.T, p *keyport.SecondKeyPayload, putKey []byte, n int) []string {
	t.Helper()
	card, err := gp.NewCardSession(gp.CardConfig{Keys: firstKeySet, KDD: make([]byte, 10), I: 0x70, AID: testSSD.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	cmds, err := p.Commands()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i, c := range cmds[:n] {
		var r gp.Response
		switch i {
		case 0:
			r, err = card.InitializeUpdate(c, 1)
		case 1:
			r, err = card.ExternalAuthenticate(c)
		default:
			if _, err = card.Unwrap(c); err == nil {
				plain := gp.Response{SW: gp.SWOK}
				if i == p.PutKey {
					plain.Data = putKey
				}
				r, err = card.Wrap(plain)
			}
		}
		if err != nil {
			t.Fatalf("card, command %d: %v", i+1, err)
		}
		out = append(out, strings.ToUpper(hex.EncodeToString(r.Bytes())))
	}
	return out
}

func putKeyData(p *keyport.SecondKeyPayload) []byte {
	return unhex(putKeyAnswer(p)[:len(putKeyAnswer(p))-4])
}

func TestJudgeConfirmsOnlyAnAnswerWithEverySW9000AndTheDeclaredKVNAndKCVs(t *testing.T) {
	p := payload(t)
	r, err := p.Judge("ok", answer(cardAnswers(t, p, putKeyData(p), 4)...), firstKeySet)
	if err != nil || !r.Confirmed || r.SequenceCounter == nil || *r.SequenceCounter != 1 || len(r.Responses) != 4 {
		t.Fatalf("%+v %v", r, err)
	}
}

// A module that holds the PSK but not the domain's keys answers with the
// right status words and KCVs: without a valid card cryptogram and R-MACs
// nothing is confirmed, and the forged counter is not taken.
func TestJudgeRefusesTheDeclaredAnswerWithoutTheCardsCryptogramOrRMACs(t *testing.T) {
	p := payload(t)
	genuine := cardAnswers(t, p, putKeyData(p), 4)
	zeroCryptogram := strings.ToUpper(hex.EncodeToString(gp.InitUpdateResponse{KDD: make([]byte, 10), KVN: 0x30, SCP: 0x03, I: 0x70,
		CardChallenge: make([]byte, 8), CardCryptogram: make([]byte, 8), SequenceCounter: 1, HasSequenceCounter: true}.Bytes())) + "9000"
	flip := func(r string, at int) string {
		b := unhex(r)
		b[at] ^= 1
		return strings.ToUpper(hex.EncodeToString(b))
	}
	for name, rs := range map[string][]string{
		"forged card cryptogram":      {zeroCryptogram, "9000", putKeyAnswer(p), "9000"},
		"genuine handshake, no R-MAC": {genuine[0], "9000", putKeyAnswer(p), "9000"},
		"PUT KEY R-MAC altered":       {genuine[0], genuine[1], flip(genuine[2], len(unhex(genuine[2]))-3), genuine[3]},
		"SET STATUS R-MAC altered":    {genuine[0], genuine[1], genuine[2], flip(genuine[3], 0)},
		"card cryptogram altered":     {flip(genuine[0], 28), genuine[1], genuine[2], genuine[3]},
	} {
		r, err := p.Judge("ok", answer(rs...), firstKeySet)
		if err != nil || r.Confirmed || r.Cause == "" || name == "forged card cryptogram" && r.SequenceCounter != nil {
			t.Errorf("%s: %+v %v", name, r, err)
		}
	}
	other := gp.KeySet{KVN: 0x30, ENC: gp.AESKey(secondKeys[keyport.UsageENC]), MAC: gp.AESKey(secondKeys[keyport.UsageMAC])}
	if r, err := p.Judge("ok", answer(genuine...), other); err != nil || r.Confirmed {
		t.Errorf("judged under other keys: %+v %v", r, err)
	}
}

func TestJudgeFailsWhenTheScriptsExternalAuthenticateIsNotTheOneTheCardAnswered(t *testing.T) {
	p := payload(t)
	genuine := cardAnswers(t, p, putKeyData(p), 4)
	p.APDUs[1] = "84820300" + p.APDUs[1][8:] // the level lowered after the card ran it
	if r, err := p.Judge("ok", answer(genuine...), firstKeySet); err != nil || r.Confirmed || !strings.Contains(r.Cause, "EXTERNAL AUTHENTICATE") {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestJudgeFailsOnAnErrorSWAndRecordsIt(t *testing.T) {
	p := payload(t)
	rs := append(cardAnswers(t, p, nil, 2), "6982")
	r, err := p.Judge("ok", answer(rs...), firstKeySet)
	if err != nil || r.Confirmed || r.SW != "6982" || !strings.Contains(r.Cause, "PUT KEY") {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestJudgeFailsWhenThePutKeyAnswerCarriesOtherKCVs(t *testing.T) {
	p := payload(t)
	bad := unhex("31" + strings.Repeat("00", 9))
	if r, err := p.Judge("ok", answer(cardAnswers(t, p, bad, 4)...), firstKeySet); err != nil || r.Confirmed {
		t.Fatalf("%+v %v", r, err)
	}
	wrongKVN := append([]byte{0x32}, putKeyData(p)[1:]...)
	if r, err := p.Judge("ok", answer(cardAnswers(t, p, wrongKVN, 4)...), firstKeySet); err != nil || r.Confirmed {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestJudgeFailsWhenTheModuleRanOnlyPartOfTheScript(t *testing.T) {
	p := payload(t)
	if r, err := p.Judge("ok", answer(cardAnswers(t, p, putKeyData(p), 3)...), firstKeySet); err != nil || r.Confirmed || !strings.Contains(r.Cause, "3 of 4") {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestJudgeFailsOnAScriptStatusOtherThanOK(t *testing.T) {
	p := payload(t)
	if r, err := p.Judge("security-error", nil, firstKeySet); err != nil || r.Confirmed || r.ScriptStatus != "security-error" {
		t.Fatalf("%+v %v", r, err)
	}
}

func TestJudgeRefusesBodiesThatAreNotResponseScriptsWithoutJudging(t *testing.T) {
	p := payload(t)
	for _, body := range [][]byte{nil, {0xAF, 0x80, 0x23, 0x05, 0x90}, {0xAE, 0x80, 0x00, 0x00}, unhex("AB0880010123030190"),
		answer("9000", "9000", "9000", "9000", "9000")} {
		if _, err := p.Judge("ok", body, firstKeySet); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("body %X: %v", body, err)
		}
	}
}

func TestJudgeReadsTheRealTracesIndefiniteAnswerWithoutACount(t *testing.T) {
	// vectors/ram_http.json: AF 80 23 02 6A 88 00 00, no 80 count.
	p := payload(t)
	r, err := p.Judge("ok", unhex("AF8023026A880000"), firstKeySet)
	if err != nil || r.Confirmed || r.SW != "6A88" {
		t.Fatalf("%+v %v", r, err)
	}
}

func FuzzCheckScript(f *testing.F) {
	f.Add("8050300008AABBCCDDEEFF001100", "84D8308103AABBCC", 49, "EE72CB")
	f.Add("00A4040000", "", 0, "")
	f.Fuzz(func(t *testing.T, a, b string, kvn int, kcv string) {
		req := keyport.ScriptRequest{APDUs: []string{a, b}, Expect: keyport.Expectation{KVN: kvn,
			KCV: map[keyport.KeyUsage]string{keyport.UsageENC: kcv, keyport.UsageMAC: kcv, keyport.UsageDEK: kcv}}}
		p, err := keyport.CheckScript("89049032123451234512345678901235", testSSD, 0x30, req)
		if err != nil {
			if !errors.Is(err, keyport.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if _, err := p.Commands(); err != nil {
			t.Fatalf("accepted script does not decode: %v", err)
		}
	})
}

func FuzzJudge(f *testing.F) {
	f.Add(unhex("AF8023026A880000"))
	f.Add(unhex("AB088001012303019000"))
	f.Add(unhex("AF808001012304930590000000"))
	f.Add([]byte{0xAF, 0x80, 0x23, 0x05, 0x90})
	p, err := keyport.CheckScript("89049032123451234512345678901235", testSSD, 0x30, spScript(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := p.Judge("ok", body, firstKeySet)
		if err != nil {
			if !errors.Is(err, keyport.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if r.Confirmed && (len(r.Responses) != 4 || !bytes.HasSuffix(unhex(r.Responses[2]), []byte{0x90, 0x00})) {
			t.Fatalf("confirmed a short answer: %+v", r)
		}
	})
}
