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
// each append an audit event, which is queued until the commit (Seq 0), and
// have it sealed before the commit with a head for the last chained event;
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
					if e.Seq != 0 {
						return fmt.Errorf("chained before the commit: seq %d", e.Seq)
					}
					if err := tx.(keyport.BeforeCommit).BeforeCommit(ctx, "audit-head", func(ctx context.Context, tx keyport.Repo) error {
						return tx.(keyport.AuditSealer).SealAudit(ctx, func(chained []keyport.AuditEvent) (*keyport.AuditHead, []keyport.AuditCheckpoint, error) {
							last := chained[len(chained)-1]
							return &keyport.AuditHead{Seq: last.Seq, Hash: last.Hash, MAC: []byte("mac")}, nil, nil
						})
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

// TestSealAuditWritesEventsCheckpointsAndHeadTogether: a transaction's
// queued events are chained in order when it seals them, with the head and
// checkpoints the keys function returns, all stored at the commit; events
// no one sealed are chained at the commit without a head.
func TestSealAuditWritesEventsCheckpointsAndHeadTogether(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		var queued []*keyport.AuditEvent
		var seen []int64
		err := s.Tx(ctx, func(tx keyport.Repo) error {
			for i := range 5 {
				e := &keyport.AuditEvent{Actor: "system", Action: "test", Object: fmt.Sprint(i), Detail: "{}"}
				if err := tx.AppendAudit(ctx, e); err != nil {
					return err
				}
				queued = append(queued, e)
			}
			return tx.(keyport.AuditSealer).SealAudit(ctx, func(c []keyport.AuditEvent) (*keyport.AuditHead, []keyport.AuditCheckpoint, error) {
				var cps []keyport.AuditCheckpoint
				for _, e := range c {
					seen = append(seen, e.Seq)
					if e.Seq%2 == 0 {
						cps = append(cps, keyport.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, MAC: []byte{byte(e.Seq)}, At: e.At})
					}
				}
				last := c[len(c)-1]
				return &keyport.AuditHead{Seq: last.Seq, Hash: last.Hash, MAC: []byte("head"), At: last.At}, cps, nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(seen) != "[1 2 3 4 5]" {
			t.Fatalf("keys saw %v", seen)
		}
		for i, e := range queued {
			if e.Seq != int64(i+1) || len(e.Hash) == 0 {
				t.Fatalf("queued event %d: seq %d after the commit", i, e.Seq)
			}
		}
		evs, err := s.AuditEvents(ctx, 0, 100)
		if err != nil || len(evs) != 5 {
			t.Fatalf("%d events, %v", len(evs), err)
		}
		var prev []byte
		for k, e := range evs {
			if e.Object != fmt.Sprint(k) || !bytes.Equal(e.PrevHash, prev) || !bytes.Equal(e.Hash, keyport.ChainHash(prev, e)) {
				t.Fatalf("event %d (%s) not chained in order", k, e.Object)
			}
			prev = e.Hash
		}
		cps, err := s.Checkpoints(ctx)
		if err != nil || len(cps) != 2 || cps[0].Seq != 2 || cps[1].Seq != 4 || !bytes.Equal(cps[1].Hash, evs[3].Hash) {
			t.Fatalf("checkpoints %+v, %v", cps, err)
		}
		head, err := s.AuditHead(ctx)
		if err != nil || head.Seq != 5 || !bytes.Equal(head.Hash, evs[4].Hash) || string(head.MAC) != "head" {
			t.Fatalf("head %+v, %v", head, err)
		}
		// Not sealed by anyone: chained at the commit; the head stays.
		if err := s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.AppendAudit(ctx, &keyport.AuditEvent{Actor: "system", Action: "test", Object: "5", Detail: "{}"})
		}); err != nil {
			t.Fatal(err)
		}
		evs, err = s.AuditEvents(ctx, 5, 10)
		if err != nil || len(evs) != 1 || evs[0].Seq != 6 || !bytes.Equal(evs[0].PrevHash, prev) {
			t.Fatalf("unsealed event: %+v, %v", evs, err)
		}
		if head, err := s.AuditHead(ctx); err != nil || head.Seq != 5 {
			t.Fatalf("head moved without a key: %+v, %v", head, err)
		}
		// A failed seal (the HSM refused) fails the commit: nothing stored.
		boom := errors.New("boom")
		err = s.Tx(ctx, func(tx keyport.Repo) error {
			if err := tx.AppendAudit(ctx, &keyport.AuditEvent{Actor: "system", Action: "test", Object: "6", Detail: "{}"}); err != nil {
				return err
			}
			return tx.(keyport.AuditSealer).SealAudit(ctx, func([]keyport.AuditEvent) (*keyport.AuditHead, []keyport.AuditCheckpoint, error) {
				return nil, nil, boom
			})
		})
		if !errors.Is(err, boom) {
			t.Fatalf("seal error: %v", err)
		}
		if evs, err := s.AuditEvents(ctx, 6, 10); err != nil || len(evs) != 0 {
			t.Fatalf("events after a failed seal: %+v, %v", evs, err)
		}
	})
}
