package store_test

import (
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestBatchIsCreatedFoundByNameAndIDAndItsNameIsUnique(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "2026-01")
		if b.ID == 0 || b.CreatedAt.IsZero() {
			t.Fatalf("CreateBatch did not set ID/CreatedAt: %+v", b)
		}
		byName, err := s.GetBatch(ctx, "2026-01")
		if err != nil {
			t.Fatal(err)
		}
		byID, err := s.GetBatchByID(ctx, b.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, got := range []*keyport.Batch{byName, byID} {
			if *got != *b {
				t.Errorf("got %+v, want %+v", got, b)
			}
		}
		err = s.CreateBatch(ctx, &keyport.Batch{Name: "2026-01", KeySource: keyport.KeyImported})
		if !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("second batch with the same name: %v, want ErrConflict", err)
		}
		if _, err := s.GetBatch(ctx, "nope"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetBatch(unknown): %v, want ErrNotFound", err)
		}
		if _, err := s.GetBatchByID(ctx, 4242); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetBatchByID(unknown): %v, want ErrNotFound", err)
		}
	})
}

func TestGetModuleReturnsDomainsInAIDOrder(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 3, 8)
		m, err := s.GetModule(ctx, testEID(2))
		if err != nil {
			t.Fatal(err)
		}
		if m.EID != testEID(2) || m.BatchID != b.ID || m.ISDAID != "A000000151000000" || m.CreatedAt.IsZero() {
			t.Fatalf("module %+v", m)
		}
		if len(m.Domains) != 8 {
			t.Fatalf("%d domains, want 8", len(m.Domains))
		}
		for i, d := range m.Domains {
			if d.AID != testAID(i+1) {
				t.Errorf("domain %d AID %s, want %s", i, d.AID, testAID(i+1))
			}
			if d.ModuleID != m.ID || d.EID != m.EID || d.State != keyport.Unassigned || d.KVN != 0x30 ||
				d.KeySource != keyport.KeyDerived || d.OwnerID != "" || d.KCV[keyport.UsageENC] != "EE72CB" {
				t.Errorf("domain %d: %+v", i, d)
			}
		}
		d, err := s.GetDomain(ctx, m.EID, testAID(5))
		if err != nil {
			t.Fatal(err)
		}
		if d.ID != m.Domains[4].ID {
			t.Errorf("GetDomain ID %d, want %d", d.ID, m.Domains[4].ID)
		}
		if _, err := s.GetModule(ctx, testEID(99)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetModule(unknown): %v, want ErrNotFound", err)
		}
		// What a handshake reads is the module's own, and nothing else's.
		if err := s.SetModuleKeys(ctx, m.ID, nil, []byte("sealed PSK of module 2")); err != nil {
			t.Fatal(err)
		}
		am, err := s.GetAdminModule(ctx, testEID(2))
		if err != nil || am.ID != m.ID || am.EID != m.EID || am.ISDAID != m.ISDAID || string(am.PSK) != "sealed PSK of module 2" {
			t.Errorf("GetAdminModule: %+v, %v; want ID %d, ISD %s and the PSK set", am, err, m.ID, m.ISDAID)
		}
		if other, err := s.GetAdminModule(ctx, testEID(3)); err != nil || other.ID == m.ID || len(other.PSK) != 0 {
			t.Errorf("GetAdminModule of another module: %+v, %v", other, err)
		}
		if _, err := s.GetAdminModule(ctx, testEID(99)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetAdminModule(unknown): %v, want ErrNotFound", err)
		}
		if _, err := s.GetDomain(ctx, m.EID, testAID(9)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetDomain(unknown AID): %v, want ErrNotFound", err)
		}
	})
}

