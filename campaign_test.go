package keyport_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

var ctx = context.Background()

// campaignWorld is a fixture world whose modules' domain 1 is PERSONALIZED
// for provider A, except the last `others` modules', which are provider
// B's.
type campaignWorld struct {
	*fixture.World
	a, b   keyport.Principal
	eids   []keyport.EID // A's
	bEIDs  []keyport.EID // B's
	apdus  []string      // a data script that passes CheckDataScript for KVN 30
	runner *keyport.CampaignRunner
}

func newCampaignWorld(t testing.TB, st *store.Store, modules, others int) *campaignWorld {
	t.Helper()
	w := &campaignWorld{World: fixture.New(t, st, modules, 1)}
	w.a, _, _ = w.Provider(t, "Campaign Bank", fixture.RSAKeys()[0])
	w.b, _, _ = w.Provider(t, "Other Bank", fixture.RSAKeys()[0])
	err := st.Tx(ctx, func(tx keyport.Repo) error {
		var after int64
		i := 0
		for {
			ms, err := tx.ModulesAfter(ctx, after, 500)
			if err != nil || len(ms) == 0 {
				return err
			}
			for _, m := range ms {
				after = m.ID
				owner := w.a.ProviderID
				if i >= modules-others {
					owner = w.b.ProviderID
					w.bEIDs = append(w.bEIDs, m.EID)
				} else {
					w.eids = append(w.eids, m.EID)
				}
				i++
				if err := tx.TransitionDomain(ctx, m.Domains[0].ID, []keyport.DomainState{keyport.Unassigned}, keyport.Personalized, &owner); err != nil {
					return err
				}
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	w.apdus = dataAPDUs(t)
	w.runner = &keyport.CampaignRunner{Service: w.Svc, Holder: "replica-1"}
	return w
}

// dataAPDUs is a data script (one STORE DATA) that CheckDataScript passes
// for a domain with keys KVN 30, under made-up keys.
func dataAPDUs(t testing.TB) []string {
	t.Helper()
	cmds, err := gp.StoreDataObjects([]gp.DGI{{Tag: 0x0101, Data: []byte("campaign")}})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[keyport.KeyUsage][]byte{keyport.UsageENC: make([]byte, 16), keyport.UsageMAC: make([]byte, 16), keyport.UsageDEK: make([]byte, 16)}
	req, err := keyport.DataScript(fixture.AID(1), 0x30, 0, keys, cmds)
	if err != nil {
		t.Fatal(err)
	}
	return req.APDUs
}

// upload is the NDJSON of one data script for each domain 1 of eids.
func (w *campaignWorld) upload(eids ...keyport.EID) *strings.Reader {
	var b strings.Builder
	for _, e := range eids {
		line, _ := json.Marshal(map[string]any{"eid": e, "aid": fixture.AID(1), "apdus": w.apdus})
		b.Write(line)
		b.WriteByte('\n')
	}
	return strings.NewReader(b.String())
}

func (w *campaignWorld) dataCampaign(t testing.TB, p keyport.Principal, rate int, eids ...keyport.EID) *keyport.Campaign {
	t.Helper()
	c, err := w.Svc.CreateCampaign(ctx, p, keyport.CampaignRequest{Op: keyport.CampaignData, Rate: rate}, w.upload(eids...))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// jobs counts the data jobs in the store, by state ("" for all).
func (w *campaignWorld) jobs(t testing.TB, states ...keyport.JobState) int {
	t.Helper()
	n := 0
	var after int64
	for {
		js, err := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobData, States: states, AfterID: after, Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if len(js) == 0 {
			return n
		}
		n += len(js)
		after = js[len(js)-1].ID
	}
}

// fault is how the simulated module answers: ok, or a status word at one
// command, or a script status other than ok.
type fault struct {
	status string // X-Admin-Script-Status
	at     int    // 0: every command 9000; n: command n (1-based) answers sw
	sw     string
}

// plan is the fault mix of module i.
func plan(i int) fault {
	switch {
	case i%10 == 3:
		return fault{status: "ok", at: 3, sw: "6982"}
	case i%10 == 7:
		return fault{status: "ok", at: 2, sw: "6300"}
	case i%25 == 11:
		return fault{status: "security-error"}
	case i%50 == 19:
		return fault{status: "ok", at: 3, sw: "6A84"}
	}
	return fault{status: "ok"}
}

// expectedCause is the failure cause plan(i) must give, "" for DONE.
func expectedCause(f fault) string {
	switch {
	case f.status != "ok":
		return "script status " + f.status
	case f.at > 0:
		return "SW " + f.sw
	}
	return ""
}

// answer builds the response script of f to a script of n commands.
func (f fault) answer(n int) []byte {
	var rs []string
	for i := 1; i <= n; i++ {
		if i == f.at {
			rs = append(rs, f.sw)
			break
		}
		rs = append(rs, "9000")
	}
	return answer(rs...)
}

// drive runs an admin session, through the service's own use cases, for
// every module with a QUEUED data job, a page at a time, until none is
// QUEUED; module i (by its index in eids) answers as plan(i) says.
func (w *campaignWorld) drive(t testing.TB, index map[keyport.EID]int) {
	t.Helper()
	for {
		js, err := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobData, States: []keyport.JobState{keyport.JobQueued}, Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		if len(js) == 0 {
			return
		}
		// Modules open their sessions at once, as on a live server (one
		// job a module: the campaign's cap is 1).
		var wg sync.WaitGroup
		next := make(chan keyport.EID)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for e := range next {
					if err := w.trySession(e, plan(index[e])); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		for _, j := range js {
			next <- j.Data.EID
		}
		close(next)
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
	}
}

// countAudit counts the audit events with the action, however many there are.
func (w *campaignWorld) countAudit(t testing.TB, action string) int {
	t.Helper()
	n := 0
	var after int64
	for {
		evs, err := w.Store.AuditEvents(ctx, after, 5000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return n
		}
		for _, e := range evs {
			if e.Action == action {
				n++
			}
		}
		after = evs[len(evs)-1].Seq
	}
}

func (w *campaignWorld) session(t testing.TB, eid keyport.EID, f fault) {
	t.Helper()
	if err := w.trySession(eid, f); err != nil {
		t.Fatal(err)
	}
}

// trySession is one admin session of module eid answering every script as
// f says.
func (w *campaignWorld) trySession(eid keyport.EID, f fault) error {
	m, err := w.Svc.LookupAdminModule(ctx, string(eid))
	if err != nil {
		return err
	}
	a, del, err := w.Svc.StartAdminSession(ctx, m, false, gp.ScriptOptions{})
	if err != nil {
		return err
	}
	for del != nil {
		j, ended, err := w.Svc.AnswerScript(ctx, a, del.Job.Ref, f.status, f.answer(len(del.Job.Data.APDUs)))
		if err != nil {
			return err
		}
		if !j.State.Final() {
			return fmt.Errorf("job %s is %s after its answer", j.Ref, j.State)
		}
		if ended {
			break
		}
		if del, err = w.Svc.NextScript(ctx, a, gp.ScriptOptions{}, false); err != nil {
			return err
		}
	}
	return w.Svc.CloseAdminSession(ctx, a)
}

// TestCampaignOver10000ModulesEndsWithExactCountsPerCause runs a provider's
// data-script campaign over 10,000 modules (and 40 lines naming another
// provider's domains) to its end: the runner queues, simulated modules
// answer through the admin-session use cases with a fault mix, and the
// report's counts per cause are exactly the ones the mix gives.
func TestCampaignOver10000ModulesEndsWithExactCountsPerCause(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		const modules, others = 10_040, 40
		w := newCampaignWorld(t, st, modules, others)
		index := map[keyport.EID]int{}
		for i, e := range w.eids {
			index[e] = i
		}
		want := map[string]int{"not yours": others}
		done := 0
		for i := range w.eids {
			if c := expectedCause(plan(i)); c != "" {
				want[c]++
			} else {
				done++
			}
		}
		c := w.dataCampaign(t, w.a, keyport.MaxCampaignRate, append(append([]keyport.EID{}, w.eids...), w.bEIDs...)...)
		if c.Total != modules {
			t.Fatalf("campaign has %d targets, want %d", c.Total, modules)
		}
		for steps := 0; ; steps++ {
			if steps > 100 {
				t.Fatal("the campaign does not finish")
			}
			if _, err := w.runner.Step(ctx); err != nil {
				t.Fatal(err)
			}
			v, err := w.Svc.GetCampaign(ctx, w.a, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			if v.State == keyport.CampaignFinished {
				break
			}
			w.drive(t, index)
		}
		v, err := w.Svc.GetCampaign(ctx, w.a, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if v.Counts[keyport.TargetDone] != done || v.Counts[keyport.TargetRefused] != others ||
			v.Counts[keyport.TargetPending] != 0 || v.Counts[keyport.TargetQueued] != 0 {
			t.Fatalf("counts %v, want %d DONE, %d REFUSED", v.Counts, done, others)
		}
		got := map[string]int{}
		for _, cs := range v.Causes {
			got[cs.Cause] += cs.Count
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("causes %v, want %v", got, want)
		}
		if n := w.jobs(t); n != modules-others {
			t.Fatalf("%d data jobs for %d own domains", n, modules-others)
		}
		if n := w.countAudit(t, "campaign.finish"); n != 1 {
			t.Fatalf("%d campaign.finish events", n)
		}
		t.Logf("%d targets: %v; causes %v", modules, v.Counts, got)
	})
}

// TestCampaignPauseResumeCancelTakeEffectAtOnce: once Pause returns, no
// job of the campaign is queued, even by a step that was running when it
// was called; Resume goes on; once Cancel returns, the campaign's QUEUED
// jobs are CANCELLED and no step queues another.
func TestCampaignPauseResumeCancelTakeEffectAtOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w := newCampaignWorld(t, st, 300, 0)
		c := w.dataCampaign(t, w.a, 10, w.eids...)
		if n, err := w.runner.Step(ctx); err != nil || n != 10 {
			t.Fatalf("first step queued %d: %v", n, err)
		}
		// A runner stepping on its own while the campaign is paused.
		stop, first := make(chan struct{}), make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := &keyport.CampaignRunner{Service: w.Svc, Holder: "replica-1", Tick: 10 * time.Second}
			signalled := false
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := r.Step(ctx); err != nil {
					t.Error(err)
					return
				}
				if !signalled {
					close(first)
					signalled = true
				}
			}
		}()
		<-first
		if _, err := w.Svc.PauseCampaign(ctx, w.a, c.ID); err != nil {
			t.Fatal(err)
		}
		atPause := w.jobs(t)
		close(stop)
		wg.Wait()
		for range 3 {
			if n, err := w.runner.Step(ctx); err != nil || n != 0 {
				t.Fatalf("a step after the pause queued %d: %v", n, err)
			}
		}
		if n := w.jobs(t); n != atPause {
			t.Fatalf("%d jobs when Pause returned, %d after the steps", atPause, n)
		}
		if _, err := w.Svc.PauseCampaign(ctx, w.a, c.ID); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("pause twice: %v", err)
		}
		if _, err := w.Svc.ResumeCampaign(ctx, w.a, c.ID); err != nil {
			t.Fatal(err)
		}
		if n, err := w.runner.Step(ctx); err != nil || n != 10 {
			t.Fatalf("step after resume queued %d: %v", n, err)
		}
		// Two modules answer, so that some jobs are DONE before the cancel.
		js, _ := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobData, States: []keyport.JobState{keyport.JobQueued}, Limit: 2})
		for _, j := range js {
			w.session(t, j.Data.EID, fault{status: "ok"})
		}
		queuedBefore := w.jobs(t, keyport.JobQueued)
		v, err := w.Svc.CancelCampaign(ctx, w.a, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if n := w.jobs(t, keyport.JobQueued); n != 0 {
			t.Fatalf("%d jobs still QUEUED after Cancel returned", n)
		}
		if n := w.jobs(t, keyport.JobCancelled); n != queuedBefore {
			t.Fatalf("%d jobs CANCELLED, %d were QUEUED", n, queuedBefore)
		}
		total := w.jobs(t)
		for range 3 {
			if n, err := w.runner.Step(ctx); err != nil || n != 0 {
				t.Fatalf("a step after the cancel queued %d: %v", n, err)
			}
		}
		if n := w.jobs(t); n != total {
			t.Fatalf("%d jobs after the cancel, %d after the steps", total, n)
		}
		v, err = w.Svc.GetCampaign(ctx, w.a, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if v.State != keyport.CampaignCancelled || v.Counts[keyport.TargetPending] != 0 || v.Counts[keyport.TargetQueued] != 0 ||
			v.Counts[keyport.TargetDone] != 2 || v.Counts[keyport.TargetCancelled] != 300-2 || v.FinishedAt == nil {
			t.Fatalf("after the cancel: %s %v finished %v", v.State, v.Counts, v.FinishedAt)
		}
		for _, a := range []string{"campaign.create", "campaign.pause", "campaign.resume", "campaign.cancel", "campaign.finish"} {
			if n := w.countAudit(t, a); n != 1 {
				t.Fatalf("%d %s events", n, a)
			}
		}
		if _, err := w.Svc.ResumeCampaign(ctx, w.a, c.ID); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("resume a cancelled campaign: %v", err)
		}
	})
}

