package keyport_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// auditEvents is how many events auditWorld leaves in the log: with
// checkpoints every 16 the last checkpoint is at row 16, so rows 17 to 27
// are covered by no checkpoint, only by the keyed head.
const auditEvents = 27

// auditWorld is a service on a real SoftHSM token and a fresh database
// (dsn) whose audit log holds auditEvents events.
func auditWorld(t *testing.T, dsn string) *fixture.World {
	t.Helper()
	return auditWorldOf(t, dsn, auditEvents)
}

// auditWorldOf is auditWorld with n events in the log (at least those
// fixture.New leaves).
func auditWorldOf(t *testing.T, dsn string, n int) *fixture.World {
	t.Helper()
	w := fixture.New(t, storetest.Open(t, dsn), 1, 1)
	w.Svc.CheckpointEvery = 16
	for i := 0; ; i++ {
		evs, err := w.Store.AuditEvents(context.Background(), 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) >= n {
			if len(evs) != n {
				t.Fatalf("%d events, want %d", len(evs), n)
			}
			return w
		}
		if _, _, err := w.Svc.AddProvider(context.Background(), fixture.Admin, fmt.Sprintf("Bank %d", i),
			fmt.Sprintf("ops%d@bank.example", i), keyport.KindBank); err != nil {
			t.Fatal(err)
		}
	}
}

// tamper runs SQL on the database directly, as someone with write access
// to it but not to the HSM would.
func tamper(t *testing.T, dsn string, stmts ...string) {
	t.Helper()
	for _, q := range stmts {
		storetest.ExecSQL(t, dsn, q)
	}
}

func tamperArgs(t *testing.T, dsn, q string, args ...any) {
	t.Helper()
	storetest.ExecSQL(t, dsn, q, args...)
}

// wantBroken asserts VerifyAudit fails naming row seq (and, if given, with
// a reason containing reason).
func wantBroken(t *testing.T, w *fixture.World, seq int64, reason string) {
	t.Helper()
	r, err := w.Svc.VerifyAudit(context.Background())
	var broken *keyport.AuditBroken
	if !errors.As(err, &broken) {
		t.Fatalf("VerifyAudit = %+v, %v; want AuditBroken at row %d", r, err, seq)
	}
	if broken.Seq != seq || !strings.Contains(broken.Reason, reason) {
		t.Fatalf("VerifyAudit: %v; want row %d, reason with %q", broken, seq, reason)
	}
}

func TestVerifyAuditPassesAnUntouchedLogAndProvesItsEnd(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		w := auditWorld(t, dsn)
		r, err := w.Svc.VerifyAudit(context.Background())
		if err != nil || r.Events != auditEvents || r.Checkpoints != 1 || !r.Keyed || len(r.Head) != 32 {
			t.Fatalf("VerifyAudit = %+v, %v", r, err)
		}
		h, err := w.Store.AuditHead(context.Background())
		if err != nil || h.Seq != auditEvents || string(h.Hash) != string(r.Head) || len(h.MAC) != 32 {
			t.Fatalf("AuditHead = %+v, %v", h, err)
		}
	})
}

