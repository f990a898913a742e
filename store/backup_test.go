package store_test

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/keyport/keyport"
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

// editedBackup copies the backup in file from to a new file and runs stmts
// on the copy, one connection, as someone who can write the file would.
func editedBackup(t *testing.T, from string, stmts ...string) string {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "edited.backup")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite3", out)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return out
}

// A backup file edited to hold what keyport's migrations do not make (a
// trigger that makes every new user an admin, a view, a table), to lack an
// index or to define a table otherwise, or whose schema_migrations is a
// view, is refused with the object named, before anything is written: a
// database restored over is as it was, and a new one is not made. The
// backup as it was taken restores.
func TestRestoreRefusesABackupWhoseSchemaIsNotTheMigrations(t *testing.T) {
	src := storetest.Open(t, storetest.SQLitePath(t))
	b := createBatch(t, src, "b1")
	if n, err := src.ImportModules(ctx, b.ID, modules(1, 3, 2)); err != nil || n != 3 {
		t.Fatalf("import: %d %v", n, err)
	}
	backup := filepath.Join(t.TempDir(), "keyport.backup")
	if _, err := src.Backup(ctx, backup); err != nil {
		t.Fatal(err)
	}
	// The database a forced restore would overwrite, closed.
	existing := storetest.SQLitePath(t)
	storetest.Open(t, existing).Close()
	before, err := os.ReadFile(existing)
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name  string
		stmts []string
		want  string // in the error
		is    error  // nil: no particular sentinel
	}{
		{"planted trigger", []string{`CREATE TRIGGER escalate AFTER INSERT ON users
			BEGIN UPDATE users SET admin = 1 WHERE id = NEW.id; END`}, `trigger "escalate" on "users" is not part of it`, store.ErrSchemaMismatch},
		{"planted view", []string{`CREATE VIEW admins AS SELECT id, email FROM users WHERE admin`},
			`view "admins" is not part of it`, store.ErrSchemaMismatch},
		{"extra table", []string{`CREATE TABLE notes (body TEXT)`}, `table "notes" is not part of it`, store.ErrSchemaMismatch},
		{"missing index", []string{`DROP INDEX users_provider_id`}, `index "users_provider_id" on "users" is missing`, store.ErrSchemaMismatch},
		{"altered table", []string{`PRAGMA writable_schema = ON`,
			`UPDATE sqlite_schema SET sql = replace(sql, 'admin BOOLEAN NOT NULL DEFAULT FALSE', 'admin BOOLEAN NOT NULL DEFAULT TRUE')
				WHERE name = 'users'`},
			`table "users" is defined otherwise`, store.ErrSchemaMismatch},
		{"schema_migrations a view", []string{`DROP TABLE schema_migrations`,
			fmt.Sprintf(`CREATE VIEW schema_migrations AS SELECT %d AS version, 'x' AS description, '2026-01-01' AS applied_at`, store.LatestVersion())},
			"schema_migrations is a view, not a table", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			edited := editedBackup(t, backup, c.stmts...)
			_, err := (store.RestoreOptions{Force: true}).Restore(ctx, edited, existing)
			if err == nil || !strings.Contains(err.Error(), c.want) || c.is != nil && !errors.Is(err, c.is) {
				t.Fatalf("forced restore of the edited backup: %v; want it refused with %q", err, c.want)
			}
			if after, err := os.ReadFile(existing); err != nil || !bytes.Equal(after, before) {
				t.Fatalf("the database restored over changed (%v)", err)
			}
			fresh := filepath.Join(t.TempDir(), "restored", "keyport.db")
			if _, err := (store.RestoreOptions{}).Restore(ctx, edited, fresh); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("restore of the edited backup: %v; want it refused with %q", err, c.want)
			}
			if _, err := os.Stat(fresh); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("a refused restore left %s: %v", fresh, err)
			}
		})
	}

	// Unedited, it restores, and a new user is no admin.
	if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, backup, existing); err != nil {
		t.Fatal(err)
	}
	r := storetest.Open(t, existing)
	u := &keyport.User{Email: "sp@example.com", PasswordHash: "x", CreatedAt: time.Now()}
	if err := r.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if got, err := r.GetUser(ctx, u.ID); err != nil || got.Admin {
		t.Fatalf("a new user in the restored database: %+v %v; want no admin", got, err)
	}
}

// A file that holds nothing but a view named schema_migrations claiming
// the latest version is no backup.
func TestRestoreRefusesAViewAsTheSchemaVersion(t *testing.T) {
	out := filepath.Join(t.TempDir(), "fake.backup")
	db, err := sql.Open("sqlite3", out)
	if err != nil {
		t.Fatal(err)
	}
	_, err = db.Exec(fmt.Sprintf(`CREATE VIEW schema_migrations AS SELECT %d AS version, 'x' AS description, '2026-01-01' AS applied_at`, store.LatestVersion()))
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "restored", "keyport.db")
	_, err = (store.RestoreOptions{}).Restore(ctx, out, target)
	if err == nil || !strings.Contains(err.Error(), "schema_migrations is a view") {
		t.Fatalf("restore of a view named schema_migrations: %v; want it refused", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused restore left %s: %v", target, err)
	}
}

// A backup of a database an older keyport made holds that version's
// schema: it restores, on SQLite and on PostgreSQL, and migrating brings
// it up to date.
func TestRestoreTakesABackupOfAnOlderVersion(t *testing.T) {
	storetest.EachDSN(t, testRestoreTakesABackupOfAnOlderVersion)
}

func testRestoreTakesABackupOfAnOlderVersion(t *testing.T, dsn string) {
	const v = 16
	s, err := store.OpenAtVersionForTest(ctx, dsn, v)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := filepath.Join(t.TempDir(), "keyport.backup")
	if info, err := s.Backup(ctx, out); err != nil || info.SchemaVersion != v {
		t.Fatalf("backup at version %d: %+v %v", v, info, err)
	}
	target := filepath.Join(t.TempDir(), "restored", "keyport.db")
	if s.Dialect() == "postgres" {
		target = storetest.PostgresURL(t)
	}
	if info, err := (store.RestoreOptions{}).Restore(ctx, out, target); err != nil || info.SchemaVersion != v {
		t.Fatalf("restore of a version %d backup: %+v %v", v, info, err)
	}
	if _, err := store.Open(ctx, target); !errors.Is(err, store.ErrSchemaTooOld) {
		t.Fatalf("open of the restored version %d: %v; want ErrSchemaTooOld", v, err)
	}
	r, err := store.OpenOptions{Migrate: true}.Open(ctx, target)
	if err != nil {
		t.Fatalf("migrating the restored version %d: %v", v, err)
	}
	r.Close()
}
