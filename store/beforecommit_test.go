package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// TestBeforeCommitRunsTheLastFunctionOfAKeyOnce: in a transaction the last
// function set under a key runs once, before the commit, and its error
// fails the commit; outside one it runs at once.
func TestBeforeCommitRunsTheLastFunctionOfAKeyOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		var runs []int
		err := s.Tx(ctx, func(tx keyport.Repo) error {
			for i := range 3 {
				if err := tx.(keyport.BeforeCommit).BeforeCommit(ctx, "k", func(context.Context, keyport.Repo) error {
					runs = append(runs, i)
					return nil
				}); err != nil {
					return err
				}
			}
			if len(runs) != 0 {
				t.Errorf("ran before the commit: %v", runs)
			}
			return nil
		})
		if err != nil || len(runs) != 1 || runs[0] != 2 {
			t.Fatalf("runs %v, %v; want [2]", runs, err)
		}
		boom := errors.New("boom")
		err = s.Tx(ctx, func(tx keyport.Repo) error {
			if err := tx.CreateJob(ctx, &keyport.Job{Ref: "job_bc", Kind: keyport.JobWebhook, State: keyport.JobQueued, Event: []byte("{}")}); err != nil {
				return err
			}
			return tx.(keyport.BeforeCommit).BeforeCommit(ctx, "k", func(context.Context, keyport.Repo) error { return boom })
		})
		if !errors.Is(err, boom) {
			t.Fatalf("err %v, want boom", err)
		}
		if _, err := s.GetJob(ctx, "job_bc"); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("the failed commit's job: %v", err)
		}
		ran := false
		if err := s.BeforeCommit(ctx, "k", func(context.Context, keyport.Repo) error { ran = true; return nil }); err != nil || !ran {
			t.Fatalf("outside a transaction: ran %v, %v", ran, err)
		}
	})
}

// TestGroupAuditAppendsChainAndKeepTheLastHead: concurrent group commits
// each append an audit event and set the head for it before the commit;
// some fail after appending. The chain has the survivors' events, numbered
// without gaps, each chained to the one before, and the head is the last
// of them.
func TestGroupAuditAppendsChainAndKeepTheLastHead(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		g := s.Group()
		g.Max = 8
		boom := errors.New("boom")
		const n = 40
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = g.Commit(ctx, func(ctx context.Context, tx keyport.Repo) error {
					e := &keyport.AuditEvent{Actor: "system", Action: "test", Object: fmt.Sprint(i), Detail: "{}"}
					if err := tx.AppendAudit(ctx, e); err != nil {
						return err
					}
					seq, hash := e.Seq, e.Hash
					if err := tx.(keyport.BeforeCommit).BeforeCommit(ctx, "audit-head", func(ctx context.Context, tx keyport.Repo) error {
						return tx.SetAuditHead(ctx, &keyport.AuditHead{Seq: seq, Hash: hash, MAC: []byte("mac")})
					}); err != nil {
						return err
					}
					if i%5 == 2 {
						return boom
					}
					return nil
				})
			}()
		}
		wg.Wait()
		ok := 0
		for i, err := range errs {
			if want := i%5 == 2; want != errors.Is(err, boom) || !want && err != nil {
				t.Errorf("caller %d: %v", i, err)
			}
			if err == nil {
				ok++
			}
		}
		evs, err := s.AuditEvents(ctx, 0, 1000)
		if err != nil || len(evs) != ok {
			t.Fatalf("%d events, want %d: %v", len(evs), ok, err)
		}
		var prev []byte
		for k, e := range evs {
			if e.Seq != int64(k+1) || !bytes.Equal(e.PrevHash, prev) || !bytes.Equal(e.Hash, keyport.ChainHash(prev, e)) {
				t.Fatalf("event %d: seq %d, chained %v", k, e.Seq, bytes.Equal(e.PrevHash, prev))
			}
			prev = e.Hash
		}
		head, err := s.AuditHead(ctx)
		last := evs[len(evs)-1]
		if err != nil || head.Seq != last.Seq || !bytes.Equal(head.Hash, last.Hash) {
			t.Fatalf("head %+v, %v; want seq %d", head, err, last.Seq)
		}
	})
}
