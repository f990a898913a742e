package store_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// testKeys keys an audit head and every fourth event's checkpoint with a
// hash standing in for the HSM's MAC.
func testKeys(chained []keyport.AuditEvent) (*keyport.AuditHead, []keyport.AuditCheckpoint, error) {
	var cps []keyport.AuditCheckpoint
	for _, e := range chained {
		if e.Seq%4 == 0 {
			cps = append(cps, keyport.AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, MAC: testMAC("cp", e.Seq, e.Hash), At: e.At})
		}
	}
	last := chained[len(chained)-1]
	return &keyport.AuditHead{Seq: last.Seq, Hash: last.Hash, MAC: testMAC("head", last.Seq, last.Hash), At: last.At}, cps, nil
}

func testMAC(kind string, seq int64, hash []byte) []byte {
	m := sha256.Sum256([]byte(fmt.Sprintf("%s|%d|%x", kind, seq, hash)))
	return m[:]
}

// claimWrite is a claim of domain n (1-based) of the test batch.
func claimWrite(t testing.TB, s *store.Store, providerID, wrappingKeyID string, n int, id, idem string) keyport.ClaimWrite {
	t.Helper()
	d, err := s.GetDomain(ctx, testEID(n), testAID(1))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	return keyport.ClaimWrite{
		Claim: &keyport.Claim{ID: id, ProviderID: providerID, DomainID: d.ID, EID: d.EID, AID: d.AID, WrappingKeyID: wrappingKeyID,
			IdempotencyKey: idem, RequestHash: "h", Package: bytes.Repeat([]byte{'p'}, 3000), CreatedAt: at},
		From:   keyport.From(keyport.EventClaim),
		Outbox: &keyport.OutboxMessage{Topic: "domain.assigned", Payload: `{"claim":"` + id + `"}`, CreatedAt: at},
		Audit:  &keyport.AuditEvent{At: at, Actor: "provider:" + providerID, Action: "claim", Object: "domain:" + id, Detail: "{}"},
	}
}