// TestCampaignRestartQueuesNoTargetTwice: a runner works part of a
// campaign, then a restarted one (its cursor lost) and a second replica
// run it together to the end; every target is queued exactly once.
func TestCampaignRestartQueuesNoTargetTwice(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w := newCampaignWorld(t, st, 400, 0)
		c := w.dataCampaign(t, w.a, 25, w.eids...)
		if n, err := w.runner.Step(ctx); err != nil || n != 25 {
			t.Fatalf("first step queued %d: %v", n, err)
		}
		// The restarted replica keeps its name; the other one shares its
		// lease (as after an expiry) so that both really queue at once.
		var wg sync.WaitGroup
		for r := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				run := &keyport.CampaignRunner{Service: w.Svc, Holder: "replica-1"}
				for range 40 {
					if _, err := run.Step(ctx); err != nil {
						t.Errorf("runner %d: %v", r, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		v, err := w.Svc.GetCampaign(ctx, w.a, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if v.Counts[keyport.TargetQueued] != 400 || v.Counts[keyport.TargetPending] != 0 {
			t.Fatalf("counts %v, want 400 QUEUED", v.Counts)
		}
		if n := w.jobs(t); n != 400 {
			t.Fatalf("%d jobs for 400 targets", n)
		}
		perDomain := map[keyport.EID]int{}
		js, _ := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobData, Limit: 1000})
		for _, j := range js {
			perDomain[j.Data.EID]++
		}
		for e, n := range perDomain {
			if n != 1 {
				t.Fatalf("domain of %s has %d jobs", e, n)
			}
		}
	})
}

