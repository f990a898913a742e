package keyport

import (
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/keyport/keyport/gp"
)

// RotateScript builds a provider's rotation script offline: the domain is
// PERSONALIZED under the provider's key set kvn, and the script replaces it
// by kvn+1 (flow 7 again, any KVN to the next). As SecondKeyScript, it opens
// the precomputed SCP03 session on counter+1 (i=70, level 13: C-MAC + C-DEC
// + R-MAC) with the current keys and sends PUT KEY P1=kvn with the next keys
// encrypted under the current Key-DEK; no SET STATUS, the domain is already
// PERSONALIZED. Since keyport does not hold the provider's keys, the
// expectation carries, besides the next KVN and KCVs, the R-MAC the card's
// PUT KEY answer must bear (gp.HostSession.ExpectedRMAC): only a card holding
// the current keys can produce it, so keyport confirms the rotation by
// comparison. It returns the request body of POST
// /api/v1/domains/{eid}/{aid}/scripts.
func RotateScript(aid AID, kvn, counter int, current, next map[KeyUsage][]byte) (ScriptRequest, error) {
	if kvn < 1 || kvn >= 0x7F {
		return ScriptRequest{}, Invalid("kvn", "the current KVN %d must lie in 1..126 so that it has a next", kvn)
	}
	ks, err := newKeyScript(aid, kvn, counter, kvn+1, current, next)
	if err != nil {
		return ScriptRequest{}, err
	}
	rmac, err := ks.hs.ExpectedRMAC(ks.putAnswer, gp.SWOK)
	if err != nil {
		return ScriptRequest{}, err
	}
	return ScriptRequest{Rotate: true, APDUs: apduHex(ks.cmds), Expect: Expectation{KVN: kvn + 1, KCV: ks.kcv, SequenceCounter: &counter,
		PutKeyRMAC: strings.ToUpper(hex.EncodeToString(rmac))}}, nil
}

// CheckRotateScript validates a rotation script for a PERSONALIZED domain
// whose current key set is currentKVN (CheckScript's sibling): the same
// SCP03 structure (INITIALIZE UPDATE on currentKVN, EXTERNAL AUTHENTICATE
// with R-MAC, one PUT KEY replacing currentKVN), and besides: the PUT KEY
// is the last command and nothing else is in the script, the new KVN is
// the next one (currentKVN+1), and the expectation carries the R-MAC of
// the PUT KEY answer.
func CheckRotateScript(eid EID, aid AID, currentKVN int, req ScriptRequest) (*SecondKeyPayload, error) {
	p, err := CheckScript(eid, aid, currentKVN, req)
	if err != nil {
		return nil, err
	}
	if len(p.APDUs) != 3 || p.PutKey != 2 {
		return nil, invalid("apdus", "a rotation script is INITIALIZE UPDATE, EXTERNAL AUTHENTICATE and PUT KEY, nothing else")
	}
	if p.Expect.KVN != currentKVN+1 {
		return nil, Invalid("expect.kvn", "a rotation replaces KVN %02X by the next, %02X, not %02X", currentKVN, currentKVN+1, p.Expect.KVN)
	}
	b, err := hex.DecodeString(req.Expect.PutKeyRMAC)
	if err != nil || len(b) != 8 {
		return nil, invalid("expect.put_key_rmac", "a rotation declares the R-MAC of the card's PUT KEY answer: 8 bytes in hex (16 digits); `keyport sp script --rotate` computes it")
	}
	p.Expect.PutKeyRMAC = strings.ToUpper(req.Expect.PutKeyRMAC)
	p.Rotate = true
	return p, nil
}

// JudgeRotation decides whether a module's answer to a rotation script
// proves the key replacement, without the domain's keys: every command ran
// with status 9000, and the PUT KEY answer is the declared KVN and KCVs
// followed by the declared R-MAC, which only the card holding the current
// keys could compute for this session. The sequence counter the card
// reported in its INITIALIZE UPDATE answer is returned as the card sent it
// (keyport cannot check the card cryptogram without the keys; the provider,
// who can, has the answer in the result). A body that does not parse is an
// *InvalidError and judges nothing.
func (p *SecondKeyPayload) JudgeRotation(status string, body []byte) (ScriptResult, error) {
	r := ScriptResult{ScriptStatus: status}
	if status != "ok" {
		return notRun(status, body), nil
	}
	resps, cmds, err := readAnswer(p.APDUs, body, &r)
	if err != nil {
		return r, err
	}
	r.SequenceCounter = LearnCounter(cmds, resps)
	if !allRan(&r, cmds, resps) {
		return r, nil
	}
	data := resps[p.PutKey].Data
	want, _ := hex.DecodeString(p.Expect.PutKeyRMAC)
	if len(data) < len(want) || subtle.ConstantTimeCompare(data[len(data)-len(want):], want) != 1 {
		r.Cause = "the PUT KEY answer does not carry the declared R-MAC: it is not the card's answer to this session"
		return r, nil
	}
	if r.Cause = p.Expect.refutedBy(data[:len(data)-len(want)]); r.Cause != "" {
		return r, nil
	}
	r.Confirmed = true
	return r, nil
}

// LearnCounter returns the SCP03 sequence counter a card reported in its
// answer to a script's INITIALIZE UPDATE (AmdD 6.2.2.1: the card's counter
// after it incremented it), nil when the script opened no session, the card
// refused it, or the answer carries no counter. keyport learns the counter
// from every such answer it sees, so that the next precomputed script is
// built on the card's value.
func LearnCounter(cmds []gp.Command, resps []gp.Response) *int {
	if len(cmds) == 0 || len(resps) == 0 || cmds[0].INS != gp.INSInitializeUpdate || resps[0].SW != gp.SWOK {
		return nil
	}
	d, err := gp.ParseInitUpdateResponse(resps[0].Data)
	if err != nil || !d.HasSequenceCounter {
		return nil
	}
	n := int(d.SequenceCounter)
	return &n
}

// action names the audit events of the payload's job: "second-key.*" or
// "rotation.*".
func (p *SecondKeyPayload) action(what string) string {
	switch {
	case p.Rotate:
		return "rotation." + what
	case p.Verify && what == "confirmed":
		return "release.confirmed"
	case p.Verify:
		return "release.verify-" + what
	}
	return "second-key." + what
}

// notRun is the result of a script the module reports it did not run
// (X-Admin-Script-Status other than ok): with the module's R-APDU when the
// answer carries one, e.g. the SW of the SELECT a locked SSD refuses.
func notRun(status string, body []byte) ScriptResult {
	r := ScriptResult{ScriptStatus: status, Cause: fmt.Sprintf("the module reported script status %q", status)}
	rs, err := gp.ParseResponseScript(body)
	if err != nil || len(rs.Responses) == 0 {
		return r
	}
	for _, x := range rs.Responses {
		r.Responses = append(r.Responses, strings.ToUpper(hex.EncodeToString(x.Bytes())))
	}
	last := rs.Responses[len(rs.Responses)-1]
	r.SW = fmt.Sprintf("%04X", uint16(last.SW))
	r.Cause += fmt.Sprintf(": the module answered %s to the SELECT of the domain", last.SW)
	return r
}
