package keyport_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// wakeAfterRead is a Store whose first GetJob, once it has read the job,
// lets another replica's delivery worker wake every due module: the
// wake-up lands between a cancel's read of a job and its write.
type wakeAfterRead struct {
	keyport.Store
	once  sync.Once
	other *keyport.Service
	woken int
	err   error
}

func (s *wakeAfterRead) GetJob(ctx context.Context, ref string) (*keyport.Job, error) {
	j, err := s.Store.GetJob(ctx, ref)
	s.once.Do(func() { s.woken, s.err = s.other.WakeDue(ctx, 100) })
	return j, err
}

// PendingModuleJobs is a read of jobs too (TriggerFailed's).
func (s *wakeAfterRead) PendingModuleJobs(ctx context.Context, moduleID int64, limit int) ([]keyport.PendingJob, error) {
	js, err := s.Store.PendingModuleJobs(ctx, moduleID, limit)
	s.once.Do(func() { s.woken, s.err = s.other.WakeDue(ctx, 100) })
	return js, err
}

// wakeBetween puts a wakeAfterRead in front of svc's store.
func wakeBetween(svc *keyport.Service, st *store.Store) *wakeAfterRead {
	w := &wakeAfterRead{Store: st, other: &keyport.Service{Store: st, Custody: svc.Custody}}
	svc.Store = w
	return w
}

// queuedJob is a world with one module whose domain 1 a provider claimed
// and has a second-key job QUEUED for.
func queuedJob(t *testing.T, st *store.Store) (*fixture.World, keyport.Principal, keyport.EID, *keyport.Job) {
	t.Helper()
	w := fixture.New(t, st, 1, 1)
	prov, _, wk := w.Provider(t, "Queue Bank", fixture.RSAKeys()[0])
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := w.Svc.Claim(ctx, prov, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, w.Keys[eid][aid], secondKeys)
	if err != nil {
		t.Fatal(err)
	}
	j, err := w.Svc.SubmitScript(ctx, prov, eid, aid, req)
	if err != nil {
		t.Fatal(err)
	}
	return w, prov, eid, j
}

func TestCancelOfAQueuedJobWinsOverAWakeUpSentBetweenItsReadAndItsWrite(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w, prov, _, j := queuedJob(t, st)
		wake := wakeBetween(w.Svc, st)
		got, err := w.Svc.CancelJob(ctx, prov, j.Ref)
		if wake.err != nil || wake.woken != 1 {
			t.Fatalf("the other replica woke %d jobs: %v", wake.woken, wake.err)
		}
		if err != nil {
			t.Fatalf("cancel with a wake-up sent meanwhile: %v", err)
		}
		stored, err := st.GetJob(ctx, j.Ref)
		if err != nil {
			t.Fatal(err)
		}
		// The wake-up counts, and the cancel is what ends the job.
		if got.State != keyport.JobCancelled || stored.State != keyport.JobCancelled || stored.Attempts != 1 {
			t.Fatalf("job returned %s, stored %s with %d attempts", got.State, stored.State, stored.Attempts)
		}
		if n := w.CountAudit(t, "job.cancel"); n != 1 {
			t.Fatalf("%d job.cancel events", n)
		}
		// A job no longer QUEUED is refused in words, whatever the cause.
		if _, err := w.Svc.CancelJob(ctx, prov, j.Ref); !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "job is CANCELLED") {
			t.Fatalf("cancel twice: %v", err)
		}
	})
}

func TestCampaignCancelLeavesNoJobQueuedWhenAWakeUpLandsBetweenItsReadAndItsWrite(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w := newCampaignWorld(t, st, 5, 0)
		c := w.dataCampaign(t, w.a, 10, w.eids...)
		if n, err := w.runner.Step(ctx); err != nil || n != 5 {
			t.Fatalf("step queued %d: %v", n, err)
		}
		wake := wakeBetween(w.Svc, st)
		v, err := w.Svc.CancelCampaign(ctx, w.a, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if wake.err != nil || wake.woken != 5 {
			t.Fatalf("the other replica woke %d jobs: %v", wake.woken, wake.err)
		}
		if n := w.jobs(t, keyport.JobQueued); n != 0 {
			t.Fatalf("%d jobs still QUEUED after the campaign's cancel", n)
		}
		if n := w.jobs(t, keyport.JobCancelled); n != 5 {
			t.Fatalf("%d jobs CANCELLED, want 5", n)
		}
		if v.State != keyport.CampaignCancelled {
			t.Fatalf("campaign %s", v.State)
		}
	})
}

func TestAFailedTriggerIsRecordedOnTheJobWhenItsWakeUpCountsItselfMeanwhile(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w, _, eid, j := queuedJob(t, st)
		wake := wakeBetween(w.Svc, st)
		if err := w.Svc.TriggerFailed(ctx, eid, "delivery receipt: UNDELIV"); err != nil {
			t.Fatal(err)
		}
		if wake.err != nil || wake.woken != 1 {
			t.Fatalf("the other replica woke %d jobs: %v", wake.woken, wake.err)
		}
		got, err := st.GetJob(ctx, j.Ref)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != keyport.JobQueued || got.Attempts != 1 || got.LastError != keyport.TriggerErrorPrefix+"delivery receipt: UNDELIV" {
			t.Fatalf("job %s, %d attempts, last error %q", got.State, got.Attempts, got.LastError)
		}
	})
}

// receiptDuringWake is a Trigger whose trigger fails at once: the failure
// receipt is recorded while the wake-up that sent it has yet to count
// itself on the job.
type receiptDuringWake struct{ svc *keyport.Service }

func (r receiptDuringWake) Wake(ctx context.Context, eid keyport.EID) error {
	return r.svc.TriggerFailed(ctx, eid, "PoR: counter low")
}

func TestAWakeUpCountsWhenItsTriggersFailureIsRecordedFirst(t *testing.T) {
	storetest.Each(t, func(t *testing.T, st *store.Store) {
		w, _, _, j := queuedJob(t, st)
		w.Svc.Trigger = receiptDuringWake{w.Svc}
		if n, err := w.Svc.WakeDue(ctx, 10); err != nil || n != 1 {
			t.Fatalf("woke %d: %v", n, err)
		}
		got, err := st.GetJob(ctx, j.Ref)
		if err != nil {
			t.Fatal(err)
		}
		// Both writes stand: the wake-up's attempt and the trigger's failure.
		if got.State != keyport.JobQueued || got.Attempts != 1 || got.LastError != keyport.TriggerErrorPrefix+"PoR: counter low" {
			t.Fatalf("job %s, %d attempts, last error %q", got.State, got.Attempts, got.LastError)
		}
	})
}
