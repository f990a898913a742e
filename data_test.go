package keyport_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

const dataEID = "89049032123451234512345678901235"

var secondKeySet = gp.KeySet{KVN: 0x31, ENC: gp.AESKey(secondKeys[keyport.UsageENC]), MAC: gp.AESKey(secondKeys[keyport.UsageMAC])}

// personalizedModule is a virtual module whose SSD testSSD holds the
// provider's keys (KVN 31) and is PERSONALIZED, by the provider's
// second-key script.
func personalizedModule(t *testing.T) *vcard.Card {
	t.Helper()
	card := cardlinktest.NewModule(t, dataEID, map[keyport.AID]map[keyport.KeyUsage][]byte{testSSD: firstKeys})
	run(t, card, spScript(t).APDUs)
	return card
}

// run sends the script's APDUs to the SSD and returns the answers; every
// one must be 9000.
func run(t *testing.T, card *vcard.Card, apdus []string) []string {
	t.Helper()
	card.Process(gp.Select(testSSD.Bytes()).Bytes())
	var out []string
	for i, s := range apdus {
		r := card.Process(unhex(s))
		if !bytes.HasSuffix(r, []byte{0x90, 0x00}) {
			t.Fatalf("APDU %d %s answered %X", i+1, s[:8], r)
		}
		out = append(out, hexs(r))
	}
	card.Reset()
	return out
}

