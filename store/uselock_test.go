package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// moduleCount is how many modules s holds.
func moduleCount(t *testing.T, s *store.Store) string {
	t.Helper()
	n, err := store.QueryStringsForTest(s, `SELECT COUNT(*) FROM modules`)
	if err != nil || len(n) != 1 {
		t.Fatalf("count: %v %v", n, err)
	}
	return n[0]
}

// backupOf makes a store on dsn with 5 modules, backs it up, then adds 3
// more, which a restore of the backup drops.
func backupOf(t *testing.T, dsn string) (*store.Store, string) {
	t.Helper()
	s := storetest.Open(t, dsn)
	b := createBatch(t, s, "b1")
	importModules(t, s, b.ID, 1, 5, 1)
	out := filepath.Join(t.TempDir(), "keyport.backup")
	if _, err := s.Backup(ctx, out); err != nil {
		t.Fatal(err)
	}
	importModules(t, s, b.ID, 101, 3, 1)
	return s, out
}

// While servers hold the database's use lock (two replicas, sharing it; on
// SQLite two opens of the lock file in this one process, which conflict as
// two processes' would), a forced restore is refused, naming serve, and
// changes nothing; a backup runs beside them. Once the last has let go,
// the restore runs.
func TestRestoreIsRefusedWhileAServerHoldsTheDatabaseAndRunsOnceTheLastHasStopped(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s, backup := backupOf(t, dsn)
		replica1, err := store.HoldForServe(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer replica1.Close()
		replica2, err := store.HoldForServe(ctx, dsn)
		if err != nil {
			t.Fatalf("a second server on the database: %v; want the lock shared", err)
		}
		defer replica2.Close()

		_, err = (store.RestoreOptions{Force: true}).Restore(ctx, backup, dsn)
		if !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "keyport serve") {
			t.Fatalf("a forced restore while two servers run: %v; want ErrInUse naming serve", err)
		}
		if got := moduleCount(t, s); got != "8" {
			t.Fatalf("after the refused restore the database holds %s modules, want its 8", got)
		}
		replica1.Close()
		if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, dsn); !errors.Is(err, store.ErrInUse) {
			t.Fatalf("a forced restore while one server still runs: %v; want ErrInUse", err)
		}
		if _, err := s.Backup(ctx, filepath.Join(t.TempDir(), "beside-a-server.backup")); err != nil {
			t.Fatalf("a backup while a server runs: %v", err)
		}

		replica2.Close()
		if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, dsn); err != nil {
			t.Fatalf("a forced restore once the servers stopped: %v", err)
		}
		if got := moduleCount(t, storetest.Open(t, dsn)); got != "5" {
			t.Fatalf("restored %s modules, want the backup's 5", got)
		}
	})
}

// While a restore runs (here: in its AfterRestore, the lock still held) a
// server may not start on the database, nor a backup or another restore
// run, each saying why; once it has returned, a server starts.
func TestServeBackupAndRestoreAreRefusedWhileARestoreRuns(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		s, backup := backupOf(t, dsn)
		ran := false
		_, err := store.RestoreOptions{Force: true, AfterRestore: func(ctx context.Context, info *store.BackupInfo) error {
			ran = true
			if l, err := store.HoldForServe(ctx, dsn); !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "restore is running") {
				if l != nil {
					l.Close()
				}
				t.Errorf("serve during a restore: %v; want ErrInUse naming the restore", err)
			}
			if _, err := s.Backup(ctx, filepath.Join(t.TempDir(), "during.backup")); !errors.Is(err, store.ErrInUse) {
				t.Errorf("a backup during a restore: %v; want ErrInUse", err)
			}
			_, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, dsn)
			if !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "another keyport restore") {
				t.Errorf("a second restore during a restore: %v; want ErrInUse naming the restore", err)
			}
			return nil
		}}.Restore(ctx, backup, dsn)
		if err != nil || !ran {
			t.Fatalf("restore: %v (AfterRestore ran: %t)", err, ran)
		}
		l, err := store.HoldForServe(ctx, dsn)
		if err != nil {
			t.Fatalf("serve after the restore: %v", err)
		}
		l.Close()
	})
}

