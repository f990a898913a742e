package store_test

import (
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyport/keyport/store"
)

// TestOpeningANewSQLiteFileWaitsForAnotherProcessHoldingIt: a replica or
// CLI command opening a new data directory while another holds the file
// (here: a rollback-journal write transaction, as the first of several
// processes starting together has while it turns the file to WAL). The WAL
// switch reads the file, then asks for the write lock, and SQLite does not
// wait (busy_timeout) for a lock a connection must upgrade, lest two
// upgraders wait for each other: the open failed at once with "database
// is locked".
func TestOpeningANewSQLiteFileWaitsForAnotherProcessHoldingIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.db")
	other, err := sql.Open("sqlite3", path+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	other.SetMaxOpenConns(1)
	conn, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE held (x)`); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		conn.ExecContext(ctx, `COMMIT`)
		conn.Close()
	}()
	s, err := store.OpenOptions{Migrate: true}.Open(ctx, path)
	if err != nil {
		t.Fatalf("open while another holds the new file: %v", err)
	}
	defer s.Close()
	if mode, err := store.QueryStringsForTest(s, `PRAGMA journal_mode`); err != nil || mode[0] != "wal" {
		t.Fatalf("journal mode %v, %v; want wal", mode, err)
	}
}