func TestVerifyAuditNamesDeletedEditedAndReorderedRowsIncludingTheLastOnes(t *testing.T) {
	const n = auditEvents
	cases := []struct {
		name   string
		do     func(t *testing.T, w *fixture.World, dsn string)
		seq    int64
		reason string
	}{
		{"last row deleted", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, n))
		}, n, "keyed head is at row 27"},
		{"last five rows deleted", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq > %d`, n-5))
		}, n - 4, "rows deleted"},
		{"middle row deleted", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_events WHERE seq = 9`)
		}, 9, "row missing"},
		{"last rows and the head deleted", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq > %d`, n-5), `DELETE FROM audit_head`)
		}, n - 4, "keyed head is missing"},
		{"truncated to the checkpoint, its MAC copied into the head", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_events WHERE seq > 16`,
				`UPDATE audit_head SET seq = 16, hash = (SELECT hash FROM audit_checkpoints WHERE seq = 16),
					mac = (SELECT mac FROM audit_checkpoints WHERE seq = 16)`)
		}, 16, "head edited"},
		{"row edited", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `UPDATE audit_events SET detail = '{"edited":true}' WHERE seq = 20`)
		}, 20, "edited"},
		{"last row edited", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, fmt.Sprintf(`UPDATE audit_events SET actor = 'system' WHERE seq = %d`, n))
		}, n, "edited"},
		{"two rows swapped", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `UPDATE audit_events SET seq = -1 WHERE seq = 21`,
				`UPDATE audit_events SET seq = 21 WHERE seq = 22`,
				`UPDATE audit_events SET seq = 22 WHERE seq = -1`)
		}, 21, "does not chain"},
		{"head edited", func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, fmt.Sprintf(`UPDATE audit_head SET seq = %d`, n-1))
		}, n - 1, "head edited"},
		{"tail rewritten and re-chained", func(t *testing.T, w *fixture.World, dsn string) {
			rechainFrom(t, w, dsn, 20)
		}, 17, "rows 17 to 27 differ from the keyed head"},
		{"row appended outside keyport", func(t *testing.T, w *fixture.World, dsn string) {
			evs, _ := w.Store.AuditEvents(context.Background(), n-1, 1)
			e := keyport.AuditEvent{Seq: n + 1, At: evs[0].At, Actor: "system", Action: "x", Object: "x", Detail: "{}"}
			h := keyport.ChainHash(evs[0].Hash, e)
			tamperArgs(t, dsn, `INSERT INTO audit_events (seq, at, actor, action, object, detail, prev_hash, hash)
				VALUES (?, ?, 'system', 'x', 'x', '{}', ?, ?)`, e.Seq, e.At, evs[0].Hash, h)
		}, n + 1, "added outside keyport"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			storetest.EachDSN(t, func(t *testing.T, dsn string) {
				w := auditWorld(t, dsn)
				c.do(t, w, dsn)
				wantBroken(t, w, c.seq, c.reason)
			})
		})
	}
}

