package keyport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// A SENT script that expires unanswered leaves the counter unknown: the
// domain is marked unverified and a probe (INITIALIZE UPDATE on the
// domain's KVN) is queued; scripts are refused until it ends, and a probe
// that ends without an answer leaves the last counter known.
func TestAnExpiredUnansweredScriptMarksTheCounterUnverifiedAndQueuesAProbe(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	prov, _, wk := w.Provider(t, "Probe Bank", fixture.RSAKeys()[0])
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := w.Svc.Claim(ctx, prov, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	script := func() keyport.ScriptRequest {
		req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, w.Keys[eid][aid], secondKeys)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	j, err := w.Svc.SubmitScript(ctx, prov, eid, aid, script())
	if err != nil {
		t.Fatal(err)
	}
	m, err := w.Svc.LookupAdminModule(ctx, string(eid))
	if err != nil {
		t.Fatal(err)
	}
	a, del, err := w.Svc.StartAdminSession(ctx, m, false, gp.ScriptOptions{})
	if err != nil || del == nil || del.Job.Ref != j.Ref {
		t.Fatalf("session: %+v %v", del, err)
	}
	if err := w.Svc.CloseAdminSession(ctx, a); err != nil {
		t.Fatal(err)
	}
	d, _ := w.Store.GetDomain(ctx, eid, aid)
	if d.SeqUnverified || d.CounterState() != "known" {
		t.Fatal("counter unverified while the script is out")
	}
	later := time.Now().Add(90 * 24 * time.Hour)
	w.Svc.Now = func() time.Time { return later }
	if n, err := w.Svc.ExpireSent(ctx, 10); err != nil || n != 1 {
		t.Fatalf("expired %d: %v", n, err)
	}
	if got, _ := w.Svc.GetJob(ctx, prov, j.Ref); got.State != keyport.JobExpired {
		t.Fatalf("job %s", got.State)
	}
	d, _ = w.Store.GetDomain(ctx, eid, aid)
	if !d.SeqUnverified || d.CounterState() != "resynchronizing" {
		t.Fatal("counter still trusted after an unanswered script")
	}
	probes, err := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID, Kind: keyport.JobData, States: []keyport.JobState{keyport.JobQueued}})
	if err != nil || len(probes) != 1 || probes[0].Data == nil || !probes[0].Data.Probe || probes[0].ExpiresAt != nil {
		t.Fatalf("probes %+v %v", probes, err)
	}
	// SELECT comes from the targeted application; the probe is one
	// INITIALIZE UPDATE with an 8-byte host challenge, no EXTERNAL
	// AUTHENTICATE. The unanswered second-key script may have put KVN 31
	// on the card (it is pending), so it asks for the first key set the
	// card has (P1 = 00), not for KVN 30.
	if p := probes[0].Data.APDUs; len(p) != 1 || !strings.HasPrefix(p[0], "8050000008") || len(p[0]) != 2*(5+8+1) {
		t.Fatalf("probe APDUs %v", p)
	}
	if has, err := w.Svc.ModuleHasWork(ctx, eid); err != nil || !has {
		t.Fatalf("module has work: %v %v", has, err)
	}
	if n := w.CountAudit(t, "counter.unverified"); n != 1 {
		t.Fatalf("%d counter.unverified events", n)
	}
	before, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID})
	if _, err := w.Svc.SubmitScript(ctx, prov, eid, aid, script()); !errors.Is(err, keyport.ErrCounterResync) || !errors.Is(err, keyport.ErrConflict) ||
		!strings.Contains(err.Error(), "next admin session") {
		t.Fatalf("script while resynchronizing: %v", err)
	}
	if after, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID}); len(after) != len(before) {
		t.Fatalf("a refused script was stored: %d jobs, %d before", len(after), len(before))
	}
	// The probe cancelled: keyport goes back to the last counter it knew.
	if _, err := w.Svc.CancelJob(ctx, fixture.Admin, probes[0].Ref); err != nil {
		t.Fatal(err)
	}
	d, _ = w.Store.GetDomain(ctx, eid, aid)
	if d.SeqUnverified {
		t.Fatal("counter unverified after its probe ended")
	}
	if _, err := w.Svc.SubmitScript(ctx, prov, eid, aid, script()); err != nil {
		t.Fatalf("script after the probe ended: %v", err)
	}
}
