package store_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// A backup of a store is restored into a fresh database with every module;
// neither the backup nor the restore overwrites what exists unless forced,
// and a file that is no keyport database is refused.
func TestBackupRestoresIntoAFreshDatabaseAndOverwritesOnlyWhenForced(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		fresh := func() string {
			if s, err := store.Open(ctx, dsn); err == nil && s.Dialect() == "postgres" {
				s.Close()
				return storetest.PostgresURL(t)
			} else if err == nil {
				s.Close()
			}
			return filepath.Join(t.TempDir(), "restored", "keyport.db")
		}
		s := storetest.Open(t, dsn)
		b := createBatch(t, s, "b1")
		if n, err := s.ImportModules(ctx, b.ID, modules(1, 50, 2)); err != nil || n != 50 {
			t.Fatalf("import: %d %v", n, err)
		}
		out := filepath.Join(t.TempDir(), "keyport.backup")
		info, err := s.Backup(ctx, out)
		if err != nil {
			t.Fatal(err)
		}
		if info.SchemaVersion != store.LatestVersion() || info.Bytes == 0 {
			t.Fatalf("backup info %+v", info)
		}
		if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("backup file: %v %v; want mode 0600", fi, err)
		}
		if _, err := s.Backup(ctx, out); !errors.Is(err, store.ErrBackupExists) {
			t.Fatalf("a second backup to the same file: %v; want ErrBackupExists", err)
		}
		// More modules after the backup: they must not come back.
		if n, err := s.ImportModules(ctx, b.ID, modules(1001, 5, 2)); err != nil || n != 5 {
			t.Fatalf("import: %d %v", n, err)
		}

		target := fresh()
		if _, err := (store.RestoreOptions{}).Restore(ctx, out, target); err != nil {
			t.Fatal(err)
		}
		r, err := store.Open(ctx, target) // checks the schema version
		if err != nil {
			t.Fatal(err)
		}
		count := func(s *store.Store) string {
			n, err := store.QueryStringsForTest(s, `SELECT COUNT(*) FROM modules`)
			if err != nil || len(n) != 1 {
				t.Fatalf("count: %v %v", n, err)
			}
			return n[0]
		}
		if got := count(r); got != "50" {
			t.Fatalf("restored %s modules, want the 50 of the backup", got)
		}
		if _, err := r.GetModule(ctx, testEID(1)); err != nil {
			t.Fatalf("restored module: %v", err)
		}
		r.Close()

		if _, err := (store.RestoreOptions{}).Restore(ctx, out, target); !errors.Is(err, store.ErrBackupExists) {
			t.Fatalf("restore over a database: %v; want ErrBackupExists", err)
		}
		if _, err := (store.RestoreOptions{}).Restore(ctx, out, dsn); !errors.Is(err, store.ErrBackupExists) {
			t.Fatalf("restore over the live database: %v; want ErrBackupExists", err)
		}
		// Forced over the source, the five later modules are gone.
		if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, out, dsn); err != nil {
			t.Fatal(err)
		}
		s2 := storetest.Open(t, dsn)
		if got := count(s2); got != "50" {
			t.Fatalf("after a forced restore %s modules, want 50", got)
		}

		junk := filepath.Join(t.TempDir(), "junk")
		os.WriteFile(junk, []byte("not a database at all, not a database at all"), 0o600)
		if _, err := (store.RestoreOptions{}).Restore(ctx, junk, fresh()); err == nil {
			t.Fatal("a file that is not a backup was restored")
		}
	})
}