func hexs(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

func dataScript(t testing.TB, counter int, cmds ...gp.Command) keyport.DataScriptRequest {
	t.Helper()
	req, err := keyport.DataScript(testSSD, 0x31, counter, secondKeys, cmds)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestDataScriptsStoreAndReadObjectsThatOnlyTheProvidersKeysDecrypt(t *testing.T) {
	card := personalizedModule(t)
	secret := []byte("account 4711, balance 1234.56, card bank")
	cmds, err := gp.StoreDataObjects([]gp.DGI{{Tag: 0x0101, Data: secret}})
	if err != nil {
		t.Fatal(err)
	}
	put := dataScript(t, 0, cmds...)
	p, err := keyport.CheckDataScript(dataEID, testSSD, 0x31, put)
	if err != nil {
		t.Fatal(err)
	}
	answers := run(t, card, p.APDUs)
	res, err := p.JudgeData("ok", answer(answers...))
	if err != nil || !res.Confirmed || res.SequenceCounter == nil || *res.SequenceCounter != 1 {
		t.Fatalf("put judged %+v %v", res, err)
	}
	get := dataScript(t, 1, gp.GetDataObject(0x0101))
	if strings.Contains(strings.Join(put.APDUs, ""), hexs(secret[:16])) {
		t.Fatal("the put script carries the data in clear")
	}
	p, err = keyport.CheckDataScript(dataEID, testSSD, 0x31, get)
	if err != nil {
		t.Fatal(err)
	}
	res, err = p.JudgeData("ok", answer(run(t, card, p.APDUs)...))
	if err != nil || !res.Confirmed {
		t.Fatalf("get judged %+v %v", res, err)
	}
	if strings.Contains(strings.Join(res.Responses, ""), hexs(secret[:16])) {
		t.Fatal("the card's answer carries the data in clear")
	}
	got, err := keyport.ReadDataAnswers(testSSD, secondKeySet, get, res)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := gp.ParseDataObject(0x0101, got[0].Data); err != nil || !bytes.Equal(v, secret) {
		t.Fatalf("read %q %v", v, err)
	}
	firstSet := gp.KeySet{KVN: 0x31, ENC: gp.AESKey(firstKeys[keyport.UsageENC]), MAC: gp.AESKey(firstKeys[keyport.UsageMAC])}
	if _, err := keyport.ReadDataAnswers(testSSD, firstSet, get, res); err == nil {
		t.Fatal("other keys read the answer")
	}
	// One bit of the third byte flipped: setting it to a fixed value left
	// it unchanged whenever the card's random-keyed answer had that value
	// there (1 run in 256).
	altered := unhex(res.Responses[2])
	altered[2] ^= 0x01
	res.Responses[2] = hexs(altered)
	if _, err := keyport.ReadDataAnswers(testSSD, secondKeySet, get, res); err == nil {
		t.Fatal("an altered answer was read")
	}
}

func TestCheckDataScriptRefusesWhatIsNotALevel33DataSession(t *testing.T) {
	good := dataScript(t, 0, gp.GetDataObject(0x0101))
	mod := func(f func(r *keyport.DataScriptRequest)) keyport.DataScriptRequest {
		r := keyport.DataScriptRequest{APDUs: append([]string(nil), good.APDUs...)}
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name, field string
		req         keyport.DataScriptRequest
	}{
		{"nothing", "apdus", mod(func(r *keyport.DataScriptRequest) { r.APDUs = nil })},
		{"no command after the handshake", "apdus", mod(func(r *keyport.DataScriptRequest) { r.APDUs = r.APDUs[:2] })},
		{"not hex", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "zz" })},
		{"no INITIALIZE UPDATE", "apdus[0]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[0] = r.APDUs[2] })},
		{"another KVN", "apdus[0]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[0] = "80503000" + r.APDUs[0][8:] })},
		{"level 13", "apdus[1]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[1] = "84821300" + r.APDUs[1][8:] })},
		{"level 03", "apdus[1]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[1] = "84820300" + r.APDUs[1][8:] })},
		{"level 00", "apdus[1]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[1] = "84820000" + r.APDUs[1][8:] })},
		{"EXTERNAL AUTHENTICATE missing", "apdus[1]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[1] = r.APDUs[2] })},
		{"GET DATA in clear", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "80CA010100" })},
		{"GET DATA of the CPLC", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84CA9F7F08AABBCCDDEEFF001100" })},
		{"PUT KEY", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84D8318108AABBCCDDEEFF0011" })},
		{"SET STATUS", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84F0400F08AABBCCDDEEFF0011" })},
		{"INSTALL", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84E6200008AABBCCDDEEFF0011" })},
		{"DELETE", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84E4000008AABBCCDDEEFF0011" })},
		{"SELECT", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "00A4040007F0010203040501" })},
		{"STORE DATA of BER-TLV", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84E2900008AABBCCDDEEFF0011" })},
		{"STORE DATA encrypted", "apdus[2]", mod(func(r *keyport.DataScriptRequest) { r.APDUs[2] = "84E2E80008AABBCCDDEEFF0011" })},
		{"65 APDUs", "apdus", mod(func(r *keyport.DataScriptRequest) {
			for len(r.APDUs) < 65 {
				r.APDUs = append(r.APDUs, r.APDUs[2])
			}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := keyport.CheckDataScript(dataEID, testSSD, 0x31, tc.req)
			var inv *keyport.InvalidError
			if !errors.As(err, &inv) || inv.Field != tc.field {
				t.Fatalf("error %v, want an invalid %q", err, tc.field)
			}
		})
	}
	if _, err := keyport.CheckDataScript(dataEID, testSSD, 0x31, good); err != nil {
		t.Fatalf("the good script: %v", err)
	}
}

func TestJudgeDataFailsOnAnErrorSWOrAShortAnswerAndKeepsWhatCame(t *testing.T) {
	p, err := keyport.CheckDataScript(dataEID, testSSD, 0x31, dataScript(t, 0, gp.GetDataObject(0x0101)))
	if err != nil {
		t.Fatal(err)
	}
	for name, rs := range map[string][]string{"6982": {"9000", "9000", "6982"}, "short": {"9000", "9000"}} {
		r, err := p.JudgeData("ok", answer(rs...))
		if err != nil || r.Confirmed || r.Cause == "" || len(r.Responses) != len(rs) {
			t.Errorf("%s: %+v %v", name, r, err)
		}
	}
	if r, err := p.JudgeData("ok", answer("9000", "9000", "9000", "9000")); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("4 answers to 3: %+v %v", r, err)
	}
	if r, _ := p.JudgeData("error", nil); r.Confirmed {
		t.Error("script status error confirmed")
	}
}

func TestDataReadSessionReadsTheObjectsInTwoRelayStepsAndRefusesAForgedAnswer(t *testing.T) {
	card := personalizedModule(t)
	objs := []gp.DGI{{Tag: 0x0101, Data: bytes.Repeat([]byte{0x11}, gp.MaxDataObject)}, {Tag: 0x0102, Data: []byte("tail")}}
	cmds, _ := gp.StoreDataObjects(objs)
	run(t, card, dataScript(t, 0, cmds...).APDUs)

	s, err := keyport.NewDataReadSession(secondKeySet, testSSD, []uint16{0x0101, 0x0102})
	if err != nil {
		t.Fatal(err)
	}
	card.Process(gp.Select(testSSD.Bytes()).Bytes())
	var resps []gp.Response
	steps := 0
	for {
		next, done, err := s.Next(resps)
		if err != nil {
			t.Fatal(err)
		}
		if done {
			break
		}
		steps++
		resps = nil
		for _, c := range next {
			r, _ := gp.ParseResponse(card.Process(c.Bytes()))
			resps = append(resps, r)
		}
	}
	if want := append(bytes.Repeat([]byte{0x11}, gp.MaxDataObject), "tail"...); steps != 2 || !bytes.Equal(s.Data(), want) {
		t.Fatalf("%d steps, read %X", steps, s.Data())
	}

	// A relay that answers for the card without its keys gets nothing.
	s, _ = keyport.NewDataReadSession(secondKeySet, testSSD, []uint16{0x0101})
	s.Next(nil)
	forged := gp.InitUpdateResponse{KDD: make([]byte, 10), KVN: 0x31, SCP: 0x03, I: 0x70, CardChallenge: make([]byte, 8),
		CardCryptogram: make([]byte, 8), SequenceCounter: 2, HasSequenceCounter: true}
	if _, _, err := s.Next([]gp.Response{{Data: forged.Bytes(), SW: gp.SWOK}}); !errors.Is(err, gp.ErrCryptogram) {
		t.Fatalf("forged INITIALIZE UPDATE answer: %v", err)
	}
}

func TestParseRelayMessagesRefuseWhatIsOutOfBounds(t *testing.T) {
	if _, rs, err := keyport.ParseRelayRequest([]byte(`{"session":"rs_a","responses":["9000","AABB6A88"]}`)); err != nil || len(rs) != 2 || rs[1].SW != 0x6A88 {
		t.Fatalf("%v %v", rs, err)
	}
	for _, b := range []string{
		`{"session":"rs_a","responses":["90"]}`,
		`{"session":"rs_a","responses":["zz00"]}`,
		`{"session":"rs_a","responses":[],"apdus":[]}`,
		`{"session":"rs_a"} {}`,
		`{"session":"` + strings.Repeat("a", 65) + `"}`,
		`{"responses":["` + strings.Repeat("00", 259) + `"]}`,
		`{"responses":[` + strings.Repeat(`"9000",`, 16) + `"9000"]}`,
		"\xff",
	} {
		if _, _, err := keyport.ParseRelayRequest([]byte(b)); err == nil {
			t.Errorf("request %.60q accepted", b)
		}
	}
	if rep, cmds, err := keyport.ParseRelayReply([]byte(`{"session":"rs_a","apdus":["8050310008AABBCCDDEEFF0011"]}`)); err != nil || len(cmds) != 1 || rep.Session != "rs_a" {
		t.Fatalf("%v %v %v", rep, cmds, err)
	}
	for _, b := range []string{
		`{"apdus":["80CA"]}`,
		`{"done":true,"apdus":["80CA010100"]}`,
		`{"apdus":["80E2000000010000"]}`, // an extended C-APDU
		`{"apdus":[],"extra":1}`,
	} {
		if _, _, err := keyport.ParseRelayReply([]byte(b)); err == nil {
			t.Errorf("reply %.60q accepted", b)
		}
	}
}

func FuzzCheckDataScript(f *testing.F) {
	good := dataScript(f, 0, gp.GetDataObject(0x0101))
	f.Add(good.APDUs[0], good.APDUs[1], good.APDUs[2])
	f.Add("8050310008AABBCCDDEEFF0011", "8482130010AABBCCDDEEFF00112233445566778899", "84E2880008AABBCCDDEEFF0011")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		p, err := keyport.CheckDataScript(dataEID, testSSD, 0x31, keyport.DataScriptRequest{APDUs: []string{a, b, c}})
		if err != nil {
			if !errors.Is(err, keyport.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		cmds, err := p.Commands()
		if err != nil || len(cmds) != 3 || cmds[1].P1 != 0x33 || cmds[2].CLA&0x04 == 0 {
			t.Fatalf("accepted %v: %v", cmds, err)
		}
	})
}

func FuzzParseRelayRequest(f *testing.F) {
	f.Add([]byte(`{"session":"rs_a","responses":["9000","AABB6A88"]}`))
	f.Add([]byte(`{"session":"","responses":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		req, rs, err := keyport.ParseRelayRequest(b)
		if err != nil {
			return
		}
		if len(rs) != len(req.Responses) || len(rs) > keyport.MaxRelayAPDUs {
			t.Fatalf("%d responses of %d", len(rs), len(req.Responses))
		}
	})
}

func FuzzParseRelayReply(f *testing.F) {
	f.Add([]byte(`{"session":"rs_a","apdus":["8050310008AABBCCDDEEFF0011"]}`))
	f.Add([]byte(`{"session":"rs_a","done":true,"result":"read 4 bytes"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, cmds, err := keyport.ParseRelayReply(b)
		if err != nil {
			return
		}
		if rep.Done && len(cmds) > 0 || len(cmds) > keyport.MaxRelayAPDUs {
			t.Fatalf("%+v %d commands", rep, len(cmds))
		}
		for _, c := range cmds {
			if c.Extended() {
				t.Fatalf("extended %X", c.Bytes())
			}
		}
	})
}