// rechainFrom edits row from and recomputes every hash after it, as an
// attacker who knows ChainHash (it is no secret) would.
func rechainFrom(t *testing.T, w *fixture.World, dsn string, from int64) {
	t.Helper()
	evs, err := w.Store.AuditEvents(context.Background(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	prev := evs[from-2].Hash
	for _, e := range evs[from-1:] {
		if e.Seq == from {
			e.Detail = `{"rewritten":true}`
		}
		e.PrevHash = prev
		e.Hash = keyport.ChainHash(prev, e)
		tamperArgs(t, dsn, `UPDATE audit_events SET detail = ?, prev_hash = ?, hash = ? WHERE seq = ?`,
			e.Detail, e.PrevHash, e.Hash, e.Seq)
		prev = e.Hash
	}
}

// The documented limit: a copy of an older head, put back after the rows
// behind it are deleted, verifies. Only the head's seq recorded outside the
// database shows it.
func TestVerifyAuditCannotSeeAReplayedOldHead(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		w := auditWorld(t, dsn)
		old, err := w.Store.AuditHead(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := w.Svc.AddProvider(context.Background(), fixture.Admin, "Late Bank", "late@bank.example", keyport.KindBank); err != nil {
			t.Fatal(err)
		}
		tamperArgs(t, dsn, `UPDATE audit_head SET seq = ?, hash = ?, mac = ?`, old.Seq, old.Hash, old.MAC)
		wantBroken(t, w, auditEvents+1, "added outside keyport") // the old head alone is not enough
		tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq > %d`, auditEvents))
		r, err := w.Svc.VerifyAudit(context.Background())
		if err != nil || r.Events != auditEvents || !r.Keyed {
			t.Fatalf("VerifyAudit = %+v, %v", r, err)
		}
	})
}

// A database upgraded with events in it has no head until its next event:
// verify passes, saying so, and the first event after the upgrade keys it.
func TestVerifyAuditOfAnUpgradedLogWithoutAHeadUntilTheNextEvent(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := auditWorld(t, dsn)
		// As an older keyport left it: no head, checkpoints MACed as v1,
		// and migration 4 applied after its last event.
		cps, err := w.Store.Checkpoints(ctx)
		if err != nil || len(cps) == 0 {
			t.Fatalf("checkpoints %v %v", cps, err)
		}
		upgradeAfterTheLastEvent(t, w, dsn)
		tamper(t, dsn, `DELETE FROM audit_head`)
		for _, cp := range cps {
			mac, err := w.HSM.AuditMAC(ctx, []byte(fmt.Sprintf("keyport/audit-checkpoint/v1|%d|%x", cp.Seq, cp.Hash)))
			if err != nil {
				t.Fatal(err)
			}
			tamperArgs(t, dsn, `UPDATE audit_checkpoints SET mac = ? WHERE seq = ?`, mac, cp.Seq)
		}
		r, err := w.Svc.VerifyAudit(ctx)
		if err != nil || r.Events != auditEvents || r.Keyed {
			t.Fatalf("upgraded log: %+v, %v; want it verified without a keyed head", r, err)
		}
		// An edit is still seen.
		evs, err := w.Store.AuditEvents(ctx, 2, 1)
		if err != nil {
			t.Fatal(err)
		}
		tamper(t, dsn, `UPDATE audit_events SET object = 'x' WHERE seq = 3`)
		wantBroken(t, w, 3, "edited")
		tamperArgs(t, dsn, `UPDATE audit_events SET object = ? WHERE seq = 3`, evs[0].Object)
		// Without a head, deleting the last row is not: the limit Keyed=false
		// states.
		tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, auditEvents))
		if r, err := w.Svc.VerifyAudit(ctx); err != nil || r.Events != auditEvents-1 || r.Keyed {
			t.Fatalf("upgraded log less its last row: %+v, %v", r, err)
		}
		// The next event writes the head; from then on deleting the last row
		// is seen.
		if _, _, err := w.Svc.AddProvider(ctx, fixture.Admin, "Next Bank", "next@bank.example", keyport.KindBank); err != nil {
			t.Fatal(err)
		}
		if r, err := w.Svc.VerifyAudit(ctx); err != nil || r.Events != auditEvents || !r.Keyed {
			t.Fatalf("after the first new event: %+v, %v; want %d keyed events", r, err, auditEvents)
		}
		tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, auditEvents))
		wantBroken(t, w, auditEvents, "rows deleted")
	})
}

// upgradeAfterTheLastEvent makes the log look written before the keyed
// head: migration 4 applied just after its last event.
func upgradeAfterTheLastEvent(t *testing.T, w *fixture.World, dsn string) {
	t.Helper()
	last, err := w.Store.RecentAudit(context.Background(), 1)
	if err != nil || len(last) != 1 {
		t.Fatalf("last event %v %v", last, err)
	}
	tamperArgs(t, dsn, `UPDATE schema_migrations SET applied_at = ? WHERE version = 4`, last[0].At.Add(time.Microsecond))
}

// From the first event since migration 4 on, the keyed head and every
// CheckpointEvery-th checkpoint must be there: deleting them is a broken
// log, not one from before the keyed head (audit 5), whose rows could
// then be rewritten and re-chained unseen.
func TestVerifyAuditRequiresTheHeadAndEveryCheckpointSinceTheKeyedHeadBegan(t *testing.T) {
	const young = 10 // fewer events than CheckpointEvery: no checkpoint yet
	cases := []struct {
		name   string
		events int
		do     func(t *testing.T, w *fixture.World, dsn string)
		seq    int64
		reason string
	}{
		{"head deleted before the first checkpoint", young, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_head`)
		}, young + 1, "keyed head is missing although rows 1 to 10 were written since keyport began keying the log"},
		{"head deleted, a row rewritten and re-chained", young, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_head`)
			rechainFrom(t, w, dsn, 3)
		}, young + 1, "rows 1 to 10 may be rewritten"},
		{"every checkpoint deleted", auditEvents, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_checkpoints`)
		}, 1, "no HSM checkpoint at row 16, though keyport writes one every 16 rows from row 1 on"},
		{"the middle checkpoint deleted", 40, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_checkpoints WHERE seq = 16`)
		}, 1, "no HSM checkpoint at row 16"},
		{"the last checkpoint deleted, the rows it covered rewritten", 40, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_checkpoints WHERE seq = 32`)
			rechainFrom(t, w, dsn, 20)
			tamper(t, dsn, `DELETE FROM audit_head`)
		}, 17, "no HSM checkpoint at row 32"},
		{"head and checkpoints deleted", auditEvents, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_head`, `DELETE FROM audit_checkpoints`)
		}, 1, "checkpoint deleted, rows 1 to 16 may be rewritten"},
		{"head and checkpoints deleted, a row rewritten and re-chained", auditEvents, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_head`, `DELETE FROM audit_checkpoints`)
			rechainFrom(t, w, dsn, 2)
		}, 1, "no HSM checkpoint at row 16"},
		{"and migration 4's record deleted too", auditEvents, func(t *testing.T, w *fixture.World, dsn string) {
			tamper(t, dsn, `DELETE FROM audit_head`, `DELETE FROM audit_checkpoints`, `DELETE FROM schema_migrations WHERE version = 4`)
			rechainFrom(t, w, dsn, 2)
		}, 1, "schema_migrations lacks migration 4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			storetest.EachDSN(t, func(t *testing.T, dsn string) {
				w := auditWorldOf(t, dsn, c.events)
				if r, err := w.Svc.VerifyAudit(context.Background()); err != nil || !r.Keyed || r.Events != int64(c.events) {
					t.Fatalf("untouched: %+v, %v", r, err)
				}
				c.do(t, w, dsn)
				wantBroken(t, w, c.seq, c.reason)
			})
		})
	}
}