// TestClaimWriterCommitsEachWinnerOnceAndKeepsTheChainWhole drives the
// claim writer through each of its ways to commit, with a second store on
// the same database (another replica) appending to the audit chain in
// between: on PostgreSQL a batch chained on the head this process saw last
// (checked by the counters), a guess made wrong by the other replica, a
// guessed batch whose claim lost, a reused idempotency key (the batch
// then commits claim by claim), and then all of these at once from many
// goroutines. Every claim that won has its domain, claim, outbox row and
// audit event; every one that lost has none of them; the chain, its
// checkpoints and its keyed head verify.
func TestClaimWriterCommitsEachWinnerOnceAndKeepsTheChainWhole(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s, other := storetest.Open(t, dsn), storetest.Open(t, dsn)
		pg := s.Dialect() == "postgres"
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 80, 1)
		p := createProvider(t, s, "a@x.example")
		wk := createWrappingKey(t, s, p.ID)
		cw := s.ClaimCommits()
		won := map[string]keyport.ClaimWrite{}
		var mu sync.Mutex
		claim := func(n int, id, idem string) error {
			w := claimWrite(t, s, p.ID, wk.ID, n, id, idem)
			err := cw.WriteClaim(ctx, w, testKeys)
			if err == nil {
				mu.Lock()
				won[id] = w
				mu.Unlock()
			}
			return err
		}
		guesses := func(wantHits, wantMisses uint64) {
			t.Helper()
			if !pg {
				return
			}
			if hits, misses := store.ClaimGuessesForTest(s); hits != wantHits || misses != wantMisses {
				t.Fatalf("guessed heads: %d committed, %d wrong; want %d, %d", hits, misses, wantHits, wantMisses)
			}
		}
		appendOther := func(i int) {
			if err := other.AppendAudit(ctx, &keyport.AuditEvent{Actor: "system", Action: "other", Object: fmt.Sprint(i), Detail: "{}"}); err != nil {
				t.Fatal(err)
			}
		}
		otherEvents := 0

		// No head seen yet: read. Then the head this process wrote: guessed.
		for n := 1; n <= 2; n++ {
			if err := claim(n, fmt.Sprintf("clm_%d", n), ""); err != nil {
				t.Fatal(err)
			}
		}
		guesses(1, 0)
		// Another replica appended: the guess is wrong, the head is read.
		appendOther(0)
		otherEvents++
		if err := claim(3, "clm_3", ""); err != nil {
			t.Fatal(err)
		}
		guesses(1, 1)
		for n := 4; n < 4+store.GuessSkip; n++ {
			if err := claim(n, fmt.Sprintf("clm_%d", n), ""); err != nil {
				t.Fatal(err)
			}
		}
		guesses(1, 1)
		// A guessed batch whose claim lost: the seal fails, the read path
		// gives the claim its ErrDomainTaken.
		if err := claim(1, "clm_again_1", ""); !errors.Is(err, keyport.ErrDomainTaken) {
			t.Fatalf("claim of a taken domain: %v", err)
		}
		guesses(1, 2)
		// A reused idempotency key fails its statement: the batch commits
		// claim by claim and the claim gets ErrConflict, not ErrDomainTaken.
		if err := claim(20, "clm_20", "dup"); err != nil {
			t.Fatal(err)
		}
		if err := claim(21, "clm_21", "dup"); !errors.Is(err, keyport.ErrConflict) || errors.Is(err, keyport.ErrDomainTaken) {
			t.Fatalf("reused idempotency key: %v", err)
		}

		// All at once: distinct domains, one domain raced by ten, reused
		// keys, and the other replica appending.
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		raced := make(chan error, 10)
		for n := 30; n < 70; n++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := claim(n, fmt.Sprintf("clm_%d", n), ""); err != nil {
					errs <- fmt.Errorf("claim %d: %w", n, err)
				}
			}()
		}
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				raced <- claim(70, fmt.Sprintf("clm_race_%d", i), "")
			}()
		}
		for i := range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := claim(71+i, fmt.Sprintf("clm_dup_%d", i), "dup2"); err != nil && !errors.Is(err, keyport.ErrConflict) {
					errs <- fmt.Errorf("reused key %d: %w", i, err)
				}
			}()
		}
		for i := 1; i <= 15; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				appendOther(i)
			}()
		}
		otherEvents += 15
		wg.Wait()
		close(errs)
		close(raced)
		for err := range errs {
			t.Error(err)
		}
		winners := 0
		for err := range raced {
			switch {
			case err == nil:
				winners++
			case !errors.Is(err, keyport.ErrDomainTaken):
				t.Errorf("raced claim: %v", err)
			}
		}
		if winners != 1 {
			t.Fatalf("%d claims of one domain won", winners)
		}
		dups := 0
		for id := range won {
			if len(id) > 8 && id[:8] == "clm_dup_" {
				dups++
			}
		}
		if dups != 1 {
			t.Fatalf("%d claims with one idempotency key won", dups)
		}

		// What won is stored, once; what lost is not.
		claims, err := store.QueryStringsForTest(s, `SELECT id FROM claims ORDER BY id`)
		if err != nil || len(claims) != len(won) {
			t.Fatalf("%d claims stored, %d won (%v)", len(claims), len(won), err)
		}
		for _, id := range claims {
			if _, ok := won[id]; !ok {
				t.Errorf("claim %s is stored but did not win", id)
			}
		}
		outbox, err := s.ListOutbox(ctx, "domain.assigned", 1000)
		if err != nil || len(outbox) != len(won) {
			t.Fatalf("%d outbox rows, %d claims won (%v)", len(outbox), len(won), err)
		}
		all := verifyChain(t, s)
		if len(all) != len(won)+otherEvents {
			t.Fatalf("%d audit events, want %d claims and %d of the other replica", len(all), len(won), otherEvents)
		}
		for id, w := range won {
			e := all[w.Audit.Seq-1]
			if e.Object != "domain:"+id || !bytes.Equal(e.Hash, w.Audit.Hash) {
				t.Errorf("claim %s: its event says seq %d, the chain has %s there", id, w.Audit.Seq, e.Object)
			}
			d, err := s.GetDomain(ctx, w.Claim.EID, w.Claim.AID)
			if err != nil || d.State != keyport.Assigned || d.OwnerID != p.ID {
				t.Errorf("claim %s: domain %+v, %v", id, d, err)
			}
		}
		head, err := s.AuditHead(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The other replica's appends are unkeyed: the head is the last
		// claim batch's.
		lastClaim := int64(0)
		for _, w := range won {
			lastClaim = max(lastClaim, w.Audit.Seq)
		}
		if head.Seq != lastClaim || !bytes.Equal(head.MAC, testMAC("head", head.Seq, all[head.Seq-1].Hash)) {
			t.Fatalf("head %d (MAC %x); the last claim's event is %d", head.Seq, head.MAC, lastClaim)
		}
		cps, err := s.Checkpoints(ctx)
		if err != nil || len(cps) == 0 {
			t.Fatalf("checkpoints: %d, %v", len(cps), err)
		}
		for _, c := range cps {
			if c.Seq%4 != 0 || !bytes.Equal(c.Hash, all[c.Seq-1].Hash) || !bytes.Equal(c.MAC, testMAC("cp", c.Seq, c.Hash)) {
				t.Errorf("checkpoint %d does not match the chain", c.Seq)
			}
		}
	})
}
