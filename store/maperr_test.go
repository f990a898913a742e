package store

import (
	"database/sql"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keyport/keyport"
)

// TestMapErrSQLite maps the SQLite driver's own errors: constraint
// violations on a unique column, a primary key and a foreign key, and a
// write refused because another connection holds the write lock.
func TestMapErrSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "errors.db")
	open := func() *sql.DB {
		db, err := sql.Open("sqlite3", path+"?_busy_timeout=0&_foreign_keys=1&_journal_mode=WAL")
		if err != nil {
			t.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		return db
	}
	a := open()
	for _, q := range []string{
		`CREATE TABLE p (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)`,
		`CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER NOT NULL REFERENCES p (id))`,
		`INSERT INTO p VALUES (1, 'one')`,
	} {
		if _, err := a.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, query string
		want        error
	}{
		{"unique", `INSERT INTO p VALUES (2, 'one')`, keyport.ErrConflict},
		{"primary key", `INSERT INTO p VALUES (1, 'two')`, keyport.ErrConflict},
		{"foreign key", `INSERT INTO c VALUES (1, 9)`, keyport.ErrNotFound},
	} {
		_, err := a.Exec(tc.query)
		if err == nil {
			t.Fatalf("%s: no error", tc.name)
		}
		if got := mapErr(err); !errors.Is(got, tc.want) {
			t.Errorf("%s: mapErr(%v) = %v, want %v", tc.name, err, got, tc.want)
		}
	}

	tx, err := a.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`INSERT INTO p VALUES (3, 'three')`); err != nil {
		t.Fatal(err)
	}
	_, err = open().Exec(`INSERT INTO p VALUES (4, 'four')`)
	if err == nil {
		t.Fatal("a second writer got the lock")
	}
	if got := mapErr(err); !errors.Is(got, keyport.ErrUnavailable) {
		t.Errorf("busy: mapErr(%v) = %v, want ErrUnavailable", err, got)
	}

	// An error that is not the driver's passes through.
	other := errors.New("something else")
	if got := mapErr(other); got != other {
		t.Errorf("mapErr(other) = %v", got)
	}
}
