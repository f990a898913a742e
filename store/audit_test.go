package store_test

import (
	"bytes"
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

// verifyChain reads the whole log back and recomputes every hash.
func verifyChain(t *testing.T, s *store.Store) []keyport.AuditEvent {
	t.Helper()
	var all []keyport.AuditEvent
	var prev []byte
	for after := int64(0); ; {
		page, err := s.AuditEvents(ctx, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			if e.Seq != int64(len(all)+1) {
				t.Fatalf("seq %d at position %d", e.Seq, len(all)+1)
			}
			if !bytes.Equal(e.PrevHash, prev) {
				t.Fatalf("event %d: prev_hash %x, want %x", e.Seq, e.PrevHash, prev)
			}
			if h := keyport.ChainHash(prev, e); !bytes.Equal(h, e.Hash) {
				t.Fatalf("event %d: stored hash %x, recomputed %x", e.Seq, e.Hash, h)
			}
			prev = e.Hash
			all = append(all, e)
		}
		after = page[len(page)-1].Seq
	}
	return all
}

func TestAuditAppendsFromTwentyGoroutinesFormOneValidChain(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		const goroutines, each = 20, 5
		var wg sync.WaitGroup
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					e := &keyport.AuditEvent{Actor: fmt.Sprintf("provider:%d", g), Action: "claim",
						Object: fmt.Sprintf("domain:%d/%d", g, i), Detail: `{"n":1}`}
					var err error
					if i%2 == 0 {
						err = s.AppendAudit(ctx, e)
					} else { // inside a caller's transaction, as a claim does
						err = s.Tx(ctx, func(tx keyport.Repo) error { return tx.AppendAudit(ctx, e) })
					}
					if err != nil {
						t.Errorf("AppendAudit: %v", err)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		if all := verifyChain(t, s); len(all) != goroutines*each {
			t.Fatalf("%d events, want %d", len(all), goroutines*each)
		}
	})
}

func TestAuditTimestampRoundTripsSoTheHashVerifies(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		// Nanoseconds and a non-UTC zone: the store keeps microseconds in UTC
		// and hashes exactly what it keeps.
		at := time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.FixedZone("CET", 3600))
		e := &keyport.AuditEvent{At: at, Actor: "system", Action: "import", Object: "batch:b", Detail: "{}"}
		if err := s.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
		if want := keyport.AuditTime(at); !e.At.Equal(want) || e.At.Location() != time.UTC {
			t.Fatalf("e.At = %v, want %v", e.At, want)
		}
		e0 := &keyport.AuditEvent{Actor: "system", Action: "now", Object: "x", Detail: "{}"}
		if err := s.AppendAudit(ctx, e0); err != nil {
			t.Fatal(err)
		}
		all := verifyChain(t, s)
		if len(all) != 2 || all[0].At != e.At || all[1].At != e0.At || e0.Seq != 2 || !bytes.Equal(e0.PrevHash, e.Hash) {
			t.Fatalf("read back %+v", all)
		}
	})
}

func TestAuditEventsNeedAPositiveLimit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		if _, err := s.AuditEvents(ctx, 0, 0); !errors.Is(err, keyport.ErrInvalid) {
			t.Fatalf("limit 0: %v, want ErrInvalid", err)
		}
	})
}

func TestCheckpointsRoundTripAndAreUniquePerSeq(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		for _, seq := range []int64{10, 5} {
			c := &keyport.AuditCheckpoint{Seq: seq, Hash: bytes.Repeat([]byte{byte(seq)}, 32), MAC: []byte("mac")}
			if err := s.AddCheckpoint(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		dup := &keyport.AuditCheckpoint{Seq: 10, Hash: []byte{1}, MAC: []byte{2}}
		if err := s.AddCheckpoint(ctx, dup); !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("second checkpoint at 10: %v, want ErrConflict", err)
		}
		cs, err := s.Checkpoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(cs) != 2 || cs[0].Seq != 5 || cs[1].Seq != 10 || !bytes.Equal(cs[1].Hash, bytes.Repeat([]byte{10}, 32)) ||
			string(cs[0].MAC) != "mac" || cs[0].At.IsZero() {
			t.Fatalf("Checkpoints = %+v", cs)
		}
	})
}

func TestOutboxMessagesGetIncreasingIDs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		var last int64
		for i := 0; i < 3; i++ {
			m := &keyport.OutboxMessage{Topic: "webhook", Payload: fmt.Sprintf(`{"i":%d}`, i)}
			if err := s.AddOutbox(ctx, m); err != nil {
				t.Fatal(err)
			}
			if m.ID <= last || m.CreatedAt.IsZero() {
				t.Fatalf("message %d: %+v", i, m)
			}
			last = m.ID
		}
	})
}

