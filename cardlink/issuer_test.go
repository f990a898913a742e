package cardlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
)

// probeOp is an issuer operation for the framework's tests: one step that
// reads the ARA-M refresh tag inside the secure session.
type probeOp struct{}

const opProbe keyport.IssuerOp = "test-probe"

func init() {
	keyport.RegisterIssuerOperation(opProbe, func(*keyport.IssuerPayload) (keyport.IssuerOperation, error) { return probeOp{}, nil })
}

func (probeOp) Target() []byte { return gp.ARAMAID }
func (probeOp) Commands(_ context.Context, _ *keyport.IssuerEnv, n int, _ [][]gp.Response) ([]gp.Command, error) {
	return []gp.Command{gp.GetData(gp.DataRefreshTag)}, nil
}
func (probeOp) Judge(_ *keyport.IssuerEnv, n int, answers [][]gp.Response) keyport.IssuerVerdict {
	if v, failed := keyport.FirstError(nil, answers[n]); failed {
		return v
	}
	if len(answers[n]) != 1 || len(answers[n][0].Data) != 11 {
		return keyport.IssuerVerdict{Outcome: keyport.IssuerFailed, Cause: "no refresh tag"}
	}
	return keyport.IssuerVerdict{Outcome: keyport.IssuerDone}
}
func (probeOp) Queued(context.Context, keyport.Repo, *keyport.IssuerEnv) error { return nil }
func (probeOp) Finish(context.Context, keyport.Repo, *keyport.IssuerEnv, keyport.IssuerVerdict) (keyport.DomainState, error) {
	return "", nil
}

func queueProbe(t *testing.T, w *cardlinktest.IssuerWorld) *keyport.Job {
	t.Helper()
	d, err := w.Svc.Store.GetDomain(ctx, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	j, err := w.Svc.QueueIssuerJob(ctx, keyport.IssuerJobRequest{EID: w.EID, Domain: d, Op: opProbe, Actor: "test", Action: "probe.queue"})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestAnIssuerJobOpensSCP03WithTheISDKeysInTheHSMAndCompletesOverTwoScripts(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	// Events are queued (no worker sends them here).
	if err := w.Store.SetWebhookURL(ctx, w.Prov.ProviderID, "https://bank.example/keyport"); err != nil {
		t.Fatal(err)
	}
	j := queueProbe(t, w)
	rep, err := w.Agent().Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scripts != 2 {
		t.Errorf("the module ran %d scripts, want 2 (SELECT + INITIALIZE UPDATE, then EXTERNAL AUTHENTICATE + step)", rep.Scripts)
	}
	got, err := w.Svc.GetJob(ctx, w.Prov, j.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != keyport.JobDone || got.Result == nil || !got.Result.Confirmed {
		t.Fatalf("job %s: %+v", got.State, got.Result)
	}
	if got.Result.SequenceCounter == nil {
		t.Error("the card's sequence counter was not recorded")
	}
	if v := got.View(); v.Operation != opProbe || v.AID != w.AID {
		t.Errorf("view %+v", v)
	}
	hooks, err := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobWebhook, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, h := range hooks {
		var ev keyport.WebhookEvent
		if err := json.Unmarshal(h.Event, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Job.ID == j.Ref {
			types = append(types, ev.Type+"/"+string(ev.Job.State))
		}
	}
	if got := strings.Join(types, " "); got != "job.queued/QUEUED job.step/SENT job.step/SENT job.done/DONE" {
		t.Errorf("webhook events %s", got)
	}
	for _, a := range []string{"probe.queue", "issuer.start", "issuer.authenticated", string(opProbe) + ".done"} {
		if w.CountAudit(t, a) != 1 {
			t.Errorf("audit %s: %d events, want 1", a, w.CountAudit(t, a))
		}
	}
}

func TestAnIssuerJobForAModuleWithoutISDKeysIsRefusedAndNotQueued(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	d, err := w.Svc.Store.GetDomain(ctx, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Svc.QueueIssuerJob(ctx, keyport.IssuerJobRequest{EID: w.EID, Domain: d, Op: opProbe, Actor: "test", Action: "probe.queue"})
	if !errors.Is(err, keyport.ErrNoISDKeys) || !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("imported module: %v", err)
	}
	jobs, _ := w.Svc.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobIssuer})
	if len(jobs) != 0 {
		t.Fatalf("%d issuer jobs stored", len(jobs))
	}
}
