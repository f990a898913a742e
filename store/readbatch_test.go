package store_test

import (
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestCoalescedAdminSessionReadsAnswerEachModuleAsItsOwnReadDoes(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "coalesced")
		if _, err := s.ImportModules(ctx, b.ID, modules(1, 6, 2)); err != nil {
			t.Fatal(err)
		}
		var ms []*keyport.Module
		for i := 1; i <= 6; i++ {
			m, err := s.GetModule(ctx, testEID(i))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SetModuleKeys(ctx, m.ID, nil, []byte("sealed PSK of "+string(m.EID))); err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
		}
		// Module 1: two pending jobs (the older is its first); module 2:
		// one DONE and one SENT; module 3: only a DONE one; 4–6 none.
		jobs := []*keyport.Job{newJob(ms[0], 1, "job_1a"), newJob(ms[0], 0, "job_1b"), newJob(ms[1], 0, "job_2a"),
			newJob(ms[1], 1, "job_2b"), newJob(ms[2], 0, "job_3a")}
		for _, j := range jobs {
			if err := s.CreateJob(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		for _, j := range []*keyport.Job{jobs[2], jobs[4]} {
			j.State = keyport.JobDone
			if err := s.UpdateJob(ctx, j, keyport.JobQueued, 0); err != nil {
				t.Fatal(err)
			}
		}
		jobs[3].State = keyport.JobSent
		if err := s.UpdateJob(ctx, jobs[3], keyport.JobQueued, 0); err != nil {
			t.Fatal(err)
		}
		// A fetch of several keys, repeated ones among them, against the
		// one-key answers.
		var ids []int64
		var eids []keyport.EID
		for _, m := range ms {
			ids = append(ids, m.ID)
			eids = append(eids, m.EID)
		}
		pending, err := store.OldestPendingOfForTest(s, append(ids, 999999, ids[0]))
		if err != nil {
			t.Fatal(err)
		}
		want := map[int64]string{ms[0].ID: "job_1a", ms[1].ID: "job_2b"}
		if len(pending) != len(want) {
			t.Fatalf("oldest pending of %d modules: %+v, want %v", len(ids), pending, want)
		}
		for id, ref := range want {
			alone, err := s.PendingModuleJobs(ctx, id, 5)
			if err != nil {
				t.Fatal(err)
			}
			if got := pending[id]; len(got) != 1 || got[0].Ref != ref || !reflect.DeepEqual(got[0], alone[0]) {
				t.Fatalf("module %d: %+v, want %s as its own read has it: %+v", id, got, ref, alone[0])
			}
		}
		mods, err := store.AdminModulesOfForTest(s, append(eids, testEID(99999)))
		if err != nil || len(mods) != len(ms) {
			t.Fatalf("admin modules: %d, %v; want %d", len(mods), err, len(ms))
		}
		for _, m := range ms {
			if got := mods[m.EID]; got == nil || got.ID != m.ID || got.ISDAID != m.ISDAID || string(got.PSK) != "sealed PSK of "+string(m.EID) {
				t.Fatalf("admin module %s: %+v", m.EID, got)
			}
		}
		// Concurrent callers, each module asked for several times at once:
		// every caller gets its own module's answer, unknown EIDs none.
		var wg sync.WaitGroup
		errs := make(chan error, 400)
		for round := range 40 {
			for i, m := range ms {
				wg.Add(2)
				go func() {
					defer wg.Done()
					am, err := s.GetAdminModule(ctx, m.EID)
					if err != nil || am.ID != m.ID {
						errs <- errors.New("admin module of " + string(m.EID) + ": wrong answer or " + errString(err))
					}
				}()
				go func() {
					defer wg.Done()
					got, err := s.PendingModuleJobs(ctx, m.ID, 1)
					ref, has := want[m.ID]
					if err != nil || len(got) != map[bool]int{true: 1}[has] || (has && got[0].Ref != ref) {
						errs <- errors.New("pending of module " + string(m.EID) + ": wrong answer or " + errString(err))
					}
				}()
				if (round+i)%5 == 0 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						if _, err := s.GetAdminModule(ctx, testEID(99999)); !errors.Is(err, keyport.ErrNotFound) {
							errs <- errors.New("unknown EID: " + errString(err))
						}
					}()
				}
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
