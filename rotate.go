package keyport

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
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
// SCP03 structure (INITIALIZE UPDATE on the KVN it replaces, EXTERNAL
// AUTHENTICATE with R-MAC, one PUT KEY replacing that KVN), and besides:
// the PUT KEY is the last command and nothing else is in the script, the
// new KVN is the next one, and the expectation carries the R-MAC of the
// PUT KEY answer. The KVN replaced is currentKVN or, while a key change's
// outcome is unproven, one of the pending key sets (pendingKeys): the card
// may be on either, and only the card's answer, bearing the R-MAC its
// provider declared under those keys, confirms the rotation. For an
// ASSIGNED domain (a rotation that recovers a first key change) the
// caller passes the KVN the script replaces as currentKVN: only the
// structure is checked here, and scriptFits, which reads the domain in the
// transaction that queues the job, refuses it unless that KVN is pending.
func CheckRotateScript(eid EID, aid AID, currentKVN int, req ScriptRequest, pending ...PendingKeys) (*SecondKeyPayload, error) {
	from := req.Expect.KVN - 1
	if from != currentKVN && !hasPendingKVN(pending, from) {
		return nil, Invalid("expect.kvn", "a rotation replaces KVN %02X by the next, %02X, not %02X%s", currentKVN, currentKVN+1, req.Expect.KVN, pendingNote(pending))
	}
	p, err := CheckScript(eid, aid, from, req)
	if err != nil {
		return nil, err
	}
	if len(p.APDUs) != 3 || p.PutKey != 2 {
		return nil, invalid("apdus", "a rotation script is INITIALIZE UPDATE, EXTERNAL AUTHENTICATE and PUT KEY, nothing else")
	}
	b, err := hex.DecodeString(req.Expect.PutKeyRMAC)
	if err != nil || len(b) != 8 {
		return nil, invalid("expect.put_key_rmac", "a rotation declares the R-MAC of the card's PUT KEY answer: 8 bytes in hex (16 digits); `keyport sp script --rotate` computes it")
	}
	p.Expect.PutKeyRMAC = strings.ToUpper(req.Expect.PutKeyRMAC)
	p.Rotate = true
	return p, nil
}

// PendingKeys is a key set the card of a domain may hold although keyport
// records another: the new KVN and KCVs of a key change whose outcome is
// unproven (keyChangeUnproven), whose PUT KEY may have run on the card
// without an answer that proves it. That key change is a rotation of a
// PERSONALIZED domain or, for an ASSIGNED one, its provider's first key
// change (the second-key script, flow 7) or a rotation from one of those.
// keyport never records it on that belief: while it is pending, a
// rotation from it is accepted besides the ordinary one (CheckRotateScript;
// for an ASSIGNED domain, only from it: scriptFits), and only that
// rotation's confirmation, the card's R-MAC under the pending keys, moves
// the domain on.
type PendingKeys struct {
	KVN int                 `json:"kvn"`
	KCV map[KeyUsage]string `json:"kcv"`
	// Job is the second-key or rotation job that declared them.
	Job string `json:"job"`
}

func hasPendingKVN(pending []PendingKeys, kvn int) bool {
	for _, pk := range pending {
		if pk.KVN == kvn {
			return true
		}
	}
	return false
}

// pendingList names the pending key sets for a refusal, ": none is
// pending" when there are none.
func pendingList(pending []PendingKeys) string {
	if len(pending) == 0 {
		return ": none is pending (no second-key script's outcome is unproven), so the card holds the first keys: submit a second-key script"
	}
	return ": pending now " + pendingKVNs(pending)
}

// pendingNote is what an error about a rotation's KVN says of the pending
// key sets, "" when there are none.
func pendingNote(pending []PendingKeys) string {
	if len(pending) == 0 {
		return ""
	}
	return fmt.Sprintf(", or a pending KVN (%s: a rotation to it is unproven) by its next", pendingKVNs(pending))
}

// pendingKVNs lists the pending key sets' KVNs in hex.
func pendingKVNs(pending []PendingKeys) string {
	kvns := make([]string, len(pending))
	for i, pk := range pending {
		kvns[i] = fmt.Sprintf("%02X", pk.KVN)
	}
	return strings.Join(kvns, ", ")
}

