package store_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestWebhookHealthSumsUpEachProvidersWebhookJobs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		a := createProvider(t, s, "a@example.com")
		b := createProvider(t, s, "b@example.com")
		createProvider(t, s, "c@example.com") // no webhooks: not listed
		n := 0
		hook := func(p *keyport.Provider, state keyport.JobState, lastError string) *keyport.Job {
			t.Helper()
			n++
			j := &keyport.Job{Ref: fmt.Sprintf("job_h%d", n), Kind: keyport.JobWebhook, ProviderID: p.ID, State: keyport.JobQueued,
				NextRunAt: time.Now(), Event: []byte(`{}`)}
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
			if state != keyport.JobQueued || lastError != "" {
				j2 := *j
				j2.State, j2.Attempts, j2.LastError = state, 1, lastError
				if err := s.UpdateJob(ctx, &j2, j.State, j.Attempts); err != nil {
					t.Fatal(err)
				}
				return &j2
			}
			return j
		}
		hook(a, keyport.JobDone, "")
		lastOK := hook(a, keyport.JobDone, "")
		hook(a, keyport.JobQueued, "webhook POST: 500 Internal Server Error")
		lastFail := hook(a, keyport.JobFailed, "webhook POST: 307 Temporary Redirect")
		hook(a, keyport.JobCancelled, "the provider removed its webhook URL") // not a delivery failure
		hook(b, keyport.JobQueued, "")
		hook(b, keyport.JobQueued, "")
		// A second-key job with an error is not a webhook.
		m := jobModule(t, s, 1)
		sk := newJob(m, 0, "job_sk")
		sk.ProviderID, sk.LastError = a.ID, "wake-up: unreachable"
		if err := s.CreateJob(ctx, sk); err != nil {
			t.Fatal(err)
		}

		hs, err := s.WebhookHealth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 2 {
			t.Fatalf("health %+v", hs)
		}
		byID := map[string]keyport.WebhookHealth{}
		for _, h := range hs {
			byID[h.ProviderID] = h
		}
		ha, hb := byID[a.ID], byID[b.ID]
		if ha.Queued != 1 || ha.LastOK == nil || !ha.LastOK.Equal(lastOK.UpdatedAt) || ha.LastFailed == nil ||
			!ha.LastFailed.Equal(lastFail.UpdatedAt) || ha.LastError != "webhook POST: 307 Temporary Redirect" {
			t.Errorf("A: %+v (want last ok %v, last failure %v)", ha, lastOK.UpdatedAt, lastFail.UpdatedAt)
		}
		if hb.Queued != 2 || hb.LastOK != nil || hb.LastFailed != nil || hb.LastError != "" {
			t.Errorf("B: %+v", hb)
		}

		// ListJobs leaves out the providers it is told to.
		js, err := s.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobWebhook, States: []keyport.JobState{keyport.JobQueued},
			ExcludeProviders: []string{a.ID}})
		if err != nil || len(js) != 2 || js[0].ProviderID != b.ID || js[1].ProviderID != b.ID {
			t.Fatalf("jobs without A's: %d %v", len(js), err)
		}
	})
}
