package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// Deleting the last rows of the audit log, which no checkpoint covers, and
// then a middle row: each time `keyport audit verify` exits 3 naming the
// first missing row.
func TestAuditVerifyNamesTheDeletedLastRowsAndAMiddleRow(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		o := capture(t)
		ctx := context.Background()
		w := fixture.New(t, storetest.Open(t, dsn), 1, 1)
		w.Svc.CheckpointEvery = 16
		for i := 0; i < 22; i++ {
			if _, _, err := w.Svc.AddProvider(ctx, fixture.Admin, fmt.Sprintf("Bank %d", i), fmt.Sprintf("ops%d@bank.example", i), keyport.KindBank); err != nil {
				t.Fatal(err)
			}
		}
		evs, err := w.Store.AuditEvents(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		n := int64(len(evs))
		if n < 16+6 {
			t.Fatalf("%d events: the last five must lie after the checkpoint at 16", n)
		}
		common := []string{"--data-dir", t.TempDir(), "--db", dsn, "--hsm", w.Token.URI}
		if out := kp(t, o, common, "audit", "verify"); !strings.Contains(out, fmt.Sprintf("audit chain verified: %d events", n)) ||
			!strings.Contains(out, fmt.Sprintf("keyed head at row %d", n)) {
			t.Fatalf("audit verify: %s", out)
		}
		for _, c := range []struct {
			delete string
			row    int64
		}{
			{fmt.Sprintf("seq = %d", n), n},       // the last row
			{fmt.Sprintf("seq > %d", n-5), n - 4}, // the last five
			{"seq = 9", 9},                        // a middle row
		} {
			deleteAuditRows(t, dsn, c.delete)
			err := run(ctx, append([]string{"audit", "verify"}, common...))
			var ee exitError
			if !asExit(err, &ee) || ee.code != 3 || !strings.Contains(err.Error(), fmt.Sprintf("row %d:", c.row)) {
				t.Errorf("audit verify after deleting %s: %v; want exit 3 naming row %d", c.delete, err, c.row)
			}
		}
	})
}

func deleteAuditRows(t *testing.T, dsn, where string) {
	t.Helper()
	if k := storetest.ExecSQL(t, dsn, `DELETE FROM audit_events WHERE `+where); k == 0 {
		t.Fatalf("no row where %s", where)
	}
}

// Deleting the keyed head and every checkpoint does not make the log one
// from before the keyed head, with only a note: `keyport audit verify`
// exits 3 naming the first row no checkpoint vouches for.
func TestAuditVerifyFailsWhenTheHeadAndCheckpointsAreDeleted(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		o := capture(t)
		ctx := context.Background()
		w := fixture.New(t, storetest.Open(t, dsn), 1, 1)
		w.Svc.CheckpointEvery = 16
		for i := 0; i < 20; i++ {
			if _, _, err := w.Svc.AddProvider(ctx, fixture.Admin, fmt.Sprintf("Bank %d", i), fmt.Sprintf("ops%d@bank.example", i), keyport.KindBank); err != nil {
				t.Fatal(err)
			}
		}
		common := []string{"--data-dir", t.TempDir(), "--db", dsn, "--hsm", w.Token.URI}
		if out := kp(t, o, common, "audit", "verify"); !strings.Contains(out, "keyed head at row") {
			t.Fatalf("audit verify: %s", out)
		}
		storetest.ExecSQL(t, dsn, `DELETE FROM audit_head`)
		storetest.ExecSQL(t, dsn, `DELETE FROM audit_checkpoints`)
		err := run(ctx, append([]string{"audit", "verify"}, common...))
		var ee exitError
		if !asExit(err, &ee) || ee.code != 3 || !strings.Contains(err.Error(), "row 1: no HSM checkpoint at row 16") {
			t.Fatalf("audit verify without head and checkpoints: %v; want exit 3 naming row 1", err)
		}
	})
}
