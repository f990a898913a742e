package store_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// TestClaimDomainWritesDomainClaimAndOutboxOrNothing: one call moves the
// domain, stores the claim and queues the outbox row; a domain already
// taken, an unknown domain and a reused idempotency key each fail with the
// error the port names and write nothing.
func TestClaimDomainWritesDomainClaimAndOutboxOrNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 1, 2)
		p := createProvider(t, s, "a@x.example")
		wk := createWrappingKey(t, s, p.ID)
		d1, err := s.GetDomain(ctx, testEID(1), testAID(1))
		if err != nil {
			t.Fatal(err)
		}
		at := time.Date(2026, 5, 6, 7, 8, 9, 123456789, time.UTC)
		c := &keyport.Claim{ID: "clm_1", ProviderID: p.ID, DomainID: d1.ID, EID: d1.EID, AID: d1.AID, WrappingKeyID: wk.ID,
			IdempotencyKey: "k1", RequestHash: "h1", Package: []byte("pkg"), CreatedAt: at}
		m := &keyport.OutboxMessage{Topic: "domain.assigned", Payload: `{"claim":"clm_1"}`, CreatedAt: at}
		if err := s.Tx(ctx, func(tx keyport.Repo) error { return tx.ClaimDomain(ctx, c, keyport.From(keyport.EventClaim), m, "") }); err != nil {
			t.Fatal(err)
		}
		if m.ID == 0 || !c.CreatedAt.Equal(keyport.AuditTime(at)) || !m.CreatedAt.Equal(keyport.AuditTime(at)) {
			t.Errorf("claim %+v, outbox %+v: ID or times not set", c, m)
		}
		got, err := s.GetDomain(ctx, d1.EID, d1.AID)
		if err != nil || got.State != keyport.Assigned || got.OwnerID != p.ID {
			t.Fatalf("domain after the claim: %+v %v", got, err)
		}
		stored, err := s.GetClaimForDomain(ctx, p.ID, d1.ID)
		if err != nil || stored.ID != "clm_1" || !bytes.Equal(stored.Package, []byte("pkg")) || stored.IdempotencyKey != "k1" ||
			stored.RequestHash != "h1" || !stored.CreatedAt.Equal(c.CreatedAt) {
			t.Fatalf("stored claim %+v %v", stored, err)
		}
		outbox, err := s.ListOutbox(ctx, "domain.assigned", 10)
		if err != nil || len(outbox) != 1 || outbox[0].ID != m.ID || outbox[0].Payload != m.Payload || outbox[0].SentAt != nil {
			t.Fatalf("outbox %+v %v", outbox, err)
		}

		// Taken: ErrDomainTaken, nothing written.
		again := *c
		again.ID, again.IdempotencyKey = "clm_2", "k2"
		err = s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.ClaimDomain(ctx, &again, keyport.From(keyport.EventClaim), &keyport.OutboxMessage{Topic: "domain.assigned", Payload: "x"}, "")
		})
		if !errors.Is(err, keyport.ErrDomainTaken) || !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("claim of a taken domain: %v, want ErrDomainTaken", err)
		}
		// Unknown domain: ErrNotFound.
		unknown := again
		unknown.DomainID = d1.ID + 1000
		err = s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.ClaimDomain(ctx, &unknown, keyport.From(keyport.EventClaim), &keyport.OutboxMessage{Topic: "domain.assigned", Payload: "x"}, "")
		})
		if !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("claim of an unknown domain: %v, want ErrNotFound", err)
		}
		// A reused idempotency key on a free domain: plain ErrConflict,
		// and the domain stays free.
		d2, err := s.GetDomain(ctx, testEID(1), testAID(2))
		if err != nil {
			t.Fatal(err)
		}
		reused := *c
		reused.ID, reused.DomainID, reused.AID = "clm_3", d2.ID, d2.AID
		err = s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.ClaimDomain(ctx, &reused, keyport.From(keyport.EventClaim), &keyport.OutboxMessage{Topic: "domain.assigned", Payload: "x"}, "")
		})
		if !errors.Is(err, keyport.ErrConflict) || errors.Is(err, keyport.ErrDomainTaken) {
			t.Errorf("reused idempotency key: %v, want ErrConflict but not ErrDomainTaken", err)
		}
		if got, err := s.GetDomain(ctx, d2.EID, d2.AID); err != nil || got.State != keyport.Unassigned || got.OwnerID != "" {
			t.Errorf("domain after the failed claim: %+v %v", got, err)
		}
		if outbox, err := s.ListOutbox(ctx, "", 10); err != nil || len(outbox) != 1 {
			t.Errorf("outbox after the failed claims: %d rows %v, want 1", len(outbox), err)
		}
	})
}