// TestCampaignOfAProviderCannotTargetAnothersDomains: provider B names
// A's EIDs (as EID, EID/AID and script lines): the targets are REFUSED
// "not yours" and nothing is queued; B cannot see or control A's
// campaign either.
func TestCampaignOfAProviderCannotTargetAnothersDomains(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w := newCampaignWorld(t, st, 12, 2)
		var entries []string
		for _, e := range w.eids[:5] {
			entries = append(entries, string(e))
		}
		for _, e := range w.eids[5:] {
			entries = append(entries, string(e)+"/"+string(fixture.AID(1)))
		}
		entries = append(entries, string(w.bEIDs[0]))
		c, err := w.Svc.CreateCampaign(ctx, w.b, keyport.CampaignRequest{Op: keyport.CampaignLock, Targets: keyport.CampaignTargets{EIDs: entries}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		d := w.dataCampaign(t, w.b, 100, w.eids...)
		for range 3 {
			if _, err := w.runner.Step(ctx); err != nil {
				t.Fatal(err)
			}
		}
		v, err := w.Svc.GetCampaign(ctx, w.b, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		// B's own module is imported (no ISD keys): refused for that.
		if v.Counts[keyport.TargetRefused] != 11 || len(v.Causes) != 2 || v.Causes[0].Cause != keyport.CauseNotYours || v.Causes[0].Count != 10 {
			t.Fatalf("lock campaign: %v %+v", v.Counts, v.Causes)
		}
		v, err = w.Svc.GetCampaign(ctx, w.b, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if v.Counts[keyport.TargetRefused] != 10 || v.Causes[0].Cause != keyport.CauseNotYours {
			t.Fatalf("data campaign: %v %+v", v.Counts, v.Causes)
		}
		if n := w.jobs(t); n != 0 {
			t.Fatalf("%d jobs queued for B on A's domains", n)
		}
		js, _ := w.Store.ListJobs(ctx, keyport.JobFilter{Kinds: keyport.CardJobKinds})
		if len(js) != 0 {
			t.Fatalf("%d card jobs queued", len(js))
		}
		own := w.dataCampaign(t, w.a, 10, w.eids[0])
		if _, err := w.Svc.GetCampaign(ctx, w.b, own.ID); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("B reads A's campaign: %v", err)
		}
		for _, f := range []func(context.Context, keyport.Principal, string) (*keyport.CampaignView, error){w.Svc.PauseCampaign, w.Svc.ResumeCampaign, w.Svc.CancelCampaign} {
			if _, err := f(ctx, w.b, own.ID); !errors.Is(err, keyport.ErrNotFound) {
				t.Fatalf("B controls A's campaign: %v", err)
			}
		}
		list, err := w.Svc.ListCampaigns(ctx, w.b, 0)
		if err != nil || len(list) != 2 {
			t.Fatalf("B lists %d campaigns: %v", len(list), err)
		}
		if all, err := w.Svc.ListCampaigns(ctx, fixture.Admin, 0); err != nil || len(all) != 3 {
			t.Fatalf("the admin lists %d campaigns: %v", len(all), err)
		}
	})
}

// TestCampaignBadInputIsRefusedWithNothingStored: an unknown operation, an
// oversized EID list, a bad NDJSON line, a provider's operation asked by an
// admin: 400-class errors, no campaign, no target.
func TestCampaignBadInputIsRefusedWithNothingStored(t *testing.T) {
	w := newCampaignWorld(t, storetest.Open(t, storetest.SQLitePath(t)), 3, 0)
	big := make([]string, keyport.MaxCampaignTargets+1)
	for i := range big {
		big[i] = string(w.eids[0])
	}
	good, _ := json.Marshal(map[string]any{"eid": w.eids[0], "aid": fixture.AID(1), "apdus": w.apdus})
	second, _ := json.Marshal(map[string]any{"eid": w.eids[1], "aid": fixture.AID(1), "apdus": w.apdus})
	badAPDU, _ := json.Marshal(map[string]any{"eid": w.eids[2], "aid": fixture.AID(1), "apdus": []string{"00A4040000"}})
	for _, tc := range []struct {
		name    string
		p       keyport.Principal
		req     keyport.CampaignRequest
		upload  string
		field   string
		scripts bool
	}{
		{"unknown op", w.a, keyport.CampaignRequest{Op: "erase-everything", Targets: keyport.CampaignTargets{AllPersonalized: true}}, "", "op", false},
		{"oversized list", fixture.Admin, keyport.CampaignRequest{Op: keyport.CampaignLock, Targets: keyport.CampaignTargets{EIDs: big}}, "", "targets.eids", false},
		{"bad entry", fixture.Admin, keyport.CampaignRequest{Op: keyport.CampaignLock, Targets: keyport.CampaignTargets{EIDs: []string{"8904x"}}}, "", "targets.eids[0]", false},
		{"two selections", w.a, keyport.CampaignRequest{Op: keyport.CampaignLock, Targets: keyport.CampaignTargets{AllPersonalized: true, EIDs: []string{string(w.eids[0])}}}, "", "targets", false},
		{"bad rate", w.a, keyport.CampaignRequest{Op: keyport.CampaignLock, Rate: 5000, Targets: keyport.CampaignTargets{AllPersonalized: true}}, "", "rate", false},
		{"admin access rules", fixture.Admin, keyport.CampaignRequest{Op: keyport.CampaignRuleAdd, Params: json.RawMessage(`{}`), Targets: keyport.CampaignTargets{Batch: "b1"}}, "", "op", false},
		{"bad json line", w.a, keyport.CampaignRequest{Op: keyport.CampaignData}, string(good) + "\n" + string(second) + "\n{\"eid\": \n", "line 3", true},
		{"unknown field", w.a, keyport.CampaignRequest{Op: keyport.CampaignData}, string(good) + "\n{\"eid\":\"x\",\"rm\":1}\n", "line 2", true},
		{"script fails its check", w.a, keyport.CampaignRequest{Op: keyport.CampaignData}, string(good) + "\n" + string(badAPDU) + "\n", "line 2: apdus", true},
		{"same domain twice", w.a, keyport.CampaignRequest{Op: keyport.CampaignData}, string(good) + "\n" + string(good) + "\n", "line 2", true},
		{"empty upload", w.a, keyport.CampaignRequest{Op: keyport.CampaignData}, "\n\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var up *strings.Reader
			if tc.scripts {
				up = strings.NewReader(tc.upload)
			}
			var err error
			if up != nil {
				_, err = w.Svc.CreateCampaign(ctx, tc.p, tc.req, up)
			} else {
				_, err = w.Svc.CreateCampaign(ctx, tc.p, tc.req, nil)
			}
			var ie *keyport.InvalidError
			if !errors.As(err, &ie) || !strings.HasPrefix(ie.Field, tc.field) {
				t.Fatalf("got %v, want an invalid %q", err, tc.field)
			}
		})
	}
	all, err := w.Svc.ListCampaigns(ctx, fixture.Admin, 0)
	if err != nil || len(all) != 0 {
		t.Fatalf("%d campaigns stored: %v", len(all), err)
	}
	if left, err := w.Store.CreatingCampaigns(ctx, time.Now().Add(time.Hour), 10); err != nil || len(left) != 0 {
		t.Fatalf("campaigns left CREATING: %+v, %v", left, err)
	}
}
