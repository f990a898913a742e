package store_test

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// jobModule imports one module with two domains and returns it.
func jobModule(t *testing.T, s *store.Store, n int) *keyport.Module {
	t.Helper()
	b := createBatch(t, s, "jobs")
	if _, err := s.ImportModules(ctx, b.ID, modules(n, 1, 2)); err != nil {
		t.Fatal(err)
	}
	m, err := s.GetModule(ctx, testEID(n))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func newJob(m *keyport.Module, d int, ref string) *keyport.Job {
	exp := time.Now().Add(time.Hour)
	return &keyport.Job{Ref: ref, Kind: keyport.JobSecondKey, DomainID: m.Domains[d].ID, ModuleID: m.ID,
		State: keyport.JobQueued, NextRunAt: time.Now().Add(-time.Second), ExpiresAt: &exp, SecondKey: testScript(m, d)}
}

// testScript is a second-key payload for domain d of m, as stored.
func testScript(m *keyport.Module, d int) *keyport.SecondKeyPayload {
	return &keyport.SecondKeyPayload{EID: m.EID, AID: m.Domains[d].AID, APDUs: []string{"8050300008", "84820000"},
		Expect: keyport.Expectation{KVN: 0x31, KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "AAAAAA"}}, PutKey: 1, InitUpdate: 0}
}

func TestJobsOfAModuleListInSubmissionOrderAndFilterByStateAndDueTime(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		a, b := newJob(m, 0, "job_a"), newJob(m, 1, "job_b")
		b.NextRunAt = time.Now().Add(time.Hour)
		for _, j := range []*keyport.Job{a, b} {
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		all, err := s.ListJobs(ctx, keyport.JobFilter{ModuleID: m.ID, States: []keyport.JobState{keyport.JobQueued}})
		if err != nil || len(all) != 2 || all[0].Ref != "job_a" || all[1].Ref != "job_b" {
			t.Fatalf("module jobs %+v %v", all, err)
		}
		due, err := s.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobSecondKey, States: []keyport.JobState{keyport.JobQueued}, DueBefore: time.Now()})
		if err != nil || len(due) != 1 || due[0].Ref != "job_a" {
			t.Fatalf("due jobs %+v %v", due, err)
		}
		got, err := s.GetJob(ctx, "job_b")
		if err != nil || got.DomainID != m.Domains[1].ID || got.ExpiresAt == nil || !reflect.DeepEqual(got.SecondKey, testScript(m, 1)) {
			t.Fatalf("GetJob %+v %v", got, err)
		}
		if _, err := s.GetJob(ctx, "job_nope"); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("unknown job: %v", err)
		}
	})
}

func TestListJobsNewestTakesTheLastJobsTheFilterSelectsStillOldestFirst(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		for i := range 6 {
			j := newJob(m, i%2, fmt.Sprintf("job_n%d", i))
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		refs := func(f keyport.JobFilter) string {
			t.Helper()
			jobs, err := s.ListJobs(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, j := range jobs {
				out = append(out, j.Ref)
			}
			return strings.Join(out, " ")
		}
		for name, c := range map[string]struct {
			f    keyport.JobFilter
			want string
		}{
			"first":               {keyport.JobFilter{ModuleID: m.ID, Limit: 3}, "job_n0 job_n1 job_n2"},
			"newest":              {keyport.JobFilter{ModuleID: m.ID, Limit: 3, Newest: true}, "job_n3 job_n4 job_n5"},
			"newest of a domain":  {keyport.JobFilter{DomainID: m.Domains[0].ID, Limit: 2, Newest: true}, "job_n2 job_n4"},
			"newest, fewer there": {keyport.JobFilter{DomainID: m.Domains[1].ID, Limit: 10, Newest: true}, "job_n1 job_n3 job_n5"},
		} {
			if got := refs(c.f); got != c.want {
				t.Errorf("%s: %q, want %q", name, got, c.want)
			}
		}
	})
}

func TestUpdateJobIsConditionalOnStateAndAttemptsSoOnlyOneOfTwoWriterWins(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 2)
		j := newJob(m, 0, "job_c")
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				x := *j
				x.State = keyport.JobSent
				errs[i] = s.UpdateJob(ctx, &x, keyport.JobQueued, 0)
			}()
		}
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, keyport.ErrConflict):
				t.Fatalf("update: %v", err)
			}
		}
		if wins != 1 {
			t.Fatalf("%d updates won, want exactly 1", wins)
		}
	})
}

