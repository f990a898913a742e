package keyport_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// The first key change (flow 7) of an ASSIGNED domain whose answer is lost
// or unproven: the card may hold the provider's second keys while keyport
// records the first ones. These tests run real admin sessions against the
// virtual card (pendingWorld), as rotatepending_test.go does for rotations.

func newAssignedWorld(t *testing.T) *pendingWorld {
	t.Helper()
	return newAssignedWorldOn(t, storetest.Open(t, storetest.SQLitePath(t)))
}

// secondKey is the provider's second-key script (30 → 31, secondKeys) on
// the counter keyport reports.
func (w *pendingWorld) secondKey(t *testing.T) keyport.ScriptRequest {
	t.Helper()
	req, err := keyport.SecondKeyScript(w.aid, 0x30, w.domain(t).SeqCounter, 0x31, w.Keys[w.eid][w.aid], secondKeys)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestALostSecondKeyAnswerAfterThePutKeyRanLeavesKVN31PendingAndTheRotationFromItPersonalizesTheDomain(t *testing.T) {
	w := newAssignedWorld(t)
	third := keysOf(0x40)
	// The session breaks after the PUT KEY: the SET STATUS never runs.
	sk, probe := w.lostKeyChange(t, w.secondKey(t), 3)
	if p := probe.Data.APDUs; len(p) != 1 || !strings.HasPrefix(p[0], "8050000008") {
		t.Fatalf("probe APDUs %v, want INITIALIZE UPDATE P1 00", p)
	}
	// The card's new key set started at counter 0; the probe moved it to 1.
	if r := probe.Result; r.CardKVN == nil || *r.CardKVN != 0x31 || r.SequenceCounter == nil || *r.SequenceCounter != 1 {
		t.Fatalf("probe result %+v", r)
	}
	d := w.domain(t)
	if d.State != keyport.Assigned || d.KVN != 0x30 || d.SeqCounter != 1 || d.SeqUnverified {
		t.Fatalf("domain %s KVN %02X counter %d unverified %v", d.State, d.KVN, d.SeqCounter, d.SeqUnverified)
	}
	if len(d.Pending) != 1 || d.Pending[0].KVN != 0x31 || d.Pending[0].Job != sk.Ref || d.Pending[0].KCV[keyport.UsageMAC] != sk.SecondKey.Expect.KCV[keyport.UsageMAC] {
		t.Fatalf("pending %+v", d.Pending)
	}

	rot := w.rotation(t, 0x31, secondKeys, third)
	j := w.submit(t, rot)
	if !j.SecondKey.Assigned || j.SecondKey.DomainState() != keyport.Assigned {
		t.Fatalf("the rotation of an ASSIGNED domain is not marked so: %+v", j.SecondKey)
	}
	w.session(t, nil)
	if j := w.wantJob(t, j.Ref, keyport.JobDone); !j.Result.Confirmed {
		t.Fatalf("rotation from 31: %+v", j.Result)
	}
	d = w.domain(t)
	if d.State != keyport.Personalized || d.KVN != 0x32 || d.SeqCounter != 0 || d.KCV[keyport.UsageENC] != rot.Expect.KCV[keyport.UsageENC] || d.Pending != nil {
		t.Fatalf("domain %s KVN %02X counter %d KCV %v pending %+v", d.State, d.KVN, d.SeqCounter, d.KCV, d.Pending)
	}
	if n := w.CountAudit(t, keyport.ActionSecondKeyRecovered); n != 1 {
		t.Fatalf("%d %s events", n, keyport.ActionSecondKeyRecovered)
	}
	if !w.authenticates(t, 0x32, third) {
		t.Fatal("the card does not open KVN 32 with the rotation's keys")
	}
}

func TestALostSecondKeyAnswerBeforeTheScriptRanFailsTheRotationFromThePendingKVNAndAFreshSecondKeyStillWorks(t *testing.T) {
	w := newAssignedWorld(t)
	_, probe := w.lostKeyChange(t, w.secondKey(t), 0) // nothing reached the card
	if r := probe.Result; r.CardKVN == nil || *r.CardKVN != 0x30 || r.SequenceCounter == nil || *r.SequenceCounter != 1 {
		t.Fatalf("the probe after a second key that never ran: %+v", r)
	}
	b := w.submit(t, w.rotation(t, 0x31, secondKeys, keysOf(0x40)))
	w.session(t, nil)
	if j := w.wantJob(t, b.Ref, keyport.JobFailed); j.Result.SW != "6A88" || j.Result.Confirmed {
		t.Fatalf("rotation from 31 on a card on 30: %+v", j.Result)
	}
	d := w.domain(t)
	if d.State != keyport.Assigned || d.KVN != 0x30 || d.SeqUnverified || len(d.Pending) != 1 || d.Pending[0].KVN != 0x31 {
		t.Fatalf("domain %s KVN %02X unverified %v pending %+v", d.State, d.KVN, d.SeqUnverified, d.Pending)
	}
	sk := w.submit(t, w.secondKey(t))
	w.session(t, nil)
	w.wantJob(t, sk.Ref, keyport.JobDone)
	if d := w.domain(t); d.State != keyport.Personalized || d.KVN != 0x31 || d.Pending != nil {
		t.Fatalf("domain %s KVN %02X pending %+v", d.State, d.KVN, d.Pending)
	}
	if !w.authenticates(t, 0x31, secondKeys) {
		t.Fatal("the card does not open KVN 31")
	}
}

func TestASecondKeyAnswerProvenUpToThePutKeyWithItsSetStatusRefusedLeavesKVN31PendingAndProbesInTheSameSession(t *testing.T) {
	w := newAssignedWorld(t)
	sk := w.submit(t, w.secondKey(t))
	refs := w.session(t, func(j *keyport.Job, body []byte) []byte {
		if j.Ref != sk.Ref {
			return body
		}
		// The card's answer with the SET STATUS refused: the PUT KEY
		// answer and its R-MAC are the card's.
		rs, err := gp.ParseResponseScript(body)
		if err != nil || len(rs.Responses) != 4 {
			t.Fatalf("second-key answer %X: %v", body, err)
		}
		rs.Responses[3] = gp.Response{SW: 0x6985}
		return rs.Bytes()
	})
	if j := w.wantJob(t, sk.Ref, keyport.JobFailed); j.Result.SW != "6985" {
		t.Fatalf("second key: %+v", j.Result)
	}
	if len(refs) != 2 {
		t.Fatalf("the session sent %v, want the second key and the probe", refs)
	}
	probe := w.wantJob(t, refs[1], keyport.JobDone)
	if r := probe.Result; !probe.Data.Probe || r.CardKVN == nil || *r.CardKVN != 0x31 {
		t.Fatalf("probe %+v %+v", probe.Data, r)
	}
	if d := w.domain(t); d.State != keyport.Assigned || len(d.Pending) != 1 || d.Pending[0].KVN != 0x31 {
		t.Fatalf("domain %s pending %+v", d.State, d.Pending)
	}
}

func TestARotationOfAnAssignedDomainIsRefusedUnlessItStartsFromAPendingKVNAndNothingIsStored(t *testing.T) {
	w := newAssignedWorld(t)
	d := w.domain(t)
	refused := func(name string, req keyport.ScriptRequest, mention string) {
		t.Helper()
		before, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID})
		_, err := w.Svc.SubmitScript(ctx, w.prov, w.eid, w.aid, req)
		if !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), mention) {
			t.Fatalf("rotation %s: %v, want a conflict naming %q", name, err, mention)
		}
		if after, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID}); len(after) != len(before) {
			t.Fatalf("rotation %s stored: %d jobs, %d before", name, len(after), len(before))
		}
	}
	refused("from 31, none pending", w.rotation(t, 0x31, secondKeys, keysOf(0x40)), "none is pending")
	refused("from the first keys", w.rotation(t, 0x30, w.Keys[w.eid][w.aid], keysOf(0x40)), "none is pending")
	w.lostKeyChange(t, w.secondKey(t), -1)
	refused("from 33, 31 pending", w.rotation(t, 0x33, keysOf(0x80), keysOf(0x40)), "pending now 31")
	refused("from the first keys, 31 pending", w.rotation(t, 0x30, w.Keys[w.eid][w.aid], keysOf(0x40)), "pending now 31")
}