// TestFiftyConcurrentClaimDomainsHaveExactlyOneWinner is the claim race
// through ClaimDomain, each in its own transaction.
func TestFiftyConcurrentClaimDomainsHaveExactlyOneWinner(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 1, 1)
		d, err := s.FirstUnassigned(ctx, testEID(1))
		if err != nil {
			t.Fatal(err)
		}
		var claims []*keyport.Claim
		for i := 0; i < 50; i++ {
			p := createProvider(t, s, fmt.Sprintf("p%d@x.example", i))
			wk := createWrappingKey(t, s, p.ID)
			claims = append(claims, &keyport.Claim{ID: fmt.Sprintf("clm_%d", i), ProviderID: p.ID, DomainID: d.ID, EID: d.EID,
				AID: d.AID, WrappingKeyID: wk.ID, RequestHash: "h", Package: []byte("p")})
		}
		var wins, taken atomic.Int32
		var winner atomic.Value
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, c := range claims {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				err := s.Tx(ctx, func(tx keyport.Repo) error {
					return tx.ClaimDomain(ctx, c, keyport.From(keyport.EventClaim), &keyport.OutboxMessage{Topic: "domain.assigned", Payload: c.ProviderID}, "")
				})
				switch {
				case err == nil:
					wins.Add(1)
					winner.Store(c.ProviderID)
				case errors.Is(err, keyport.ErrDomainTaken):
					taken.Add(1)
				default:
					t.Errorf("claim: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || taken.Load() != 49 {
			t.Fatalf("wins %d, taken %d; want 1 and 49", wins.Load(), taken.Load())
		}
		got, err := s.GetDomain(ctx, d.EID, d.AID)
		if err != nil || got.OwnerID != winner.Load().(string) {
			t.Fatalf("domain after the race: %+v %v, winner %v", got, err, winner.Load())
		}
		payloads, err := store.QueryStringsForTest(s, `SELECT payload FROM outbox`)
		if err != nil || len(payloads) != 1 || payloads[0] != winner.Load().(string) {
			t.Fatalf("outbox %v %v: only the winner's row may be kept", payloads, err)
		}
	})
}

// TestAClaimsKeyPackageStaysInItsRowOnPostgres: a key package is about
// 3 KB that does not compress. PostgreSQL would try and then move it
// to the claims' TOAST table; migration 16 keeps it in the row, through
// the claim writer's pipeline and through ClaimDomain alike, and it reads
// back whole.
func TestAClaimsKeyPackageStaysInItsRowOnPostgres(t *testing.T) {
	s := storetest.Open(t, storetest.PostgresURL(t))
	b := createBatch(t, s, "b")
	importModules(t, s, b.ID, 1, 4, 1)
	p := createProvider(t, s, "a@x.example")
	wk := createWrappingKey(t, s, p.ID)
	packages := map[string][]byte{}
	for n := 1; n <= 4; n++ {
		id := fmt.Sprintf("clm_%d", n)
		w := claimWrite(t, s, p.ID, wk.ID, n, id, "")
		w.Claim.Package = make([]byte, 3400) // as incompressible as a package with RSA-3072 wraps
		rand.Read(w.Claim.Package)
		packages[id] = w.Claim.Package
		var err error
		if n%2 == 0 {
			err = s.ClaimCommits().WriteClaim(ctx, w, testKeys)
		} else {
			err = s.Tx(ctx, func(tx keyport.Repo) error { return w.Apply(ctx, tx, testKeys) })
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	toast, err := store.QueryStringsForTest(s, `SELECT pg_relation_size(reltoastrelid)::text FROM pg_class WHERE relname = 'claims'`)
	if err != nil || len(toast) != 1 || toast[0] != "0" {
		t.Errorf("claims' TOAST table holds %v bytes (%v): packages were moved out of their rows", toast, err)
	}
	for n := 1; n <= 4; n++ {
		d, err := s.GetDomain(ctx, testEID(n), testAID(1))
		if err != nil {
			t.Fatal(err)
		}
		c, err := s.GetClaimForDomain(ctx, p.ID, d.ID)
		if err != nil || !bytes.Equal(c.Package, packages[c.ID]) {
			t.Fatalf("claim of domain %d read back: %v", n, err)
		}
	}
}
