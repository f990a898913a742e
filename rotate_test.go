package keyport_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

var thirdKeys = map[keyport.KeyUsage][]byte{
	keyport.UsageENC: unhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"),
	keyport.UsageMAC: unhex("E0E1E2E3E4E5E6E7E8E9EAEBECEDEEEF"),
	keyport.UsageDEK: unhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF")}

const testEID = keyport.EID("89049032123451234512345678901235")

// rotation is a rotation script from KVN 31 (secondKeys) to 32 on counter 4.
func rotation(t testing.TB) keyport.ScriptRequest {
	t.Helper()
	req, err := keyport.RotateScript(testSSD, 0x31, 4, secondKeys, thirdKeys)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// playCard runs the script on gp's card side holding keys (KVN 31,
// counter 4 before the session) and returns the response script; answer
// replaces the PUT KEY answer's clear data when not nil.
func playCard(t testing.TB, req keyport.ScriptRequest, keys map[keyport.KeyUsage][]byte, answer []byte) []byte {
	t.Helper()
	c, err := gp.NewCardSession(gp.CardConfig{Keys: gp.KeySet{KVN: 0x31, ENC: gp.AESKey(keys[keyport.UsageENC]), MAC: gp.AESKey(keys[keyport.UsageMAC])},
		KDD: make([]byte, 10), I: 0x70, AID: testSSD.Bytes()})
	if err != nil {
		t.Fatal(err)
	}
	var out []gp.Response
	for i, s := range req.APDUs {
		cmd, err := gp.ParseCommand(unhex(s))
		if err != nil {
			t.Fatal(err)
		}
		var r gp.Response
		switch i {
		case 0:
			r, _ = c.InitializeUpdate(cmd, 5)
		case 1:
			r, _ = c.ExternalAuthenticate(cmd)
		default:
			if _, err := c.Unwrap(cmd); err != nil {
				r = gp.Response{SW: gp.SWSecurityNotSatisfied}
				break
			}
			data := answer
			if data == nil {
				data = []byte{0x32}
				for _, u := range keyport.Usages {
					kcv, _ := gp.KCV(thirdKeys[u])
					data = append(data, kcv...)
				}
			}
			r, _ = c.Wrap(gp.Response{Data: data, SW: gp.SWOK})
		}
		out = append(out, r)
		if r.SW != gp.SWOK {
			break
		}
	}
	return gp.ResponseScript{Responses: out}.Bytes()
}

func TestRotateScriptReplacesTheCurrentKVNByTheNextAndDeclaresThePutKeyRMAC(t *testing.T) {
	req := rotation(t)
	if !req.Rotate || len(req.APDUs) != 3 || req.Expect.KVN != 0x32 || len(req.Expect.PutKeyRMAC) != 16 ||
		req.Expect.SequenceCounter == nil || *req.Expect.SequenceCounter != 4 {
		t.Fatalf("rotation %+v", req)
	}
	for i, prefix := range []string{"80503100", "84821300", "84D83181"} {
		if !strings.HasPrefix(req.APDUs[i], prefix) {
			t.Errorf("APDU %d %s, want %s…", i, req.APDUs[i][:8], prefix)
		}
	}
	p, err := keyport.CheckRotateScript(testEID, testSSD, 0x31, req)
	if err != nil || !p.Rotate || p.DomainState() != keyport.Personalized {
		t.Fatalf("check: %+v %v", p, err)
	}
	res, err := p.JudgeRotation("ok", playCard(t, req, secondKeys, nil))
	if err != nil || !res.Confirmed || res.SequenceCounter == nil || *res.SequenceCounter != 5 {
		t.Fatalf("judge: %+v %v", res, err)
	}
}

func TestJudgeRotationRefusesAnAnswerWithoutTheDeclaredRMACOrWithOtherKCVs(t *testing.T) {
	req := rotation(t)
	p, err := keyport.CheckRotateScript(testEID, testSSD, 0x31, req)
	if err != nil {
		t.Fatal(err)
	}
	// A forger without the keys answers the expected KVN and KCVs with a
	// made-up R-MAC.
	body := playCard(t, req, secondKeys, nil)
	rs, _ := gp.ParseResponseScript(body)
	rs.Responses[2].Data[len(rs.Responses[2].Data)-1] ^= 1
	if res, err := p.JudgeRotation("ok", rs.Bytes()); err != nil || res.Confirmed || !strings.Contains(res.Cause, "R-MAC") {
		t.Fatalf("forged R-MAC: %+v %v", res, err)
	}
	// The card answers other KCVs (with its own, valid R-MAC): not the
	// declared ones.
	if res, _ := p.JudgeRotation("ok", playCard(t, req, secondKeys, []byte{0x32, 1, 2, 3, 4, 5, 6, 7, 8, 9})); res.Confirmed {
		t.Fatalf("other KCVs confirmed: %+v", res)
	}
	// A card with other keys fails the handshake: the SW is reported.
	res, _ := p.JudgeRotation("ok", playCard(t, req, thirdKeys, nil))
	if res.Confirmed || res.SW == "" {
		t.Fatalf("wrong keys: %+v", res)
	}
	if res, _ := p.JudgeRotation("security-error", nil); res.Confirmed || res.Cause == "" {
		t.Fatalf("script status: %+v", res)
	}
	if _, err := p.JudgeRotation("ok", []byte{0xAF}); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("garbage body: %v", err)
	}
}

func TestCheckRotateScriptRefusesWrongKVNsMissingRMACAndExtraCommands(t *testing.T) {
	good := rotation(t)
	cases := map[string]func(r *keyport.ScriptRequest){
		"current KVN":    func(r *keyport.ScriptRequest) {},
		"next KVN":       func(r *keyport.ScriptRequest) { r.Expect.KVN = 0x35 },
		"no R-MAC":       func(r *keyport.ScriptRequest) { r.Expect.PutKeyRMAC = "" },
		"short R-MAC":    func(r *keyport.ScriptRequest) { r.Expect.PutKeyRMAC = "0102" },
		"extra command":  func(r *keyport.ScriptRequest) { r.APDUs = append(r.APDUs, "80CA00C100") },
		"no PUT KEY":     func(r *keyport.ScriptRequest) { r.APDUs = r.APDUs[:2] },
		"bad counter":    func(r *keyport.ScriptRequest) { n := -1; r.Expect.SequenceCounter = &n },
		"select instead": func(r *keyport.ScriptRequest) { r.APDUs[2] = "00A4040007F0010203040501" },
	}
	for name, mutate := range cases {
		r := good
		r.APDUs = append([]string(nil), good.APDUs...)
		r.Expect.KCV = good.Expect.KCV
		mutate(&r)
		kvn := 0x31
		if name == "current KVN" {
			kvn = 0x32 // the domain is at another KVN than the script
		}
		if _, err := keyport.CheckRotateScript(testEID, testSSD, kvn, r); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	if _, err := keyport.RotateScript(testSSD, 0x7F, 0, secondKeys, thirdKeys); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("KVN 7F has no next: %v", err)
	}
	if _, err := keyport.RotateScript(testSSD, 0x31, 0, secondKeys, map[keyport.KeyUsage][]byte{}); !errors.Is(err, keyport.ErrInvalid) {
		t.Errorf("no next keys: %v", err)
	}
}

func TestLearnCounterReadsTheCountersOfInitializeUpdateAnswersOnly(t *testing.T) {
	req := rotation(t)
	rs, _ := gp.ParseResponseScript(playCard(t, req, secondKeys, nil))
	var cmds []gp.Command
	for _, s := range req.APDUs {
		c, _ := gp.ParseCommand(unhex(s))
		cmds = append(cmds, c)
	}
	if n := keyport.LearnCounter(cmds, rs.Responses); n == nil || *n != 5 {
		t.Fatalf("counter %v", n)
	}
	if n := keyport.LearnCounter(cmds[1:], rs.Responses[1:]); n != nil {
		t.Fatalf("counter from a script without INITIALIZE UPDATE: %d", *n)
	}
	if n := keyport.LearnCounter(cmds, []gp.Response{{SW: 0x6A88}}); n != nil {
		t.Fatalf("counter from a refusal: %d", *n)
	}
}

func FuzzCheckRotateScript(f *testing.F) {
	good := rotation(f)
	f.Add(good.APDUs[0], good.APDUs[1], good.APDUs[2], 0x32, good.Expect.PutKeyRMAC)
	f.Add("8050310008AABBCCDDEEFF001100", "84821300100102030405060708090A0B0C0D0E0F10", "84D8318103AABBCC", 0x32, "0102030405060708")
	f.Fuzz(func(t *testing.T, a, b, c string, kvn int, rmac string) {
		req := keyport.ScriptRequest{Rotate: true, APDUs: []string{a, b, c}, Expect: keyport.Expectation{KVN: kvn, PutKeyRMAC: rmac,
			KCV: good.Expect.KCV}}
		p, err := keyport.CheckRotateScript(testEID, testSSD, 0x31, req)
		if err != nil {
			if !errors.Is(err, keyport.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if !p.Rotate || p.Expect.KVN != 0x32 || len(p.Expect.PutKeyRMAC) != 16 || p.PutKey != 2 {
			t.Fatalf("accepted %+v", p)
		}
	})
}

func FuzzJudgeRotation(f *testing.F) {
	req := rotation(f)
	p, err := keyport.CheckRotateScript(testEID, testSSD, 0x31, req)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(playCard(f, req, secondKeys, nil))
	f.Add(unhex("AF8023026A880000"))
	f.Add([]byte{0xAF, 0x80, 0x23, 0x05, 0x90})
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := p.JudgeRotation("ok", body)
		if err != nil {
			if !errors.Is(err, keyport.ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if r.Confirmed && len(r.Responses) != 3 {
			t.Fatalf("confirmed a short answer: %+v", r)
		}
	})
}