func TestAuditHeadIsAbsentThenOneRowThatNeverMovesBack(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		if h, err := s.AuditHead(ctx); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("AuditHead of a new store = %+v, %v; want ErrNotFound", h, err)
		}
		for _, seq := range []int64{3, 5, 4} {
			h := &keyport.AuditHead{Seq: seq, Hash: bytes.Repeat([]byte{byte(seq)}, 32), MAC: []byte{byte(seq), 0xAA}}
			if err := s.SetAuditHead(ctx, h); err != nil || h.At.IsZero() {
				t.Fatalf("SetAuditHead(%d): %v (at %v)", seq, err, h.At)
			}
		}
		h, err := s.AuditHead(ctx)
		if err != nil || h.Seq != 5 || !bytes.Equal(h.Hash, bytes.Repeat([]byte{5}, 32)) || !bytes.Equal(h.MAC, []byte{5, 0xAA}) {
			t.Fatalf("AuditHead = %+v, %v; want the head at 5", h, err)
		}
		if n, err := store.QueryStringsForTest(s, `SELECT COUNT(*) FROM audit_head`); err != nil || len(n) != 1 || n[0] != "1" {
			t.Fatalf("audit_head rows %v %v", n, err)
		}
	})
}

// Appends from many goroutines, each sealing its transaction's event with a
// head as keyport.Service does, leave the head on the last row.
func TestAuditHeadSetInTheAppendsTransactionEndsOnTheLastRow(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		const goroutines, each = 20, 5
		var wg sync.WaitGroup
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < each; i++ {
					err := s.Tx(ctx, func(tx keyport.Repo) error {
						e := &keyport.AuditEvent{Actor: fmt.Sprintf("provider:%d", g), Action: "claim", Object: "x", Detail: "{}"}
						if err := tx.AppendAudit(ctx, e); err != nil {
							return err
						}
						return tx.(keyport.AuditSealer).SealAudit(ctx, func(c []keyport.AuditEvent) (*keyport.AuditHead, []keyport.AuditCheckpoint, error) {
							return &keyport.AuditHead{Seq: c[0].Seq, Hash: c[0].Hash, MAC: []byte("m"), At: c[0].At}, nil, nil
						})
					})
					if err != nil {
						t.Errorf("append: %v", err)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		all := verifyChain(t, s)
		h, err := s.AuditHead(ctx)
		if err != nil || len(all) != goroutines*each || h.Seq != all[len(all)-1].Seq || !bytes.Equal(h.Hash, all[len(all)-1].Hash) {
			t.Fatalf("head %+v %v after %d events", h, err, len(all))
		}
	})
}

// Step 4 on a database that already holds audit events: the events stay as
// they were and there is no head until the service writes one.
func TestKeyedHeadMigrationKeepsExistingAuditEvents(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		for i := 0; i < 3; i++ {
			if err := s.AppendAudit(ctx, &keyport.AuditEvent{Actor: "system", Action: "import", Object: "b", Detail: "{}"}); err != nil {
				t.Fatal(err)
			}
		}
		// Back to version 3, as a database an older keyport migrated: undo
		// the steps after it (19 down to 4; 16 is a PostgreSQL setting).
		for _, q := range []string{`ALTER TABLE jobs DROP COLUMN version`, `DROP INDEX domains_module_id`, `DROP INDEX modules_import_id`, `ALTER TABLE modules DROP COLUMN import_id`, `DROP TABLE imports`, `DROP TABLE sms_messages`, `ALTER TABLE users DROP COLUMN password_change_required`, `DROP TABLE campaign_targets`, `DROP TABLE campaigns`, `ALTER TABLE domains DROP COLUMN seq_unverified`, `DROP TABLE module_ota`, `DROP TABLE access_rules`, `DROP TABLE approvals`, `DROP INDEX api_tokens_admin`, `ALTER TABLE api_tokens DROP COLUMN owner`,
			`ALTER TABLE api_tokens DROP COLUMN owner_user_id`, `ALTER TABLE api_tokens DROP COLUMN expires_at`,
			`ALTER TABLE api_tokens DROP COLUMN last_used_at`, `ALTER TABLE users DROP COLUMN disabled_at`,
			`DROP TABLE passkey_ceremonies`, `DROP TABLE passkeys`,
			`DROP TABLE perso_keys`, `ALTER TABLE modules DROP COLUMN psk_sealed`, `ALTER TABLE modules DROP COLUMN isd_keys`,
			`ALTER TABLE domains RENAME COLUMN wrapped TO imported`,
			`ALTER TABLE users DROP COLUMN totp_last_step`, `ALTER TABLE sessions DROP COLUMN last_seen`,
			`DROP TABLE audit_head`, `DELETE FROM schema_migrations WHERE version >= 4`} {
			if err := store.ExecForTest(s, q); err != nil {
				t.Fatal(err)
			}
		}
		if v, _ := s.SchemaVersion(ctx); v != 3 {
			t.Fatalf("version %d", v)
		}
		if err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		if v, _ := s.SchemaVersion(ctx); v != store.LatestVersion() || v < 4 {
			t.Fatalf("version %d after migrating, want the latest (%d)", v, store.LatestVersion())
		}
		if all := verifyChain(t, s); len(all) != 3 {
			t.Fatalf("%d events after the migration, want 3", len(all))
		}
		if _, err := s.AuditHead(ctx); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("AuditHead after the migration: %v, want ErrNotFound", err)
		}
	})
}

