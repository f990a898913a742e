package keyport_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// pendingWorld is one provider's PERSONALIZED domain (KVN 31, secondKeys)
// on a virtual module, whose admin sessions the tests run through the
// service's use cases, the scripts on the virtual card: every R-MAC and
// counter is the card's own.
type pendingWorld struct {
	*fixture.World
	prov keyport.Principal
	eid  keyport.EID
	aid  keyport.AID
	card *vcard.Card
}

func newPendingWorld(t *testing.T) *pendingWorld {
	t.Helper()
	return newPendingWorldOn(t, storetest.Open(t, storetest.SQLitePath(t)))
}

func newPendingWorldOn(t *testing.T, st *store.Store) *pendingWorld {
	t.Helper()
	w := newAssignedWorldOn(t, st)
	j := w.submit(t, w.secondKey(t))
	w.session(t, nil)
	w.wantJob(t, j.Ref, keyport.JobDone)
	if d := w.domain(t); d.State != keyport.Personalized || d.KVN != 0x31 {
		t.Fatalf("domain %s KVN %02X", d.State, d.KVN)
	}
	return w
}

// newAssignedWorldOn is the pendingWorld's domain just claimed: ASSIGNED
// on the first keys (KVN 30), the virtual card holding them.
func newAssignedWorldOn(t *testing.T, st *store.Store) *pendingWorld {
	t.Helper()
	fw := fixture.New(t, st, 1, 1)
	w := &pendingWorld{World: fw, eid: fixture.EID(t, 0), aid: fixture.AID(1)}
	var wk string
	w.prov, _, wk = fw.Provider(t, "Pending Bank", fixture.RSAKeys()[0])
	if _, _, err := fw.Svc.Claim(ctx, w.prov, keyport.ClaimRequest{EID: w.eid, AID: w.aid, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	w.card = cardlinktest.NewModule(t, w.eid, map[keyport.AID]map[keyport.KeyUsage][]byte{w.aid: fw.Keys[w.eid][w.aid]})
	return w
}

// keysOf is a key set whose bytes all derive from b.
func keysOf(b byte) map[keyport.KeyUsage][]byte {
	out := map[keyport.KeyUsage][]byte{}
	for i, u := range keyport.Usages {
		k := make([]byte, 16)
		for j := range k {
			k[j] = b + byte(16*i+j)
		}
		out[u] = k
	}
	return out
}

func (w *pendingWorld) domain(t *testing.T) *keyport.Domain {
	t.Helper()
	d, err := w.Svc.GetDomain(ctx, w.prov, w.eid, w.aid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (w *pendingWorld) submit(t *testing.T, req keyport.ScriptRequest) *keyport.Job {
	t.Helper()
	j, err := w.Svc.SubmitScript(ctx, w.prov, w.eid, w.aid, req)
	if err != nil {
		t.Fatalf("submit (expect KVN %02X): %v", req.Expect.KVN, err)
	}
	return j
}

// rotation is the provider's rotation from kvn (keys cur) to kvn+1 (keys
// next) on the counter keyport reports.
func (w *pendingWorld) rotation(t *testing.T, kvn int, cur, next map[keyport.KeyUsage][]byte) keyport.ScriptRequest {
	t.Helper()
	req, err := keyport.RotateScript(w.aid, kvn, w.domain(t).SeqCounter, cur, next)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func (w *pendingWorld) wantJob(t *testing.T, ref string, state keyport.JobState) *keyport.Job {
	t.Helper()
	j, err := w.Svc.GetJob(ctx, w.prov, ref)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != state {
		t.Fatalf("job %s (%s) is %s, want %s: %q %+v", j.Ref, j.Kind, j.State, state, j.LastError, j.Result)
	}
	return j
}

// play runs a delivery on the card as the handset agent does: SELECT of
// the targeted application, then the script's commands (its first n; all
// when n < 0) until the first error status, and returns the response
// script.
func (w *pendingWorld) play(t *testing.T, del *keyport.Delivery, n int) []byte {
	t.Helper()
	cs, err := gp.ParseCommandScript(del.Script)
	if err != nil {
		t.Fatal(err)
	}
	target, err := gp.ParseTargetedApplication(del.Target)
	if err != nil {
		t.Fatal(err)
	}
	defer w.card.Reset()
	if r, _ := gp.ParseResponse(w.card.Process(gp.Select(target).Bytes())); r.SW != gp.SWOK {
		t.Fatalf("SELECT %X: %s", target, r.SW)
	}
	out := gp.ResponseScript{HasExecuted: true}
	for i, c := range cs.Commands {
		if i == n {
			break
		}
		r, err := gp.ParseResponse(w.card.Process(c.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		out.Responses = append(out.Responses, r)
		out.Executed++
		if r.SW != gp.SWOK && !r.SW.Warning() {
			break
		}
	}
	return out.Bytes()
}

// session runs one admin session to its end: each script goes to the card
// and the card's answer to keyport, through alter when it is not nil (a
// change in transit). It returns the refs of the jobs in the order they
// went out.
func (w *pendingWorld) session(t *testing.T, alter func(j *keyport.Job, body []byte) []byte) []string {
	t.Helper()
	m, err := w.Svc.LookupAdminModule(ctx, string(w.eid))
	if err != nil {
		t.Fatal(err)
	}
	a, del, err := w.Svc.StartAdminSession(ctx, m, false, gp.ScriptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var refs []string
	for del != nil {
		refs = append(refs, del.Job.Ref)
		body := w.play(t, del, -1)
		if alter != nil {
			body = alter(del.Job, body)
		}
		_, ended, err := w.Svc.AnswerScript(ctx, a, del.Job.Ref, "ok", body)
		if err != nil {
			t.Fatal(err)
		}
		if ended {
			break
		}
		if del, err = w.Svc.NextScript(ctx, a, gp.ScriptOptions{}, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Svc.CloseAdminSession(ctx, a); err != nil {
		t.Fatal(err)
	}
	return refs
}

// lostSession runs an admin session whose first script runs on the card
// (its first n commands; all when n < 0) and whose answer never comes
// back: the session breaks, and its lease is released as its expiry would.
func (w *pendingWorld) lostSession(t *testing.T, ref string, n int) {
	t.Helper()
	m, err := w.Svc.LookupAdminModule(ctx, string(w.eid))
	if err != nil {
		t.Fatal(err)
	}
	a, del, err := w.Svc.StartAdminSession(ctx, m, false, gp.ScriptOptions{})
	if err != nil || del == nil || del.Job.Ref != ref {
		t.Fatalf("session: %+v %v", del, err)
	}
	w.play(t, del, n)
	if err := w.Svc.CloseAdminSession(ctx, a); err != nil {
		t.Fatal(err)
	}
}

// lostKeyChange submits req (a rotation or a second-key script), runs its
// first n commands on the card (all when n < 0) in a session that breaks,
// and runs the module's next session: the job ends FAILED "answer lost",
// and keyport's counter probe goes out and is answered. It returns the job
// and the probe.
func (w *pendingWorld) lostKeyChange(t *testing.T, req keyport.ScriptRequest, n int) (*keyport.Job, *keyport.Job) {
	t.Helper()
	j := w.submit(t, req)
	w.lostSession(t, j.Ref, n)
	refs := w.session(t, nil)
	if j := w.wantJob(t, j.Ref, keyport.JobFailed); j.LastError != "answer lost" {
		t.Fatalf("key change %q", j.LastError)
	}
	if len(refs) != 1 {
		t.Fatalf("the session after the lost answer sent %d jobs, want the probe", len(refs))
	}
	probe := w.wantJob(t, refs[0], keyport.JobDone)
	if probe.Kind != keyport.JobData || probe.Data == nil || !probe.Data.Probe {
		t.Fatalf("the session sent %+v, want the counter probe", probe)
	}
	return j, probe
}

// authenticates says whether the card opens kvn with keys: a session
// keyport does not see, which moves the card's counter.
func (w *pendingWorld) authenticates(t *testing.T, kvn byte, keys map[keyport.KeyUsage][]byte) bool {
	t.Helper()
	defer w.card.Reset()
	return cardlinktest.NewHost(t, cardlinktest.ProcessTx(w.card)).Authenticate(w.aid.Bytes(), kvn, cardlinktest.Triple(keys)) == gp.SWOK
}

// A rotation whose PUT KEY ran on the card but whose answer was lost
// leaves the card on KVN 32 and keyport on 31: KVN 32 is pending, and the
// provider's rotation from it is accepted, runs, and is confirmed by the
// card, which moves the domain to 33; from other KVNs nothing is accepted.
// On both databases: the pending key set is read from the job history.
func TestALostRotationThatRanIsConfirmedByTheRotationFromItsPendingKVN(t *testing.T) {
	storetest.Each(t, testLostRotationThatRan)
}

func testLostRotationThatRan(t *testing.T, st *store.Store) {
	w := newPendingWorldOn(t, st)
	third, fourth := keysOf(0x40), keysOf(0x80)
	rotA := w.rotation(t, 0x31, secondKeys, third)
	a, probe := w.lostKeyChange(t, rotA, -1)
	if r := probe.Result; r.CardKVN == nil || *r.CardKVN != 0x32 {
		t.Fatalf("the card is not on KVN 32 after the lost rotation: %+v", r)
	}
	d := w.domain(t)
	if d.KVN != 0x31 || d.KCV[keyport.UsageMAC] == rotA.Expect.KCV[keyport.UsageMAC] {
		t.Fatalf("keyport recorded KVN %02X KCV %v on belief", d.KVN, d.KCV)
	}
	if len(d.Pending) != 1 || d.Pending[0].KVN != 0x32 || d.Pending[0].Job != a.Ref || d.Pending[0].KCV[keyport.UsageENC] != rotA.Expect.KCV[keyport.UsageENC] {
		t.Fatalf("pending %+v", d.Pending)
	}

	// Refused, and nothing stored: rotations from 33 (beyond the pending
	// KVN), 30 and 32 to 34 (not the next).
	before, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID})
	bad := map[string]keyport.ScriptRequest{
		"from 33": w.rotation(t, 0x33, fourth, keysOf(0x10)),
		"from 30": w.rotation(t, 0x30, w.Keys[w.eid][w.aid], keysOf(0x10)),
	}
	skip := w.rotation(t, 0x32, third, fourth)
	skip.Expect.KVN = 0x34
	bad["32 to 34"] = skip
	for name, req := range bad {
		if _, err := w.Svc.SubmitScript(ctx, w.prov, w.eid, w.aid, req); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("rotation %s: %v, want invalid", name, err)
		}
	}
	if after, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID}); len(after) != len(before) {
		t.Fatalf("refused rotations stored: %d jobs, %d before", len(after), len(before))
	}

	// A campaign takes the rotation from the pending KVN, and not one
	// from 33.
	rotB := w.rotation(t, 0x32, third, fourth)
	line := func(req keyport.ScriptRequest) *bytes.Reader {
		b, err := json.Marshal(keyport.CampaignScript{EID: w.eid, AID: w.aid, APDUs: req.APDUs, Expect: req.Expect})
		if err != nil {
			t.Fatal(err)
		}
		return bytes.NewReader(append(b, '\n'))
	}
	camp := keyport.CampaignRequest{Op: keyport.CampaignRotation, Rate: 10}
	if _, err := w.Svc.CreateCampaign(ctx, w.prov, camp, line(bad["from 33"])); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("campaign of a rotation from 33: %v", err)
	}
	c, err := w.Svc.CreateCampaign(ctx, w.prov, camp, line(rotB))
	if err != nil {
		t.Fatalf("campaign of the rotation from the pending KVN: %v", err)
	}
	if _, err := w.Svc.CancelCampaign(ctx, w.prov, c.ID); err != nil {
		t.Fatal(err)
	}

	b := w.submit(t, rotB)
	w.session(t, nil)
	if j := w.wantJob(t, b.Ref, keyport.JobDone); !j.Result.Confirmed {
		t.Fatalf("rotation from 32: %+v", j.Result)
	}
	d = w.domain(t)
	if d.KVN != 0x33 || d.SeqCounter != 0 || d.KCV[keyport.UsageMAC] != rotB.Expect.KCV[keyport.UsageMAC] || d.Pending != nil {
		t.Fatalf("domain KVN %02X counter %d KCV %v pending %+v", d.KVN, d.SeqCounter, d.KCV, d.Pending)
	}
	// The ordinary rotation goes on from there.
	c2 := w.submit(t, w.rotation(t, 0x33, fourth, keysOf(0x10)))
	w.session(t, nil)
	w.wantJob(t, c2.Ref, keyport.JobDone)
	if d := w.domain(t); d.KVN != 0x34 || d.Pending != nil {
		t.Fatalf("domain KVN %02X pending %+v", d.KVN, d.Pending)
	}
	// Last, as it runs a session keyport does not see (the counter moves).
	if !w.authenticates(t, 0x34, keysOf(0x10)) {
		t.Fatal("the card does not open KVN 34 with the provider's keys")
	}
}

// A rotation whose answer was lost before its PUT KEY ran leaves the card
// on KVN 31: the rotation from the pending KVN 32 is accepted but fails on
// the card (6A88), which changes nothing, and the rotation from 31 is still
// accepted and confirmed.
func TestALostRotationThatDidNotRunLeavesTheDomainOnItsKVNAndTheRotationFromItStillWorks(t *testing.T) {
	w := newPendingWorld(t)
	third, fourth, fifth := keysOf(0x40), keysOf(0x80), keysOf(0x10)
	_, probe := w.lostKeyChange(t, w.rotation(t, 0x31, secondKeys, third), 2) // INITIALIZE UPDATE and EXTERNAL AUTHENTICATE only
	if r := probe.Result; r.CardKVN == nil || *r.CardKVN != 0x31 || *r.SequenceCounter != 2 {
		t.Fatalf("the probe after a rotation that stopped before PUT KEY: %+v", r)
	}
	if d := w.domain(t); d.KVN != 0x31 || len(d.Pending) != 1 || d.Pending[0].KVN != 0x32 {
		t.Fatalf("domain KVN %02X pending %+v", d.KVN, d.Pending)
	}
	// The counter the probe read is the card's: the scripts below,
	// built on it, open their sessions.
	b := w.submit(t, w.rotation(t, 0x32, third, fourth))
	w.session(t, nil)
	if j := w.wantJob(t, b.Ref, keyport.JobFailed); j.Result.SW != "6A88" || j.Result.Confirmed {
		t.Fatalf("rotation from 32 on a card on 31: %+v", j.Result)
	}
	d := w.domain(t)
	if d.KVN != 0x31 || d.KCV[keyport.UsageMAC] == "" || d.SeqUnverified {
		t.Fatalf("domain KVN %02X KCV %v unverified %v", d.KVN, d.KCV, d.SeqUnverified)
	}
	if len(d.Pending) != 1 || d.Pending[0].KVN != 0x32 {
		t.Fatalf("a refused rotation from the pending KVN changed the pending key sets: %+v", d.Pending)
	}
	rotC := w.rotation(t, 0x31, secondKeys, fifth)
	c := w.submit(t, rotC)
	w.session(t, nil)
	w.wantJob(t, c.Ref, keyport.JobDone)
	if d := w.domain(t); d.KVN != 0x32 || d.KCV[keyport.UsageMAC] != rotC.Expect.KCV[keyport.UsageMAC] || d.Pending != nil {
		t.Fatalf("domain KVN %02X KCV %v pending %+v", d.KVN, d.KCV, d.Pending)
	}
	if !w.authenticates(t, 0x32, fifth) {
		t.Fatal("the card does not open KVN 32 with the rotation's keys")
	}
}

// After a lost rotation the probe asks for whichever key set the card has
// (INITIALIZE UPDATE P1 = 00) and records its counter, reporting the KVN
// that answered, and never records that KVN; an answer naming a key set
// that is neither the domain's nor pending records no counter.
func TestTheCounterProbeAfterALostRotationReadsTheCounterOfTheKeySetTheCardHas(t *testing.T) {
	w := newPendingWorld(t)
	third := keysOf(0x40)
	_, probe := w.lostKeyChange(t, w.rotation(t, 0x31, secondKeys, third), -1)
	if p := probe.Data.APDUs; len(p) != 1 || !strings.HasPrefix(p[0], "8050000008") {
		t.Fatalf("probe APDUs %v, want INITIALIZE UPDATE P1 00", p)
	}
	// The card replaced its key set (counter 0) and the probe's
	// INITIALIZE UPDATE moved the new one's to 1.
	r := probe.Result
	if r == nil || r.CardKVN == nil || *r.CardKVN != 0x32 || r.SequenceCounter == nil || *r.SequenceCounter != 1 {
		t.Fatalf("probe result %+v", r)
	}
	if v := probe.View(); v.Result == nil || v.Result.CardKVN == nil || *v.Result.CardKVN != 0x32 {
		t.Fatalf("the provider's view of the probe: %+v", v.Result)
	}
	d := w.domain(t)
	if d.KVN != 0x31 || d.SeqCounter != 1 || d.SeqUnverified || d.CounterState() != "known" {
		t.Fatalf("domain KVN %02X counter %d unverified %v", d.KVN, d.SeqCounter, d.SeqUnverified)
	}

	// Forged probe answers (the read is unauthenticated): one naming the
	// pending KVN moves the counter and nothing else; one naming a key set
	// that is neither records nothing.
	forge := func(kvn byte, counter int) func(*keyport.Job, []byte) []byte {
		return func(j *keyport.Job, body []byte) []byte {
			rs, err := gp.ParseResponseScript(body)
			if err != nil || len(rs.Responses) != 1 {
				t.Fatalf("probe answer %X: %v", body, err)
			}
			data := rs.Responses[0].Data
			data[10] = kvn
			data[len(data)-3], data[len(data)-2], data[len(data)-1] = byte(counter>>16), byte(counter>>8), byte(counter)
			return rs.Bytes()
		}
	}
	lose := func() string {
		t.Helper()
		// A data script whose answer is lost queues a probe again.
		put, err := keyport.DataScript(w.aid, 0x32, d.SeqCounter, third, []gp.Command{gp.GetDataObject(0x0101)})
		if err != nil {
			t.Fatal(err)
		}
		// Not accepted on the pending KVN: a data script proves no key set.
		if _, err := w.Svc.SubmitDataScript(ctx, w.prov, w.eid, w.aid, put); !errors.Is(err, keyport.ErrInvalid) || !strings.Contains(err.Error(), "pending") {
			t.Fatalf("data script on the pending KVN: %v", err)
		}
		put, err = keyport.DataScript(w.aid, 0x31, d.SeqCounter, secondKeys, []gp.Command{gp.GetDataObject(0x0101)})
		if err != nil {
			t.Fatal(err)
		}
		j, err := w.Svc.SubmitDataScript(ctx, w.prov, w.eid, w.aid, put)
		if err != nil {
			t.Fatal(err)
		}
		w.lostSession(t, j.Ref, 0)
		return j.Ref
	}
	lose()
	refs := w.session(t, forge(0x32, 77))
	if len(refs) != 1 {
		t.Fatalf("sent %v", refs)
	}
	w.wantJob(t, refs[0], keyport.JobDone)
	if d := w.domain(t); d.KVN != 0x31 || d.SeqCounter != 77 || len(d.Pending) != 1 {
		t.Fatalf("after a forged probe answer: KVN %02X counter %d pending %+v", d.KVN, d.SeqCounter, d.Pending)
	}
	lose()
	refs = w.session(t, forge(0x40, 99))
	if j := w.wantJob(t, refs[0], keyport.JobFailed); !strings.Contains(j.LastError, "key set 40") || j.Result.SequenceCounter != nil {
		t.Fatalf("probe answered by key set 40: %q %+v", j.LastError, j.Result)
	}
	if d := w.domain(t); d.KVN != 0x31 || d.SeqCounter != 77 || d.SeqUnverified {
		t.Fatalf("after a probe answer from another key set: KVN %02X counter %d unverified %v", d.KVN, d.SeqCounter, d.SeqUnverified)
	}
}

// A rotation answer altered in transit (its R-MAC does not match) leaves
// the outcome unproven although an answer came: the counter is read again
// by a probe in the same session, KVN 32 is pending, and the rotation from
// it is confirmed by the card.
func TestARotationAnswerAlteredInTransitLeavesItsKVNPendingAndTheCounterReadAgain(t *testing.T) {
	w := newPendingWorld(t)
	third, fourth := keysOf(0x40), keysOf(0x80)
	a := w.submit(t, w.rotation(t, 0x31, secondKeys, third))
	refs := w.session(t, func(j *keyport.Job, body []byte) []byte {
		if j.Ref != a.Ref {
			return body
		}
		rs, _ := gp.ParseResponseScript(body)
		rs.Responses[2].Data[len(rs.Responses[2].Data)-1] ^= 1
		return rs.Bytes()
	})
	if j := w.wantJob(t, a.Ref, keyport.JobFailed); !strings.Contains(j.LastError, "R-MAC") {
		t.Fatalf("altered rotation answer: %q", j.LastError)
	}
	if len(refs) != 2 {
		t.Fatalf("the session sent %v, want the rotation and the probe", refs)
	}
	probe := w.wantJob(t, refs[1], keyport.JobDone)
	if r := probe.Result; !probe.Data.Probe || r.CardKVN == nil || *r.CardKVN != 0x32 || *r.SequenceCounter != 1 {
		t.Fatalf("probe %+v %+v", probe.Data, r)
	}
	d := w.domain(t)
	if d.KVN != 0x31 || len(d.Pending) != 1 || d.Pending[0].KVN != 0x32 || d.SeqCounter != 1 {
		t.Fatalf("domain KVN %02X counter %d pending %+v", d.KVN, d.SeqCounter, d.Pending)
	}
	b := w.submit(t, w.rotation(t, 0x32, third, fourth))
	w.session(t, nil)
	w.wantJob(t, b.Ref, keyport.JobDone)
	if d := w.domain(t); d.KVN != 0x33 || d.Pending != nil {
		t.Fatalf("domain KVN %02X pending %+v", d.KVN, d.Pending)
	}
}

// Two lost rotations in a row (31 to 32, then 32 to 33, both run): the card
// may be on 31, 32 or 33, all pending from 31, and the rotation from 33 is
// the one the card confirms.
func TestTwoLostRotationsLeaveAChainOfPendingKVNs(t *testing.T) {
	w := newPendingWorld(t)
	third, fourth, fifth := keysOf(0x40), keysOf(0x80), keysOf(0x10)
	w.lostKeyChange(t, w.rotation(t, 0x31, secondKeys, third), -1)
	_, probe := w.lostKeyChange(t, w.rotation(t, 0x32, third, fourth), -1)
	if r := probe.Result; r.CardKVN == nil || *r.CardKVN != 0x33 {
		t.Fatalf("probe %+v", r)
	}
	d := w.domain(t)
	if d.KVN != 0x31 || len(d.Pending) != 2 || d.Pending[0].KVN != 0x32 || d.Pending[1].KVN != 0x33 {
		t.Fatalf("domain KVN %02X pending %+v", d.KVN, d.Pending)
	}
	if _, err := w.Svc.SubmitScript(ctx, w.prov, w.eid, w.aid, w.rotation(t, 0x34, fifth, keysOf(0x20))); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("rotation from 34: %v", err)
	}
	c := w.submit(t, w.rotation(t, 0x33, fourth, fifth))
	w.session(t, nil)
	w.wantJob(t, c.Ref, keyport.JobDone)
	if d := w.domain(t); d.KVN != 0x34 || d.Pending != nil {
		t.Fatalf("domain KVN %02X pending %+v", d.KVN, d.Pending)
	}
	if !w.authenticates(t, 0x34, fifth) {
		t.Fatal("the card does not open KVN 34")
	}
}

// What a rotation's end says of its PUT KEY: only a clear refusal by the
// card (or a domain the module could not select) counts as "did not
// rotate"; everything else leaves the outcome unproven.
func TestKeyChangeUnprovenCountsOnlyClearRefusalsOfARotationAsNotRotated(t *testing.T) {
	p := &keyport.SecondKeyPayload{Rotate: true, PutKey: 2, InitUpdate: 0}
	ok := strings.Repeat("00", 29) + "9000"
	checkKeyChangeUnproven(t, p, append(keyChangeEnds(ok),
		keyChangeEnd{"PUT KEY warning 6310", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", "6310"}}, true},
		keyChangeEnd{"PUT KEY 9000 without the R-MAC", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", "32AABBCC9000"}}, true},
		keyChangeEnd{"two of three answers", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000"}}, true},
	))
	proof := *p
	proof.Rotate, proof.Verify = false, true
	if keyport.KeyChangeUnproven(&proof, keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "answer-lost"}) {
		t.Error("a release's proof counted as a key change")
	}
}

// keyChangeEnd is how a key change's job ended, and whether that leaves
// its outcome unproven.
type keyChangeEnd struct {
	name     string
	state    keyport.JobState
	r        *keyport.ScriptResult
	unproven bool
}

// keyChangeEnds are the ends a rotation and a second-key script (PUT KEY
// third, after INITIALIZE UPDATE answered ok) are judged alike by.
func keyChangeEnds(ok string) []keyChangeEnd {
	return []keyChangeEnd{
		{"never sent", keyport.JobFailed, nil, false},
		{"expired unsent", keyport.JobExpired, nil, false},
		{"cancelled", keyport.JobCancelled, &keyport.ScriptResult{ScriptStatus: "ok"}, false},
		{"answer lost", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "answer-lost"}, true},
		{"expired after it went out", keyport.JobExpired, &keyport.ScriptResult{Session: "ses_1"}, true},
		{"SSD not selectable", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "unknown-application", Responses: []string{"6999"}}, false},
		{"not a security domain", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "not-a-security-domain"}, false},
		{"security error", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "security-error"}, true},
		{"INITIALIZE UPDATE 6A88", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{"6A88"}}, false},
		{"EXTERNAL AUTHENTICATE 6300", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "6300"}}, false},
		{"PUT KEY 6982", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", "6982"}}, false},
		{"PUT KEY 6A80", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", "6A80"}}, false},
		{"PUT KEY 6400", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", "6400"}}, false},
		{"PUT KEY 6581 (memory changed)", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", "6581"}}, true},
		{"no answer", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok"}, true},
		{"garbage", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{"zz"}}, true},
	}
}

func checkKeyChangeUnproven(t *testing.T, p *keyport.SecondKeyPayload, ends []keyChangeEnd) {
	t.Helper()
	for _, tc := range ends {
		if got := keyport.KeyChangeUnproven(p, tc.state, tc.r); got != tc.unproven {
			t.Errorf("%s: unproven %v, want %v", tc.name, got, tc.unproven)
		}
	}
}