func TestTransitionDomainIsConditionalAndFirstUnassignedSkipsTakenDomains(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 1, 3)
		p := createProvider(t, s, "bank@example.com")
		eid := testEID(1)

		first, err := s.FirstUnassigned(ctx, eid)
		if err != nil || first.AID != testAID(1) {
			t.Fatalf("FirstUnassigned = %+v, %v; want AID %s", first, err, testAID(1))
		}
		if err := s.TransitionDomain(ctx, first.ID, keyport.From(keyport.EventClaim), keyport.Assigned, &p.ID); err != nil {
			t.Fatalf("claim: %v", err)
		}
		err = s.TransitionDomain(ctx, first.ID, keyport.From(keyport.EventClaim), keyport.Assigned, &p.ID)
		if !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("second claim: %v, want ErrConflict", err)
		}
		if err := s.TransitionDomain(ctx, 987654, []keyport.DomainState{keyport.Unassigned}, keyport.Assigned, nil); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("unknown domain: %v, want ErrNotFound", err)
		}
		got, err := s.GetDomain(ctx, eid, testAID(1))
		if err != nil {
			t.Fatal(err)
		}
		if got.State != keyport.Assigned || got.OwnerID != p.ID || got.UpdatedAt.Before(first.UpdatedAt) {
			t.Fatalf("after claim: %+v", got)
		}
		next, err := s.FirstUnassigned(ctx, eid)
		if err != nil || next.AID != testAID(2) {
			t.Fatalf("FirstUnassigned after a claim = %+v, %v; want AID %s", next, err, testAID(2))
		}

		// Lock records the state left; unlock returns to it; owner nil keeps the owner.
		if err := s.TransitionDomain(ctx, got.ID, keyport.From(keyport.EventLock), keyport.Locked, nil); err != nil {
			t.Fatal(err)
		}
		locked, _ := s.GetDomain(ctx, eid, testAID(1))
		if locked.State != keyport.Locked || locked.PriorState != keyport.Assigned || locked.OwnerID != p.ID {
			t.Fatalf("locked: %+v", locked)
		}
		to, err := keyport.Next(locked.State, keyport.EventUnlock, locked.PriorState)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.TransitionDomain(ctx, got.ID, keyport.From(keyport.EventUnlock), to, nil); err != nil {
			t.Fatal(err)
		}
		// An empty owner clears it (release confirmed).
		empty := ""
		if err := s.TransitionDomain(ctx, got.ID, []keyport.DomainState{keyport.Assigned}, keyport.Unassigned, &empty); err != nil {
			t.Fatal(err)
		}
		back, _ := s.GetDomain(ctx, eid, testAID(1))
		if back.State != keyport.Unassigned || back.OwnerID != "" {
			t.Fatalf("released: %+v", back)
		}

		if _, err := s.FirstUnassigned(ctx, testEID(77)); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("FirstUnassigned(unknown module): %v, want ErrNotFound", err)
		}
	})
}

func TestListDomainsReturnsOnlyTheProvidersDomainsNewestFirst(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 2, 4)
		p := createProvider(t, s, "p@example.com")
		other := createProvider(t, s, "o@example.com")
		var order []int64
		for _, c := range []struct {
			eid   keyport.EID
			aid   keyport.AID
			owner string
		}{{testEID(1), testAID(3), p.ID}, {testEID(2), testAID(1), other.ID}, {testEID(2), testAID(4), p.ID}, {testEID(1), testAID(1), p.ID}} {
			d, err := s.GetDomain(ctx, c.eid, c.aid)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.TransitionDomain(ctx, d.ID, []keyport.DomainState{keyport.Unassigned}, keyport.Assigned, &c.owner); err != nil {
				t.Fatal(err)
			}
			if c.owner == p.ID {
				order = append([]int64{d.ID}, order...)
			}
			time.Sleep(2 * time.Millisecond) // distinct updated_at
		}
		list, err := s.ListDomains(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != len(order) {
			t.Fatalf("%d domains, want %d", len(list), len(order))
		}
		for i := range list {
			if list[i].ID != order[i] || list[i].OwnerID != p.ID {
				t.Errorf("list[%d] = domain %d (owner %s), want %d", i, list[i].ID, list[i].OwnerID, order[i])
			}
		}
		none, err := s.ListDomains(ctx, "nobody")
		if err != nil || len(none) != 0 {
			t.Errorf("ListDomains(nobody) = %v, %v", none, err)
		}
	})
}

// TestFiftyConcurrentClaimsInTransactionsHaveExactlyOneWinner is the claim
// race of DESIGN.md flow 5: each goroutine transitions the same domain in its
// own transaction and holds it a little before commit.
func TestFiftyConcurrentClaimsInTransactionsHaveExactlyOneWinner(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 1, 1)
		var providers []string
		for i := 0; i < 50; i++ {
			providers = append(providers, createProvider(t, s, string(rune('a'+i%26))+string(rune('a'+i/26))+"@x.example").ID)
		}
		d, err := s.FirstUnassigned(ctx, testEID(1))
		if err != nil {
			t.Fatal(err)
		}
		var wins, conflicts atomic.Int32
		var winner atomic.Value
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func(owner string) {
				defer wg.Done()
				<-start
				err := s.Tx(ctx, func(tx keyport.Repo) error {
					if err := tx.TransitionDomain(ctx, d.ID, keyport.From(keyport.EventClaim), keyport.Assigned, &owner); err != nil {
						return err
					}
					time.Sleep(5 * time.Millisecond)
					return tx.AddOutbox(ctx, &keyport.OutboxMessage{Topic: "claim", Payload: owner})
				})
				switch {
				case err == nil:
					wins.Add(1)
					winner.Store(owner)
				case errors.Is(err, keyport.ErrConflict):
					conflicts.Add(1)
				default:
					t.Errorf("claim: %v", err)
				}
			}(providers[i])
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != 49 {
			t.Fatalf("wins %d, conflicts %d; want 1 and 49", wins.Load(), conflicts.Load())
		}
		got, err := s.GetDomain(ctx, testEID(1), d.AID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State != keyport.Assigned || got.OwnerID != winner.Load().(string) {
			t.Fatalf("domain after the race: %+v, winner %v", got, winner.Load())
		}
		payloads, err := store.QueryStringsForTest(s, `SELECT payload FROM outbox`)
		if err != nil {
			t.Fatal(err)
		}
		if len(payloads) != 1 || payloads[0] != winner.Load().(string) {
			t.Fatalf("outbox %v: only the winner's transaction may be kept", payloads)
		}
	})
}

func TestTxRollbackLeavesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		boom := errors.New("boom")
		err := s.Tx(ctx, func(tx keyport.Repo) error {
			if err := tx.CreateBatch(ctx, &keyport.Batch{Name: "ghost", KeySource: keyport.KeyDerived}); err != nil {
				return err
			}
			if _, err := tx.ImportModules(ctx, b.ID, modules(1, 2, 2)); err != nil {
				return err
			}
			p := createProvider(t, tx, "ghost@example.com")
			d, err := tx.FirstUnassigned(ctx, testEID(1))
			if err != nil {
				return err
			}
			if err := tx.TransitionDomain(ctx, d.ID, []keyport.DomainState{keyport.Unassigned}, keyport.Assigned, &p.ID); err != nil {
				return err
			}
			if err := tx.AppendAudit(ctx, &keyport.AuditEvent{Actor: "system", Action: "claim", Object: "x", Detail: "{}"}); err != nil {
				return err
			}
			if err := tx.AddOutbox(ctx, &keyport.OutboxMessage{Topic: "t", Payload: "p"}); err != nil {
				return err
			}
			// Inside, the transaction sees its own writes.
			if _, err := tx.GetModule(ctx, testEID(1)); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Tx: %v, want the function's error", err)
		}
		for _, table := range []string{"modules", "domains", "providers", "audit_events", "outbox"} {
			n, err := store.QueryStringsForTest(s, `SELECT COUNT(*) FROM `+table)
			if err != nil {
				t.Fatal(err)
			}
			if n[0] != "0" {
				t.Errorf("%s has %s rows after rollback", table, n[0])
			}
		}
		if _, err := s.GetBatch(ctx, "ghost"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetBatch(ghost) after rollback: %v", err)
		}
		// A panic rolls back too, and the store stays usable.
		func() {
			defer func() { recover() }()
			s.Tx(ctx, func(tx keyport.Repo) error {
				tx.CreateBatch(ctx, &keyport.Batch{Name: "panic", KeySource: keyport.KeyDerived})
				panic("fn panics")
			})
		}()
		if _, err := s.GetBatch(ctx, "panic"); !errors.Is(err, keyport.ErrNotFound) {
			t.Errorf("GetBatch(panic) after a panicking Tx: %v", err)
		}
		createBatch(t, s, "after")
	})
}

func TestMoveDomainKeysMovesTheDomainAndRecordsItsKeysOnlyWhenTheTransitionHolds(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 1, 1)
		p := createProvider(t, s, "bank@example.com")
		eid := testEID(1)
		d, err := s.GetDomain(ctx, eid, testAID(1))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.TransitionDomain(ctx, d.ID, keyport.From(keyport.EventClaim), keyport.Assigned, &p.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.SetCounterUnverified(ctx, d.ID, true); err != nil {
			t.Fatal(err)
		}
		kcv := map[keyport.KeyUsage]string{keyport.UsageENC: "0A0B0C", keyport.UsageMAC: "1A1B1C", keyport.UsageDEK: "2A2B2C"}
		// Not in the source state: nothing changes, not even the keys.
		err = s.MoveDomainKeys(ctx, d.ID, []keyport.DomainState{keyport.Personalized}, keyport.Personalized, nil, 0x31, kcv, 5)
		if !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("move from the wrong state: %v, want ErrConflict", err)
		}
		if got, _ := s.GetDomain(ctx, eid, testAID(1)); got.State != keyport.Assigned || got.KVN != d.KVN || !got.SeqUnverified ||
			got.KCV[keyport.UsageENC] == "0A0B0C" {
			t.Fatalf("after a refused move: %+v", got)
		}
		if err := s.MoveDomainKeys(ctx, 987654, keyport.From(keyport.EventSecondKeyConfirmed), keyport.Personalized, nil, 0x31, kcv, 5); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("unknown domain: %v, want ErrNotFound", err)
		}
		if err := s.MoveDomainKeys(ctx, d.ID, keyport.From(keyport.EventSecondKeyConfirmed), keyport.Personalized, nil, 0x31, kcv, 5); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetDomain(ctx, eid, testAID(1))
		if err != nil {
			t.Fatal(err)
		}
		if got.State != keyport.Personalized || got.OwnerID != p.ID || got.KVN != 0x31 || got.SeqCounter != 5 || got.SeqUnverified ||
			!reflect.DeepEqual(got.KCV, kcv) {
			t.Fatalf("after the move: %+v", got)
		}
		// kcv nil keeps the KCVs; an empty owner clears the owner.
		none := ""
		if err := s.MoveDomainKeys(ctx, d.ID, []keyport.DomainState{keyport.Personalized}, keyport.Unassigned, &none, 0x30, nil, 9); err != nil {
			t.Fatal(err)
		}
		if got, _ := s.GetDomain(ctx, eid, testAID(1)); got.State != keyport.Unassigned || got.OwnerID != "" || got.KVN != 0x30 ||
			got.SeqCounter != 9 || !reflect.DeepEqual(got.KCV, kcv) {
			t.Fatalf("after a move with kcv nil: %+v", got)
		}
	})
}
