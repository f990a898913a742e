package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// A backup taken while an import is under way and two providers claim
// domains, restored into a fresh data directory: every claim that had
// returned when the backup started is there, none that started after it
// returned, nothing of the unfinished import; the audit chain verifies and
// the server serves on it. A second restore over it is refused without
// --force. So on SQLite and on PostgreSQL (keyport's own format there).
func TestBackupDuringAnImportAndClaimsRestoresIntoAFreshDirectory(t *testing.T) {
	storetest.EachDSN(t, testBackupDuringAnImportAndClaims)
}

func testBackupDuringAnImportAndClaims(t *testing.T, dsn string) {
	o := capture(t)
	ctx := context.Background()
	postgres := strings.HasPrefix(dsn, "postgres")
	w := fixture.New(t, storetest.Open(t, dsn), 40, 2)
	common := []string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--db", dsn, "--hsm", w.Token.URI}

	var (
		backupStarted, backupReturned atomic.Bool
		mu                            sync.Mutex
		before                        = map[string]bool{} // returned before the backup started
		startedBefore                 = map[string]bool{} // started before the backup returned
		done                          = make(chan struct{}, 100)
		claimErrs                     = make(chan error, 2)
		wg                            sync.WaitGroup
	)
	for worker := 0; worker < 2; worker++ {
		pr, _, wk := w.Provider(t, fmt.Sprintf("Bank %d", worker), fixture.RSAKeys()[worker])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := worker * 20; m < worker*20+20; m++ {
				for d := 0; d < 2; d++ {
					late := backupReturned.Load()
					c, _, err := w.Svc.Claim(ctx, pr, keyport.ClaimRequest{EID: fixture.EID(t, m), WrappingKeyID: wk})
					if err != nil {
						claimErrs <- err
						return
					}
					early := !backupStarted.Load()
					mu.Lock()
					if early {
						before[c.ID] = true
					}
					if !late {
						startedBefore[c.ID] = true
					}
					mu.Unlock()
					done <- struct{}{}
				}
			}
		}()
	}
	for i := 0; i < 6; i++ {
		<-done
	}

	// The import reads its file from a pipe: it cannot end before the
	// test closes the pipe, after the backup has returned.
	pr, pw := io.Pipe()
	imported := make(chan error, 1)
	go func() {
		_, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", pr, keyport.VerifySample)
		imported <- err
	}()
	// More than a chunk is in before the backup: stored, but hidden
	// until the file ends.
	var rest []string
	for m := 1000; m < 1700; m++ {
		line := w.ImportLine(t, fixture.EID(t, m), 2, "") + "\n"
		if m < 1600 {
			if _, err := io.WriteString(pw, line); err != nil {
				t.Fatal(err)
			}
		} else {
			rest = append(rest, line)
		}
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		st, err := w.Store.PortalStats(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if st.ModulesImporting >= 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d modules of the import stored after a minute", st.ModulesImporting)
		}
	}

	out := filepath.Join(t.TempDir(), "keyport.backup")
	backupStarted.Store(true)
	got := kp(t, o, common, "backup", "--out", out)
	backupReturned.Store(true)
	if !strings.Contains(got, "HSM token is not in it") {
		t.Errorf("backup says %q; want the reminder about the token", got)
	}

	for _, line := range rest {
		io.WriteString(pw, line)
	}
	pw.Close()
	if err := <-imported; err != nil {
		t.Fatalf("import: %v", err)
	}
	wg.Wait()
	close(claimErrs)
	for err := range claimErrs {
		t.Fatalf("claim: %v", err)
	}

	backup, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !postgres {
		// (On PostgreSQL the restore below says it dropped them.)
		bdb, err := sql.Open("sqlite3", out+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		var staged int
		err = bdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM modules WHERE import_id IS NOT NULL`).Scan(&staged)
		bdb.Close()
		if err != nil || staged < 500 {
			t.Fatalf("the backup holds %d modules of the unfinished import (%v); want a chunk or more", staged, err)
		}
	}
	for e, domains := range w.Keys {
		for _, keys := range domains {
			for u, k := range keys {
				if bytes.Contains(backup, k) {
					t.Fatalf("the backup holds the clear %s key of %s", u, e)
				}
			}
		}
	}

	// A fresh data directory: the restore creates it and the database.
	fresh := filepath.Join(t.TempDir(), "fresh")
	restored := []string{"--data-dir", fresh, "--hsm", w.Token.URI}
	driver, restoredDB := "sqlite3", filepath.Join(fresh, "keyport.db")
	if postgres {
		driver, restoredDB = "pgx", storetest.PostgresURL(t)
		restored = append(restored, "--db", restoredDB)
	}
	got = kp(t, o, restored, "restore", "--from", out)
	if !strings.Contains(got, "restored into") || !strings.Contains(got, "was dropped: import its file again") {
		t.Fatalf("restore says %q; want it restored and the unfinished import dropped", got)
	}
	rdb, err := sql.Open(driver, restoredDB)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	rows, err := rdb.QueryContext(ctx, `SELECT id FROM claims`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	var mods int
	err = rdb.QueryRowContext(ctx, `SELECT COUNT(*) FROM modules`).Scan(&mods)
	rdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	if mods != 40 {
		t.Fatalf("restored %d modules; want the 40 before the unfinished import", mods)
	}
	in := map[string]bool{}
	for _, id := range ids {
		in[id] = true
		if !startedBefore[id] {
			t.Errorf("restored claim %s started after the backup returned", id)
		}
	}
	for id := range before {
		if !in[id] {
			t.Errorf("claim %s returned before the backup started but is not in it", id)
		}
	}
	if len(before) < 6 || len(in) < len(before) {
		t.Fatalf("%d claims before the backup, %d restored", len(before), len(in))
	}
	t.Logf("%d claims before the backup, %d in it, %d started before it returned", len(before), len(in), len(startedBefore))

	if got := kp(t, o, restored, "audit", "verify"); !strings.Contains(got, "audit chain verified") {
		t.Fatalf("audit verify on the restored database: %s", got)
	}

	err = run(ctx, append([]string{"restore", "--from", out}, restored...))
	var ee exitError
	if !asExit(err, &ee) || ee.code != 4 || !errors.Is(err, store.ErrBackupExists) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("a second restore without --force: %v; want exit 4 naming --force", err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- run(sctx, append([]string{"serve", "--addr", addr}, restored...)) }()
	ok := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-served:
			t.Fatalf("serve on the restored database ended: %v", err)
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ok = true
				break
			}
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	if !ok {
		t.Fatal("serve on the restored database never became ready")
	}
}