// The SQLite use lock is "<database>.lock" beside the database, mode 0600,
// one file for every name of the database (here a directory reached
// through a symbolic link, and the "sqlite:" form); an in-memory database
// has none.
func TestTheSQLiteUseLockIsOneFileBesideTheDatabase(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, "alias")); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(real, "keyport.db")
	_, backup := backupOf(t, db)

	l, err := store.HoldForServe(ctx, "sqlite:"+filepath.Join(dir, "alias", "keyport.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	resolved, err := filepath.EvalSymlinks(db) // t.TempDir() itself may be reached through a link
	if err != nil {
		t.Fatal(err)
	}
	lockFile := resolved + ".lock"
	fi, err := os.Stat(lockFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the lock file: %v %v; want %s, mode 0600", fi, err, lockFile)
	}
	if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, db); !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), lockFile) {
		t.Fatalf("a restore by the database's real path while a server holds it by another: %v; want ErrInUse naming the lock file", err)
	}

	for _, dsn := range []string{"file::memory:?cache=shared", "file:" + filepath.Join(dir, "mem.db") + "?mode=memory&cache=shared"} {
		if f, err := store.UseLockFileForTest(dsn); err != nil || f != "" {
			t.Errorf("use lock file of %s: %q %v; want none", dsn, f, err)
		}
	}
	if f, err := store.UseLockFileForTest("file:" + filepath.Join(dir, "alias", "keyport.db") + "?cache=private"); err != nil || f != lockFile {
		t.Errorf("use lock file of a file: URI: %q %v; want %s", f, err, lockFile)
	}
}

// On PostgreSQL serve's lock lives in a session of its own. Should that
// session be lost, serve's next check takes the lock again, and a restore
// is refused again; should a restore have taken the database meanwhile, or
// have run and finished, the lock is lost for good and Lost says so; as it
// is when the session went before serve had seen the database's tables.
func TestServeLockOnPostgresIsTakenAgainAfterItsSessionIsLostOrLostForGoodIfARestoreMayHaveComeBetween(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	defer store.SetUseLockCheckEveryForTest(time.Hour)() // the test runs the checks
	_, backup := backupOf(t, dsn)
	kill := func(l *store.UseLock) {
		t.Helper()
		pid := store.UseLockPIDForTest(l)
		if pid == 0 {
			t.Fatal("the lock has no session")
		}
		// Waits until the backend has ended, and its locks with it.
		storetest.ExecSQL(t, dsn, `SELECT pg_terminate_backend(?, 30000)`, int(pid))
	}
	isLost := func(l *store.UseLock) bool {
		select {
		case <-l.Lost():
			return true
		default:
			return false
		}
	}

	l, err := store.HoldForServe(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	kill(l)
	if err := store.CheckUseLockForTest(ctx, l); err != nil || isLost(l) {
		t.Fatalf("the check after the session was lost: %v (lost: %t); want the lock taken again", err, isLost(l))
	}
	if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, dsn); !errors.Is(err, store.ErrInUse) {
		t.Fatalf("a restore once serve's lock was taken again: %v; want ErrInUse", err)
	}

	// A restore in the gap, still running at the check.
	kill(l)
	_, err = store.RestoreOptions{Force: true, AfterRestore: func(ctx context.Context, _ *store.BackupInfo) error {
		if err := store.CheckUseLockForTest(ctx, l); !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "restore took the database") {
			t.Errorf("the check during a restore: %v; want the lock lost, naming the restore", err)
		}
		return nil
	}}.Restore(ctx, backup, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if !isLost(l) || l.Err() == nil {
		t.Fatalf("after a restore in the gap: lost %t, %v; want Lost closed", isLost(l), l.Err())
	}

	// A restore in the gap, finished by the check.
	l2, err := store.HoldForServe(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	kill(l2)
	if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, dsn); err != nil {
		t.Fatal(err)
	}
	if err := store.CheckUseLockForTest(ctx, l2); !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "was restored") || !isLost(l2) {
		t.Fatalf("the check after a restore came and went: %v (lost: %t); want the lock lost, naming the restore", err, isLost(l2))
	}

	// Lost before any check saw the tables (serve's own migrations made
	// them, here, but a restore would have too).
	fresh := storetest.PostgresURL(t)
	l3, err := store.HoldForServe(ctx, fresh)
	if err != nil {
		t.Fatal(err)
	}
	defer l3.Close()
	storetest.Open(t, fresh)
	kill(l3)
	if err := store.CheckUseLockForTest(ctx, l3); !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "a restore may have come between") || !isLost(l3) {
		t.Fatalf("the check after the session went before the tables were seen: %v (lost: %t); want the lock lost", err, isLost(l3))
	}
}

// A command's shared use lock is gone when its Close returns, not a
// moment later when PostgreSQL notices the closed connection: a restore
// started right after another command (`keyport audit verify; keyport
// restore …`) takes the lock, every time.
func TestAClosedUseLockOnPostgresIsFreeTheMomentCloseReturns(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	storetest.Open(t, dsn) // migrated, like a database keyport uses
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i := range 40 {
		l, err := store.HoldForUse(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, int64(store.UseLockKey)).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("attempt %d: the use lock was still held after Close returned", i+1)
		}
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, int64(store.UseLockKey)); err != nil {
			t.Fatal(err)
		}
	}
}