// pendingKeys derives domain d's pending key sets from its second-key job
// history; no column holds them. Walking the jobs oldest first, a DONE job
// (a second key, a rotation or a release's proof, each confirmed by the
// card) clears them, since the KVN keyport then records is the card's; a
// job of the domain's owner whose key change is unproven adds its new KVN
// (a later one to the same KVN replaces its KCVs). Jobs of another
// provider never count: after a release the domain's next owner starts
// from the release's proof (a DONE job) and from its own jobs alone.
//
// What is left counts only as a chain of KVNs the card may be on. For a
// PERSONALIZED domain it starts at the recorded KVN: d.KVN+1, then d.KVN+2
// if a rotation from the pending d.KVN+1 was unproven too, and so on. For
// an ASSIGNED domain the recorded KVN is the first keys' (30) and the
// provider's second KVN may be any other (1..127): each unproven
// second-key script's KVN is pending (the latest script per KVN, in KVN
// order), and each of them starts such a chain of the rotations from it.
// nil for a domain in any other state (LOCKED counts as the state before
// the lock): no key change is for it.
func pendingKeys(ctx context.Context, repo Repo, d *Domain) ([]PendingKeys, error) {
	assigned := d.is(Assigned)
	if !assigned && !d.is(Personalized) {
		return nil, nil
	}
	jobs, err := domainJobs(ctx, repo, d.ID, JobSecondKey)
	if err != nil {
		return nil, err
	}
	firsts, rotations := map[int]PendingKeys{}, map[int]PendingKeys{}
	for i := range jobs {
		j := &jobs[i]
		switch {
		case j.State == JobDone:
			clear(firsts)
			clear(rotations)
		case j.ProviderID != d.OwnerID || j.SecondKey == nil || !keyChangeUnproven(j.SecondKey, j.State, j.Result):
		case j.SecondKey.Rotate:
			e := j.SecondKey.Expect
			rotations[e.KVN] = PendingKeys{KVN: e.KVN, KCV: e.KCV, Job: j.Ref}
		default:
			e := j.SecondKey.Expect
			firsts[e.KVN] = PendingKeys{KVN: e.KVN, KCV: e.KCV, Job: j.Ref}
		}
	}
	var out []PendingKeys
	seen := map[int]bool{}
	chain := func(from int) {
		for kvn := from + 1; !seen[kvn]; kvn++ {
			pk, ok := rotations[kvn]
			if !ok {
				return
			}
			seen[kvn] = true
			out = append(out, pk)
		}
	}
	if !assigned {
		// A second-key script's end after the DONE job that personalized
		// the domain cannot be: scriptFits refuses it there.
		chain(d.KVN)
		return out, nil
	}
	for _, kvn := range slices.Sorted(maps.Keys(firsts)) {
		if seen[kvn] {
			continue
		}
		seen[kvn] = true
		out = append(out, firsts[kvn])
		chain(kvn)
	}
	return out, nil
}

// rotationPending is pendingKeys for a rotation to KVN next of domain d:
// nil without reading the history when next is the ordinary one of a
// PERSONALIZED domain (d.KVN+1), which needs no pending key set. A rotation
// of an ASSIGNED domain always needs one.
func rotationPending(ctx context.Context, repo Repo, d *Domain, next int) ([]PendingKeys, error) {
	if next == d.KVN+1 && !d.is(Assigned) {
		return nil, nil
	}
	return pendingKeys(ctx, repo, d)
}