func TestUpdateJobSeesAWriteThatChangedNeitherStateNorAttempts(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 2)
		if err := s.CreateJob(ctx, newJob(m, 0, "job_v")); err != nil {
			t.Fatal(err)
		}
		a, err := s.GetJob(ctx, "job_v")
		if err != nil {
			t.Fatal(err)
		}
		b := *a // read at the same time by another writer
		a.LastError = "trigger: receipt UNDELIV"
		if err := s.UpdateJob(ctx, a, keyport.JobQueued, 0); err != nil || a.Version != 1 {
			t.Fatalf("first write: version %d, %v", a.Version, err)
		}
		b.Attempts, b.LastError = 1, ""
		if err := s.UpdateJob(ctx, &b, keyport.JobQueued, 0); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("a write from the older read: %v, want ErrConflict", err)
		}
		got, err := s.GetJob(ctx, "job_v")
		if err != nil {
			t.Fatal(err)
		}
		if got.Version != 1 || got.Attempts != 0 || got.LastError != "trigger: receipt UNDELIV" {
			t.Fatalf("stored: version %d, %d attempts, %q", got.Version, got.Attempts, got.LastError)
		}
		// Read again, the second writer's write goes through.
		got.Attempts = 1
		if err := s.UpdateJob(ctx, got, keyport.JobQueued, 0); err != nil || got.Version != 2 {
			t.Fatalf("write after reading again: version %d, %v", got.Version, err)
		}
		if p, err := s.PendingModuleJobs(ctx, m.ID, 10); err != nil || len(p) != 1 || p[0].Version != 2 {
			t.Fatalf("pending jobs %+v %v", p, err)
		}
	})
}

func TestAdminSessionLeaseIsHeldByOneSessionUntilReleasedOrExpired(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 3)
		now := time.Now()
		if err := s.AcquireLease(ctx, m.ID, "ses_a", now, now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.AcquireLease(ctx, m.ID, "ses_b", now, now.Add(time.Minute)); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("second session got the lease: %v", err)
		}
		if err := s.AcquireLease(ctx, m.ID, "ses_a", now, now.Add(2*time.Minute)); err != nil {
			t.Fatalf("holder cannot renew: %v", err)
		}
		later := now.Add(3 * time.Minute)
		if err := s.AcquireLease(ctx, m.ID, "ses_b", later, later.Add(time.Minute)); err != nil {
			t.Fatalf("expired lease not taken over: %v", err)
		}
		if err := s.ReleaseLease(ctx, m.ID, "ses_a"); err != nil { // not the holder: no effect
			t.Fatal(err)
		}
		if err := s.AcquireLease(ctx, m.ID, "ses_c", later, later.Add(time.Minute)); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("a stale holder released another's lease: %v", err)
		}
		if err := s.ReleaseLease(ctx, m.ID, "ses_b"); err != nil {
			t.Fatal(err)
		}
		if err := s.AcquireLease(ctx, m.ID, "ses_c", later, later.Add(time.Minute)); err != nil {
			t.Fatalf("released lease not free: %v", err)
		}
		if err := s.ReleaseLease(ctx, m.ID, ""); err != nil { // a resuming module takes over
			t.Fatal(err)
		}
		if err := s.AcquireLease(ctx, m.ID, "ses_d", later, later.Add(time.Minute)); err != nil {
			t.Fatalf("broken lease not free: %v", err)
		}
	})
}

func TestSetDomainKeysRecordsTheConfirmedKeySetAndCounter(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 4)
		kcv := map[keyport.KeyUsage]string{keyport.UsageENC: "111111", keyport.UsageMAC: "222222", keyport.UsageDEK: "333333"}
		if err := s.SetDomainKeys(ctx, m.Domains[0].ID, 0x31, kcv, 0); err != nil {
			t.Fatal(err)
		}
		if err := s.SetDomainKeys(ctx, m.Domains[1].ID, 0x30, nil, 7); err != nil {
			t.Fatal(err)
		}
		d0, _ := s.GetDomain(ctx, m.EID, m.Domains[0].AID)
		d1, _ := s.GetDomain(ctx, m.EID, m.Domains[1].AID)
		if d0.KVN != 0x31 || d0.KCV[keyport.UsageMAC] != "222222" || d1.SeqCounter != 7 || d1.KCV[keyport.UsageENC] != "EE72CB" {
			t.Fatalf("domains after SetDomainKeys: %+v %+v", d0, d1)
		}
	})
}