func TestKeyChangeUnprovenCountsOnlyClearRefusalsOfASecondKeyScriptAsNoKeyChange(t *testing.T) {
	// INITIALIZE UPDATE, EXTERNAL AUTHENTICATE, PUT KEY, SET STATUS.
	p := &keyport.SecondKeyPayload{PutKey: 2, InitUpdate: 0, APDUs: make([]string, 4)}
	ok := strings.Repeat("00", 29) + "9000"
	put := "31" + strings.Repeat("AA", 9) + strings.Repeat("11", 8) + "9000"
	checkKeyChangeUnproven(t, p, append(keyChangeEnds(ok),
		keyChangeEnd{"PUT KEY 9000, SET STATUS 6985", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", put, "6985"}}, true},
		keyChangeEnd{"PUT KEY 9000, no SET STATUS answer", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", put}}, true},
		keyChangeEnd{"every answer 9000 (judged false: cryptogram or R-MAC)", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000", put, "9000"}}, true},
		keyChangeEnd{"two of four answers", keyport.JobFailed, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{ok, "9000"}}, true},
	))
}

func TestAfterAReleaseAndAClaimByAnotherProviderTheOldOwnersPendingKeySetsAreGone(t *testing.T) {
	iw := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	m, err := iw.Store.GetModule(ctx, iw.EID)
	if err != nil {
		t.Fatal(err)
	}
	aid := m.Domains[1].AID // the world's second domain, UNASSIGNED
	claim := func(name string) (keyport.Principal, map[keyport.KeyUsage][]byte) {
		t.Helper()
		p, _, wk := iw.Provider(t, name, fixture.RSAKeys()[0])
		_, first := cardlinktest.ClaimAndUnwrap(t, iw.Svc, p, iw.EID, aid, wk, fixture.RSAKeys()[0])
		return p, first
	}
	old, first := claim("Old Owner")
	iw.Keys = map[keyport.EID]map[keyport.AID]map[keyport.KeyUsage][]byte{iw.EID: {aid: first}}
	w := &pendingWorld{World: iw.World, prov: old, eid: iw.EID, aid: aid, card: iw.Card.Card}
	w.lostKeyChange(t, w.secondKey(t), -1)
	if d := w.domain(t); d.State != keyport.Assigned || len(d.Pending) != 1 || d.Pending[0].KVN != 0x31 {
		t.Fatalf("old owner's domain %s pending %+v", d.State, d.Pending)
	}

	if _, err := iw.Svc.RequestRelease(ctx, old, iw.EID, aid); err != nil {
		t.Fatal(err)
	}
	if _, err := iw.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if d, _ := iw.Store.GetDomain(ctx, iw.EID, aid); d.State != keyport.Unassigned {
		t.Fatalf("domain %s after the release", d.State)
	}
	w.prov, _ = claim("New Owner")
	d := w.domain(t)
	if d.State != keyport.Assigned || d.Pending != nil {
		t.Fatalf("new owner's domain %s pending %+v", d.State, d.Pending)
	}
	before, _ := iw.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID})
	if _, err := iw.Svc.SubmitScript(ctx, w.prov, iw.EID, aid, w.rotation(t, 0x31, secondKeys, keysOf(0x40))); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("new owner's rotation from the old owner's pending KVN: %v", err)
	}
	if after, _ := iw.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID}); len(after) != len(before) {
		t.Fatalf("a refused rotation was stored: %d jobs, %d before", len(after), len(before))
	}
}
