package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// TestGroupCommitsEachCallersWritesAsItsOwnTransaction runs many
// concurrent group commits, some of which fail after a first write:
// every caller that succeeded finds both its rows, every caller that failed
// finds neither and gets its own error, whatever group it shared.
func TestGroupCommitsEachCallersWritesAsItsOwnTransaction(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		g := s.Group()
		g.Max = 8
		boom := errors.New("boom")
		const n = 60
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = g.Commit(context.Background(), func(ctx context.Context, tx keyport.Repo) error {
					for k := range 2 {
						if err := tx.CreateJob(ctx, &keyport.Job{Ref: fmt.Sprintf("job_g%d_%d", i, k), Kind: keyport.JobWebhook,
							State: keyport.JobQueued, NextRunAt: time.Now(), Event: []byte("{}")}); err != nil {
							return err
						}
						if i%7 == 3 && k == 0 {
							return boom
						}
					}
					if i%11 == 5 { // a constraint violation on the second caller's own row
						return tx.CreateJob(ctx, &keyport.Job{Ref: fmt.Sprintf("job_g%d_0", i), Kind: keyport.JobWebhook,
							State: keyport.JobQueued, NextRunAt: time.Now(), Event: []byte("{}")})
					}
					return nil
				})
			}()
		}
		wg.Wait()
		for i := range n {
			fails := i%7 == 3 || i%11 == 5
			switch {
			case i%7 == 3 && !errors.Is(errs[i], boom):
				t.Errorf("caller %d: %v, want its own error", i, errs[i])
			case i%7 != 3 && i%11 == 5 && !errors.Is(errs[i], keyport.ErrConflict):
				t.Errorf("caller %d: %v, want ErrConflict", i, errs[i])
			case !fails && errs[i] != nil:
				t.Errorf("caller %d: %v", i, errs[i])
			}
			for k := range 2 {
				_, err := s.GetJob(context.Background(), fmt.Sprintf("job_g%d_%d", i, k))
				if fails && !errors.Is(err, keyport.ErrNotFound) || !fails && err != nil {
					t.Errorf("caller %d (failed %v) row %d: %v", i, fails, k, err)
				}
			}
		}
	})
}

// TestGroupTurnsAPanicIntoThatCallersErrorAndLetsTheOthersCommit: one
// caller's bug must not strand the rest of its group.
func TestGroupTurnsAPanicIntoThatCallersErrorAndLetsTheOthersCommit(t *testing.T) {
	s := storetest.Open(t, storetest.SQLitePath(t))
	g := s.Group()
	const n = 20
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = g.Commit(context.Background(), func(ctx context.Context, tx keyport.Repo) error {
				if i == 7 {
					panic("caller bug")
				}
				return tx.CreateJob(ctx, &keyport.Job{Ref: fmt.Sprintf("job_p%d", i), Kind: keyport.JobWebhook,
					State: keyport.JobQueued, NextRunAt: time.Now(), Event: []byte("{}")})
			})
		}()
	}
	wg.Wait()
	for i := range n {
		_, gerr := s.GetJob(context.Background(), fmt.Sprintf("job_p%d", i))
		switch {
		case i == 7 && (errs[i] == nil || !strings.Contains(errs[i].Error(), "caller bug")):
			t.Errorf("panicking caller got %v", errs[i])
		case i != 7 && (errs[i] != nil || gerr != nil):
			t.Errorf("caller %d: %v, row: %v", i, errs[i], gerr)
		}
	}
}