func TestPendingModuleJobsJoinDomainStateAndWebhookURLOldestFirst(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		p := &keyport.Provider{Name: "P", Kind: keyport.ProviderKind("bank"), Email: "p@example.com", Status: keyport.ProviderStatus("active"), WebhookURL: "https://p.example/hook"}
		if err := s.CreateProvider(ctx, p); err != nil {
			t.Fatal(err)
		}
		a, b, c := newJob(m, 0, "job_a"), newJob(m, 1, "job_b"), newJob(m, 1, "job_c")
		a.ProviderID = p.ID
		for _, j := range []*keyport.Job{a, b, c} {
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		c.State = keyport.JobDone
		if err := s.UpdateJob(ctx, c, keyport.JobQueued, 0); err != nil {
			t.Fatal(err)
		}
		got, err := s.PendingModuleJobs(ctx, m.ID, 5)
		if err != nil || len(got) != 2 {
			t.Fatalf("pending %+v %v", got, err)
		}
		if got[0].Ref != "job_a" || got[0].State != keyport.JobQueued || got[0].ID != a.ID || got[0].DomainID != m.Domains[0].ID ||
			got[0].DomainState != m.Domains[0].State || got[0].WebhookURL != p.WebhookURL || !reflect.DeepEqual(got[0].SecondKey, testScript(m, 0)) || got[0].ExpiresAt == nil {
			t.Fatalf("first pending job %+v", got[0])
		}
		if got[1].Ref != "job_b" || got[1].WebhookURL != "" || got[1].DomainState != m.Domains[1].State {
			t.Fatalf("second pending job %+v", got[1])
		}
		if one, err := s.PendingModuleJobs(ctx, m.ID, 1); err != nil || len(one) != 1 || one[0].Ref != "job_a" {
			t.Fatalf("limit 1: %+v %v", one, err)
		}
	})
}

func TestReleaseIdleLeaseOnlyWhenNoJobOfTheModuleIsPending(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		now := time.Now()
		if err := s.AcquireLease(ctx, m.ID, "ses_a", now, now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		j := newJob(m, 0, "job_a")
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.ReleaseIdleLease(ctx, m.ID, "ses_a"); ok || err != nil {
			t.Fatalf("released with a QUEUED job: %v %v", ok, err)
		}
		j.State = keyport.JobDone
		if err := s.UpdateJob(ctx, j, keyport.JobQueued, 0); err != nil {
			t.Fatal(err)
		}
		if ok, err := s.ReleaseIdleLease(ctx, m.ID, "ses_b"); ok || err != nil {
			t.Fatalf("released another holder's lease: %v %v", ok, err)
		}
		if ok, err := s.ReleaseIdleLease(ctx, m.ID, "ses_a"); !ok || err != nil {
			t.Fatalf("idle lease not released: %v %v", ok, err)
		}
		if err := s.AcquireLease(ctx, m.ID, "ses_c", now, now.Add(time.Minute)); err != nil {
			t.Fatalf("lease still held after release: %v", err)
		}
	})
}

func TestTakingAnAdminLeaseRecordsTheModulesVisitAndARefusedOneDoesNot(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		if m.LastSeen != nil {
			t.Fatalf("a module never visited has last_seen %v", m.LastSeen)
		}
		first := time.Now().UTC().Truncate(time.Second)
		if err := s.AcquireLease(ctx, m.ID, "ses_a", first, first.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		seen := func() time.Time {
			t.Helper()
			got, err := s.GetModule(ctx, m.EID)
			if err != nil || got.LastSeen == nil {
				t.Fatalf("module after a lease: %+v, %v", got, err)
			}
			return got.LastSeen.UTC()
		}
		if got := seen(); !got.Equal(first) {
			t.Fatalf("last_seen %v after the lease taken at %v", got, first)
		}
		// Another session, refused while ses_a holds it: no visit.
		if err := s.AcquireLease(ctx, m.ID, "ses_b", first.Add(10*time.Second), first.Add(time.Hour)); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("second session: %v, want ErrConflict", err)
		}
		if got := seen(); !got.Equal(first) {
			t.Fatalf("last_seen %v after a refused lease, want %v", got, first)
		}
		// The holder's renewal is a visit.
		if err := s.AcquireLease(ctx, m.ID, "ses_a", first.Add(20*time.Second), first.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if got := seen(); !got.Equal(first.Add(20 * time.Second)) {
			t.Fatalf("last_seen %v after the renewal, want %v", got, first.Add(20*time.Second))
		}
	})
}