// A keyed seal (one that writes the head: a service's append, a claim)
// refuses a log that does not end at its keyed head, which it would
// otherwise cover with a new head: the head missing although events were
// written since migration 4, the head past the last row, or at it with
// another hash. It fails with keyport.AuditBroken and stores nothing; the
// claim writer's read path (a store that has not guessed a head yet) does
// too. A log from before migration 4 has its first head written.
func TestKeyedSealRefusesALogThatDoesNotEndAtItsHead(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s := storetest.Open(t, dsn)
		exec := func(q string, args ...any) {
			t.Helper()
			if err := store.ExecForTest(s, q, args...); err != nil {
				t.Fatal(err)
			}
		}
		keyed := func() error {
			return s.Tx(ctx, func(tx keyport.Repo) error {
				if err := tx.AppendAudit(ctx, &keyport.AuditEvent{Actor: "system", Action: "test", Object: "x", Detail: "{}"}); err != nil {
					return err
				}
				return tx.(keyport.AuditSealer).SealAudit(ctx, testKeys)
			})
		}
		refused := func(what string, seq int64, reason string) {
			t.Helper()
			before := len(verifyChain(t, s))
			err := keyed()
			var broken *keyport.AuditBroken
			if !errors.As(err, &broken) || broken.Seq != seq || !strings.Contains(broken.Reason, reason) {
				t.Fatalf("%s: seal %v; want AuditBroken at row %d with %q", what, err, seq, reason)
			}
			if n := len(verifyChain(t, s)); n != before {
				t.Fatalf("%s: %d events after the refused seal, want %d", what, n, before)
			}
		}
		for range 3 {
			if err := keyed(); err != nil {
				t.Fatal(err)
			}
		}
		head, err := s.AuditHead(ctx)
		if err != nil || head.Seq != 3 {
			t.Fatalf("head %+v, %v", head, err)
		}

		exec(`DELETE FROM audit_head`)
		refused("head deleted", 4, "keyed head is missing")
		// The claim writer of a store that has seen no head reads it, and
		// refuses too.
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 2, 1)
		p := createProvider(t, s, "a@x.example")
		wk := createWrappingKey(t, s, p.ID)
		fresh := storetest.Open(t, dsn)
		err = fresh.ClaimCommits().WriteClaim(ctx, claimWrite(t, fresh, p.ID, wk.ID, 1, "clm_1", ""), testKeys)
		var broken *keyport.AuditBroken
		if !errors.As(err, &broken) || !strings.Contains(broken.Reason, "keyed head is missing") {
			t.Fatalf("claim over a log without its head: %v; want AuditBroken", err)
		}
		if d, err := s.GetDomain(ctx, testEID(1), testAID(1)); err != nil || d.OwnerID != "" {
			t.Fatalf("domain after the refused claim: %+v, %v", d, err)
		}
		// And with migration 4's record deleted as well: every event counts.
		exec(`DELETE FROM schema_migrations WHERE version = 4`)
		refused("head and migration 4's record deleted", 4, "keyed head is missing")

		exec(`INSERT INTO audit_head (id, seq, hash, mac, at) VALUES (1, ?, ?, ?, ?)`, head.Seq, head.Hash, head.MAC, head.At)
		if err := keyed(); err != nil {
			t.Fatalf("seal with the head back: %v", err)
		}
		exec(`UPDATE audit_head SET hash = ?`, bytes.Repeat([]byte{1}, 32))
		refused("head at the last row with another hash", 4, "differs from the keyed head")
		exec(`UPDATE audit_head SET seq = 9`)
		refused("head past the last row", 5, "the keyed head is at row 9")

		// A log from before migration 4: no head, every event older than
		// it. Its next seal writes the first head.
		exec(`DELETE FROM audit_head`)
		exec(`INSERT INTO schema_migrations (version, description, applied_at) VALUES (4, 'audit keyed head', ?)`,
			time.Now().Add(time.Hour).UTC())
		if err := keyed(); err != nil {
			t.Fatalf("first seal of a log from before the keyed head: %v", err)
		}
		if h, err := s.AuditHead(ctx); err != nil || h.Seq != 5 {
			t.Fatalf("head after the first seal %+v, %v; want row 5", h, err)
		}
	})
}
