package keyport_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// creation is a CreateCampaign of a data script upload that the test feeds
// line by line through a pipe, so that it can stop it half way.
type creation struct {
	w    *campaignWorld
	pw   *io.PipeWriter
	done chan struct{}
	c    *keyport.Campaign
	err  error
}

func (w *campaignWorld) startCreation(p keyport.Principal) *creation {
	pr, pw := io.Pipe()
	cr := &creation{w: w, pw: pw, done: make(chan struct{})}
	go func() {
		defer close(cr.done)
		cr.c, cr.err = w.Svc.CreateCampaign(ctx, p, keyport.CampaignRequest{Op: keyport.CampaignData, Rate: 10}, pr)
		pr.CloseWithError(errors.New("creation returned"))
	}()
	return cr
}

// lines sends the data script lines of eids.
func (cr *creation) lines(t *testing.T, eids ...keyport.EID) {
	t.Helper()
	for _, e := range eids {
		line, _ := json.Marshal(map[string]any{"eid": e, "aid": fixture.AID(1), "apdus": cr.w.apdus})
		if _, err := cr.pw.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
	}
}

// creating waits until the campaign being created has at least n targets
// stored, and returns it.
func (cr *creation) creating(t *testing.T, n int) keyport.Campaign {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		cs, err := cr.w.Store.CreatingCampaigns(ctx, time.Now().Add(time.Hour), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) == 1 {
			counts, err := cr.w.Store.CampaignCounts(ctx, cs[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			if counts[keyport.TargetPending] >= n {
				return cs[0]
			}
		}
		if len(cs) > 1 {
			t.Fatalf("%d campaigns CREATING", len(cs))
		}
		if time.Now().After(deadline) {
			t.Fatalf("no campaign CREATING with %d targets stored: %+v", n, cs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeBeside runs the write and fails if it does not succeed within 30 s
// (a liveness bound, not a speed check): what runs beside it must not hold
// the writer.
func writeBeside(t *testing.T, what string, write func() error) {
	t.Helper()
	wrote := make(chan error, 1)
	go func() { wrote <- write() }()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("a write beside %s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a write waited 30 s behind %s", what)
	}
}

func (cr *creation) end(t *testing.T) (*keyport.Campaign, error) {
	t.Helper()
	cr.pw.Close()
	select {
	case <-cr.done:
	case <-time.After(60 * time.Second):
		t.Fatal("CreateCampaign did not return after its upload ended")
	}
	return cr.c, cr.err
}

// TestACampaignBeingCreatedHoldsNoWriteTransaction: on SQLite, the one
// writer of the deployment. A campaign's upload stops after its first
// chunk of targets is stored; meanwhile other writes go through, and the
// campaign is seen by no one: not listed, not found, not paused, and the
// runner queues nothing from it. Once the upload ends it is RUNNING with
// every target and one audit event.
func TestACampaignBeingCreatedHoldsNoWriteTransaction(t *testing.T) {
	w := newCampaignWorld(t, storetest.Open(t, storetest.SQLitePath(t)), 1200, 0)
	cr := w.startCreation(w.a)
	cr.lines(t, w.eids[:700]...)
	creating := cr.creating(t, 500)

	writeBeside(t, "a campaign being created", func() error {
		_, _, err := w.Svc.CreateAPIToken(ctx, w.b, "beside a campaign")
		return err
	})

	list, err := w.Svc.ListCampaigns(ctx, w.a, 0)
	if err != nil || len(list) != 0 {
		t.Fatalf("campaigns listed while one is being created: %d, %v", len(list), err)
	}
	if _, err := w.Svc.GetCampaign(ctx, w.a, creating.ID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("GetCampaign of a campaign being created: %v, want ErrNotFound", err)
	}
	if _, err := w.Svc.PauseCampaign(ctx, w.a, creating.ID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("PauseCampaign of a campaign being created: %v, want ErrNotFound", err)
	}
	if n, err := w.runner.Step(ctx); err != nil || n != 0 {
		t.Fatalf("the runner queued %d jobs of a campaign being created: %v", n, err)
	}
	if n := w.countAudit(t, "campaign.create"); n != 0 {
		t.Fatalf("%d campaign.create events before the campaign is created", n)
	}

	cr.lines(t, w.eids[700:]...)
	c, err := cr.end(t)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != creating.ID || c.State != keyport.CampaignRunning || c.Total != len(w.eids) {
		t.Fatalf("campaign %s %s with %d targets, want %s RUNNING with %d", c.ID, c.State, c.Total, creating.ID, len(w.eids))
	}
	v, err := w.Svc.GetCampaign(ctx, w.a, c.ID)
	if err != nil || v.State != keyport.CampaignRunning || v.Total != len(w.eids) || v.Counts[keyport.TargetPending] != len(w.eids) {
		t.Fatalf("campaign read back: %+v, %v", v, err)
	}
	if n := w.countAudit(t, "campaign.create"); n != 1 {
		t.Fatalf("%d campaign.create events, want 1", n)
	}
	if n, err := w.runner.Step(ctx); err != nil || n == 0 {
		t.Fatalf("the runner queued %d jobs of the created campaign: %v", n, err)
	}
}

// TestACampaignWhoseUploadFailsLateLeavesNothing: a bad line after more
// than a chunk of targets was stored fails the creation, and what it wrote
// is deleted: no campaign, CREATING or not, and no target.
func TestACampaignWhoseUploadFailsLateLeavesNothing(t *testing.T) {
	for _, dsn := range []func(testing.TB) string{storetest.SQLitePath, storetest.PostgresURL} {
		w := newCampaignWorld(t, storetest.Open(t, dsn(t)), 1100, 0)
		cr := w.startCreation(w.a)
		cr.lines(t, w.eids[:1050]...)
		creating := cr.creating(t, 1000)
		if _, err := cr.pw.Write([]byte(`{"eid": "` + string(w.eids[1050]) + `", "apdus": ["00"]}` + "\n")); err != nil {
			t.Fatal(err)
		}
		_, err := cr.end(t)
		var ie *keyport.InvalidError
		if !errors.As(err, &ie) || !strings.HasPrefix(ie.Field, "line 1051") {
			t.Fatalf("got %v, want line 1051 refused", err)
		}
		left, err := w.Store.CreatingCampaigns(ctx, time.Now().Add(time.Hour), 10)
		if err != nil || len(left) != 0 {
			t.Fatalf("campaigns left CREATING: %+v, %v", left, err)
		}
		counts, err := w.Store.CampaignCounts(ctx, creating.ID)
		if err != nil || len(counts) != 0 {
			t.Fatalf("targets left of the failed campaign: %v, %v", counts, err)
		}
		if _, err := w.Store.GetCampaign(ctx, creating.ID); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("the failed campaign's row: %v, want ErrNotFound", err)
		}
	}
}

// TestTheRunnerDeletesACampaignWhoseCreationDied: a campaign left CREATING
// by a process that died stays while its creation could still be running,
// and the runner deletes it, targets and all, once it is older than twice
// CampaignCreateTimeout.
func TestTheRunnerDeletesACampaignWhoseCreationDied(t *testing.T) {
	w := newCampaignWorld(t, storetest.Open(t, storetest.SQLitePath(t)), 3, 0)
	dead := &keyport.Campaign{ID: keyport.NewID("cmp"), ProviderID: w.a.ProviderID, Op: keyport.CampaignData,
		State: keyport.CampaignCreating, Rate: 10, ModuleCap: 1, Busy: "wait", Actor: w.a.Actor()}
	if err := w.Store.CreateCampaign(ctx, dead); err != nil {
		t.Fatal(err)
	}
	var ts []keyport.CampaignTarget
	for i := range 1500 { // more than one chunk of DeleteCampaign
		ts = append(ts, keyport.CampaignTarget{CampaignID: dead.ID, EID: w.eids[i%3], AID: fixture.AID(1),
			State: keyport.TargetPending, Detail: fmt.Sprint(i)})
	}
	if err := w.Store.AddCampaignTargets(ctx, ts); err != nil {
		t.Fatal(err)
	}
	live := w.dataCampaign(t, w.a, 10, w.eids...)

	start := time.Now()
	for _, tc := range []struct {
		after time.Duration
		gone  bool
	}{
		{0, false},
		{2*keyport.CampaignCreateTimeout - time.Minute, false},
		{2*keyport.CampaignCreateTimeout + time.Minute, true},
	} {
		w.Svc.Now = func() time.Time { return start.Add(tc.after) }
		if _, err := w.runner.Step(ctx); err != nil {
			t.Fatal(err)
		}
		counts, err := w.Store.CampaignCounts(ctx, dead.ID)
		if err != nil {
			t.Fatal(err)
		}
		_, gerr := w.Store.GetCampaign(ctx, dead.ID)
		if gone := errors.Is(gerr, keyport.ErrNotFound); gone != tc.gone || (counts[keyport.TargetPending] == 0) != tc.gone {
			t.Fatalf("%s after: campaign %v, targets %v; want gone %v", tc.after, gerr, counts, tc.gone)
		}
	}
	v, err := w.Svc.GetCampaign(ctx, w.a, live.ID)
	if err != nil || v.Total != len(w.eids) {
		t.Fatalf("the live campaign after the sweep: %+v, %v", v, err)
	}
}