// The next audited action after the head was deleted does not write a new
// head over the log (which would make a rewrite permanent): it fails,
// naming the break, nothing is appended and verify still fails.
func TestAuditActionAfterTheHeadWasDeletedIsRefused(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := auditWorld(t, dsn)
		tamper(t, dsn, `DELETE FROM audit_head`, `DELETE FROM audit_checkpoints`)
		rechainFrom(t, w, dsn, 2)
		_, _, err := w.Svc.AddProvider(ctx, fixture.Admin, "Next Bank", "next@bank.example", keyport.KindBank)
		var broken *keyport.AuditBroken
		if !errors.As(err, &broken) || broken.Seq != auditEvents+1 || !strings.Contains(broken.Reason, "keyed head is missing") {
			t.Fatalf("AddProvider over a log without its head: %v; want AuditBroken at row %d", err, auditEvents+1)
		}
		if evs, err := w.Store.AuditEvents(ctx, 0, 1000); err != nil || len(evs) != auditEvents {
			t.Fatalf("%d events, %v; want %d (nothing appended)", len(evs), err, auditEvents)
		}
		ps, err := w.Store.ListProviders(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.Name == "Next Bank" {
				t.Fatalf("the refused action's provider was stored")
			}
		}
		if _, err := w.Store.AuditHead(ctx); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("AuditHead after the refused action: %v, want ErrNotFound", err)
		}
		wantBroken(t, w, 1, "no HSM checkpoint at row 16")
	})
}

func TestAuditHeadFollowsFiftyConcurrentClaims(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		w := fixture.New(t, storetest.Open(t, dsn), 10, 5)
		w.Svc.CheckpointEvery = 16
		p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
		before, err := w.Svc.VerifyAudit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				req := keyport.ClaimRequest{EID: fixture.EID(t, i/5), AID: fixture.AID(i%5 + 1), WrappingKeyID: wk}
				if _, _, err := w.Svc.Claim(ctx, p, req); err != nil {
					t.Errorf("claim %d: %v", i, err)
				}
			}(i)
		}
		wg.Wait()
		r, err := w.Svc.VerifyAudit(ctx)
		if err != nil || !r.Keyed || r.Events != before.Events+50 {
			t.Fatalf("after 50 concurrent claims: %+v, %v; want %d keyed events", r, err, before.Events+50)
		}
		tamper(t, dsn, fmt.Sprintf(`DELETE FROM audit_events WHERE seq = %d`, r.Events))
		wantBroken(t, w, r.Events, "rows deleted")
	})
}
