package main

import (
	"context"
	"database/sql"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/filelock"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// startServe runs keyport serve in this process with common until the test
// ends, and waits until it is ready; serve's error arrives on the channel.
func startServe(t *testing.T, common []string) (stop func(), served <-chan error) {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, append([]string{"serve", "--addr", addr}, common...)) }()
	t.Cleanup(cancel)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("serve ended at start: %v", err)
		default:
		}
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cancel, done
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("serve not ready within 60 s")
		}
	}
}

// wantInUse requires exit status 5 for store.ErrInUse with says in it.
func wantInUse(t *testing.T, err error, says string) {
	t.Helper()
	var ee exitError
	if !asExit(err, &ee) || ee.code != 5 || !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), says) {
		t.Fatalf("got %v; want exit status 5, the database in use, saying %q", err, says)
	}
	t.Logf("exit 5: %v", err)
}

// keyport restore --force is refused (exit 5, naming serve) while keyport
// serve runs on the database, which goes on serving, and a backup runs
// beside it; once serve has stopped, the restore runs. On PostgreSQL a
// restore that slips in while serve's lock session is gone stops serve
// (exit 5) at its next check of the lock.
func TestRestoreIsRefusedWhileServeRunsOnTheDatabaseAndRunsOnceItHasStopped(t *testing.T) {
	for _, c := range []struct {
		name string
		dsn  func(testing.TB) string
	}{{"sqlite", storetest.SQLitePath}, {"postgres", storetest.PostgresURL}} {
		t.Run(c.name, func(t *testing.T) {
			o := captureLive(t)
			ctx := context.Background()
			dsn := c.dsn(t)
			common := []string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--db", dsn, "--hsm", hsmtest.New(t)}
			stop, served := startServe(t, common)

			out := filepath.Join(t.TempDir(), "keyport.backup")
			if err := run(ctx, append([]string{"backup", "--out", out}, common...)); err != nil {
				t.Fatalf("backup beside serve: %v\n%s", err, o)
			}
			wantInUse(t, run(ctx, append([]string{"restore", "--from", out, "--force"}, common...)), "keyport serve")
			select {
			case err := <-served:
				t.Fatalf("serve ended after the refused restore: %v", err)
			default:
			}

			if c.name == "postgres" {
				restoreInTheGap(t, dsn, out, common)
				// serve checks its lock every 5 s; a minute is for a loaded machine.
				select {
				case err := <-served:
					wantInUse(t, err, "use lock was lost")
				case <-time.After(time.Minute):
					t.Fatal("serve went on serving after a restore came between its lock's sessions")
				}
			} else {
				stop()
				if err := <-served; err != nil {
					t.Fatalf("serve: %v", err)
				}
			}
			if err := run(ctx, append([]string{"restore", "--from", out, "--force"}, common...)); err != nil {
				t.Fatalf("restore once serve stopped: %v", err)
			}
			if !strings.Contains(o.String(), "restored into") {
				t.Fatalf("restore said %q", o)
			}
		})
	}
}

// restoreInTheGap ends the PostgreSQL session holding serve's use lock and
// restores into the gap before serve takes the lock again (should serve's
// check come first, the restore is refused and it tries again).
func restoreInTheGap(t *testing.T, dsn, backup string, common []string) {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for attempt := 0; ; attempt++ {
		var pid int
		err := db.QueryRow(`SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = 1802531429
			AND objid = 1937010546 AND objsubid = 1 AND mode = 'ShareLock' AND granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&pid)
		if err != nil {
			t.Fatalf("serve's use lock in pg_locks: %v", err)
		}
		if _, err := db.Exec(`SELECT pg_terminate_backend($1, 30000)`, pid); err != nil {
			t.Fatal(err)
		}
		err = run(context.Background(), append([]string{"restore", "--from", backup, "--force"}, common...))
		if err == nil {
			return
		}
		if !errors.Is(err, store.ErrInUse) || attempt == 5 {
			t.Fatalf("restore in the gap (attempt %d): %v", attempt+1, err)
		}
	}
}

// Every command that opens the database holds its use lock, not only
// serve: while a restore holds it (here the test, as a restore does, with
// the exclusive flock beside the SQLite file), migrate and provider add
// refuse with exit status 5 and change nothing; and restore is refused
// while a command holds it shared.
func TestCommandsAndRestoreKeepEachOtherOff(t *testing.T) {
	o := capture(t)
	ctx := context.Background()
	dsn := storetest.SQLitePath(t)
	common := []string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--db", dsn, "--hsm", hsmtest.New(t)}
	kp(t, o, common, "hsm", "init")
	out := filepath.Join(t.TempDir(), "keyport.backup")
	kp(t, o, common, "backup", "--out", out)

	restore, err := filelock.TryLock(dsn+".lock", false)
	if err != nil {
		t.Fatal(err)
	}
	wantInUse(t, run(ctx, append([]string{"migrate"}, common...)), "restore is running")
	wantInUse(t, run(ctx, append([]string{"provider", "add", "Late Bank", "--email", "ops@late.example"}, common...)), "restore is running")
	restore.Close()
	st, err := store.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	provs, err := st.ListProviders(ctx)
	st.Close()
	if err != nil || len(provs) != 0 {
		t.Fatalf("a refused provider add left providers %+v, %v", provs, err)
	}

	use, err := store.HoldForUse(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	wantInUse(t, run(ctx, append([]string{"restore", "--from", out, "--force"}, common...)), "serve")
	use.Close()
	kp(t, o, common, "restore", "--from", out, "--force")
}