// keyChangeUnproven reports whether key change p (a second-key script or a
// rotation; never a release's proof, which replaces no key of a provider),
// ended in state with result r, left its outcome unproven: keyport sent
// the script, and heard either nothing back or an answer that neither
// proved the key change (Judge, JudgeRotation) nor shows that the card did
// not run its PUT KEY. Only a clear refusal counts as "did not change
// keys":
//   - the module reports that it could not address the domain (script
//     status unknown-application or not-a-security-domain: the SELECT of
//     the SSD failed, none of the script reached it);
//   - the card answered the PUT KEY with an error that by ISO 7816-4
//     5.1.3 leaves its non-volatile memory unchanged: SW1 64 (execution
//     error, memory unchanged) or 66 to 6F (security and checking errors:
//     6982, 6A80, 6A88…); an error answer carries no R-MAC (AmdD 6.2.5), its
//     SW is all there is;
//   - there is no PUT KEY answer and the card refused INITIALIZE UPDATE or
//     EXTERNAL AUTHENTICATE (any SW but 9000): no secure channel was open,
//     so a PUT KEY under C-MAC, had the module sent it, could not run.
//
// Everything else is unproven: no answer at all (answer-lost, a SENT job
// that expired), another script status (security-error says nothing of
// what ran), fewer answers than commands without a refusal among them (the
// module may have sent the PUT KEY and lost its answer), a PUT KEY answered
// 9000 — every answer the judgement refused for its cryptogram, R-MAC, KVN
// or KCVs, which is what an answer altered in transit looks like — or with
// a warning (62xx, 63xx) or an error that changed memory (65xx), and
// responses that do not parse. None of these status words is
// authenticated, and need not be: a pending key set only admits one more
// rotation, which only the card's own proof confirms, so a wrong
// "unproven" costs the provider a script that fails on the card, and a
// forged refusal leaves the domain as a lost answer left it before
// pending key sets existed.
//
// A second-key script whose answer Judge did prove up to the PUT KEY (its
// R-MACs verified, the PUT KEY answered 9000 with the declared KVN and
// KCVs) and whose SET STATUS the card then refused did change the keys,
// provably. It still counts as unproven, not as done: keyport records a
// KVN only on the card's proof of the whole script, the domain's state
// included (ASSIGNED → PERSONALIZED needs the SET STATUS the card refused),
// and a pending key set is exactly what the case needs: it admits one
// rotation from the new KVN, whose confirmation by the card personalizes
// the domain, and nothing else.
func keyChangeUnproven(p *SecondKeyPayload, state JobState, r *ScriptResult) bool {
	if p.Verify || state != JobFailed && state != JobExpired || r == nil {
		return false // a release's proof, not ended unconfirmed, or never sent
	}
	switch r.ScriptStatus {
	case "", "answer-lost":
		// Sent (the session is recorded) and never answered.
		return true
	case "ok":
	case "unknown-application", "not-a-security-domain":
		return false
	default:
		return true
	}
	var resps []gp.Response
	for _, s := range r.Responses {
		b, err := hex.DecodeString(s)
		if err != nil {
			return true
		}
		x, err := gp.ParseResponse(b)
		if err != nil {
			return true
		}
		resps = append(resps, x)
	}
	if p.PutKey >= 0 && p.PutKey < len(resps) {
		sw1 := byte(resps[p.PutKey].SW >> 8)
		return !(sw1 == 0x64 || sw1 >= 0x66 && sw1 <= 0x6F)
	}
	for i, x := range resps {
		if i < p.PutKey && x.SW != gp.SWOK {
			return false
		}
	}
	return true
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
	d, ok := initUpdateAnswer(cmds, resps)
	if !ok || !d.HasSequenceCounter {
		return nil
	}
	n := int(d.SequenceCounter)
	return &n
}

// initUpdateAnswer is the card's answer to a script's INITIALIZE UPDATE
// (its first command), parsed; false when the script opened no session,
// the card refused it, or the answer does not parse.
func initUpdateAnswer(cmds []gp.Command, resps []gp.Response) (gp.InitUpdateResponse, bool) {
	if len(cmds) == 0 || len(resps) == 0 || cmds[0].INS != gp.INSInitializeUpdate || resps[0].SW != gp.SWOK {
		return gp.InitUpdateResponse{}, false
	}
	d, err := gp.ParseInitUpdateResponse(resps[0].Data)
	return d, err == nil
}

// ActionSecondKeyRecovered is the audit action of a rotation of an
// ASSIGNED domain that the card confirmed: the provider's first key change
// had an unproven outcome (its KVN pending), and the rotation from that KVN
// proves the card held it and moves the domain ASSIGNED → PERSONALIZED,
// the transition "second-key.confirmed" makes otherwise. A distinct action,
// so that the audit log says the SET STATUS of the second-key script may
// never have run (the card's life cycle of the SSD may still be
// SELECTABLE).
const ActionSecondKeyRecovered = "second-key.recovered"

// action names the audit events of the payload's job: "second-key.*" or
// "rotation.*".
func (p *SecondKeyPayload) action(what string) string {
	switch {
	case p.Rotate && p.Assigned && what == "confirmed":
		// The first key change, recovered by the rotation from its
		// pending KVN: the domain is personalized by this answer.
		return ActionSecondKeyRecovered
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
