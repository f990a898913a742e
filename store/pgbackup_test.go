package store_test

import (
	"bytes"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// pgRows returns every row of every table of the PostgreSQL database dsn
// as "table: (row as text)", sorted, and each identity sequence's last
// value: two databases holding the same data give the same list.
func pgRows(t *testing.T, dsn string) []string {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var out []string
	query := func(q string, prefix string) {
		rows, err := db.Query(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer rows.Close()
		for rows.Next() {
			var s sql.NullString
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, prefix+s.String)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	var tables []string
	rows, err := db.Query(`SELECT table_name FROM information_schema.tables
		WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	for _, n := range tables {
		query(`SELECT x::text FROM "`+n+`" x ORDER BY 1`, n+": ")
	}
	query(`SELECT table_name || '.' || column_name || ' = ' ||
			COALESCE(pg_sequence_last_value(pg_get_serial_sequence(table_name, column_name)::regclass)::text, 'not called')
		FROM information_schema.columns WHERE table_schema = current_schema() AND is_identity = 'YES'`, "sequence ")
	slices.Sort(out)
	return out
}

// pgTableCount is the number of tables in the database's schema.
func pgTableCount(t *testing.T, dsn string) int {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// awkward is text with every byte PostgreSQL's text takes that COPY's text
// format escapes or a careless encoder mangles (NUL it does not take).
const awkward = "back\\slash \\N \\. tab\tnew\nline\rcr 'quote' \"dq\" ; -- comment é ☃ \x01\x7f end\\"

// A PostgreSQL database restored from keyport's backup equals the source,
// row for row in every table, sequences included: text with backslashes,
// tabs, newlines and quotes, bytea of every byte value, an empty bytea and
// NULLs come back as they were, and new rows get ids after the restored
// ones.
func TestPostgresBackupRestoresEveryRowValueAndSequenceAsTheSourceHeldIt(t *testing.T) {
	src := storetest.PostgresURL(t)
	s := storetest.Open(t, src)
	b := createBatch(t, s, "b1")
	if n, err := s.ImportModules(ctx, b.ID, modules(1, 20, 2)); err != nil || n != 20 {
		t.Fatalf("import: %d %v", n, err)
	}
	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	storetest.ExecSQL(t, src, `INSERT INTO outbox (topic, payload, created_at) VALUES (?, ?, now())`, awkward, awkward)
	storetest.ExecSQL(t, src, `INSERT INTO audit_checkpoints (seq, hash, mac, at) VALUES (1, ?, ?, now())`, every, []byte{})
	u := &keyport.User{Email: "a@example.com", PasswordHash: awkward, Contact: awkward, CreatedAt: time.Now()}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	storetest.ExecSQL(t, src, `UPDATE users SET totp_secret_wrapped = ? WHERE id = ?`, []byte("\\x00\x00\\\n"), u.ID)
	want := pgRows(t, src)

	out := filepath.Join(t.TempDir(), "keyport.backup")
	if _, err := s.Backup(ctx, out); err != nil {
		t.Fatal(err)
	}
	target := storetest.PostgresURL(t)
	info, err := (store.RestoreOptions{}).Restore(ctx, out, target)
	if err != nil {
		t.Fatal(err)
	}
	if info.Dialect != "postgres" || info.SchemaVersion != store.LatestVersion() {
		t.Fatalf("restore info %+v", info)
	}
	if got := pgRows(t, target); !slices.Equal(got, want) {
		for _, l := range got {
			if !slices.Contains(want, l) {
				t.Errorf("restored, not in the source: %q", l)
			}
		}
		for _, l := range want {
			if !slices.Contains(got, l) {
				t.Errorf("in the source, not restored: %q", l)
			}
		}
		t.Fatal("the restored database differs from the source")
	}
	db, err := sql.Open("pgx", target)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var hash, mac []byte
	if err := db.QueryRow(`SELECT hash, mac FROM audit_checkpoints WHERE seq = 1`).Scan(&hash, &mac); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hash, every) || mac == nil || len(mac) != 0 {
		t.Fatalf("bytea restored as %x and %#v; want every byte and an empty (not NULL) value", hash, mac)
	}
	var payload string
	if err := db.QueryRow(`SELECT payload FROM outbox`).Scan(&payload); err != nil || payload != awkward {
		t.Fatalf("text restored as %q (%v); want %q", payload, err, awkward)
	}

	r := storetest.Open(t, target)
	nb := createBatch(t, r, "b2")
	if nb.ID <= b.ID {
		t.Fatalf("a batch made after the restore got id %d; want one after the restored %d", nb.ID, b.ID)
	}
}

// A PostgreSQL backup file edited to hold another table, another column,
// a table renamed or left out, a sequence of a column that is no identity, or table
// data PostgreSQL refuses, and one truncated, with a byte flipped, of a
// schema newer than this keyport, or a pg_dump archive, is each refused
// with its own error; a forced restore over a database leaves its data as
// it was (the drop and the migrations are in the refused transaction), and
// a restore into an empty database leaves it without a table. The backup
// split and joined again unedited restores.
func TestPostgresRestoreRefusesAnEditedBackupAndLeavesTheDatabaseAsItWas(t *testing.T) {
	src := storetest.PostgresURL(t)
	s := storetest.Open(t, src)
	b := createBatch(t, s, "b1")
	if n, err := s.ImportModules(ctx, b.ID, modules(1, 3, 2)); err != nil || n != 3 {
		t.Fatalf("import: %d %v", n, err)
	}
	backup := filepath.Join(t.TempDir(), "keyport.backup")
	if _, err := s.Backup(ctx, backup); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	v, parts, err := store.SplitPGBackupForTest(raw)
	if err != nil {
		t.Fatal(err)
	}
	edited := func(edit func(p []store.PGBackupPart) []store.PGBackupPart) []byte {
		c := make([]store.PGBackupPart, len(parts))
		for i, p := range parts {
			p.Cols = slices.Clone(p.Cols)
			c[i] = p
		}
		return store.JoinPGBackupForTest(v, edit(c))
	}
	firstSeq := slices.IndexFunc(parts, func(p store.PGBackupPart) bool { return p.Sequence })
	table := func(p []store.PGBackupPart, name string) *store.PGBackupPart {
		i := slices.IndexFunc(p, func(p store.PGBackupPart) bool { return !p.Sequence && p.Table == name })
		if i < 0 {
			t.Fatalf("no table %s in the backup", name)
		}
		return &p[i]
	}
	flipped := slices.Clone(raw)
	at := bytes.Index(flipped, []byte(testEID(2).String()))
	if at < 0 {
		t.Fatal("no EID in the backup")
	}
	flipped[at+5] ^= 0x01

	existing := storetest.PostgresURL(t)
	e := storetest.Open(t, existing)
	createBatch(t, e, "kept")
	e.Close()
	before := pgRows(t, existing)
	empty := storetest.PostgresURL(t)

	for _, c := range []struct {
		name string
		file []byte
		is   error
		want string
	}{
		{"an extra table", edited(func(p []store.PGBackupPart) []store.PGBackupPart {
			return slices.Insert(p, firstSeq, store.PGBackupPart{Table: "notes", Cols: []string{"body"}})
		}), store.ErrSchemaMismatch, `table "notes" is not part of it`},
		{"an extra column", edited(func(p []store.PGBackupPart) []store.PGBackupPart {
			u := table(p, "users")
			u.Cols = append(u.Cols, "is_admin")
			return p
		}), store.ErrSchemaMismatch, `table "users" has a column "is_admin"`},
		{"a renamed table", edited(func(p []store.PGBackupPart) []store.PGBackupPart {
			table(p, "users").Table = "accounts"
			return p
		}), store.ErrSchemaMismatch, `table "accounts" is not part of it`},
		{"a missing table", edited(func(p []store.PGBackupPart) []store.PGBackupPart {
			return slices.DeleteFunc(p, func(p store.PGBackupPart) bool { return !p.Sequence && p.Table == "sessions" })
		}), store.ErrSchemaMismatch, `table "sessions" is missing`},
		{"a sequence of a column that is no identity", edited(func(p []store.PGBackupPart) []store.PGBackupPart {
			return append(p, store.PGBackupPart{Sequence: true, Table: "users", Cols: []string{"failed_logins"}, Called: true, Last: 7})
		}), store.ErrSchemaMismatch, "identity columns"},
		{"table data PostgreSQL refuses", edited(func(p []store.PGBackupPart) []store.PGBackupPart {
			table(p, "modules").Data = []byte("1\tnot binary COPY\n")
			return p
		}), store.ErrBackupDamaged, "table modules"},
		{"a truncated stream", raw[:at], store.ErrBackupDamaged, "the file ends inside a chunk of table modules"},
		{"a flipped byte", flipped, store.ErrBackupDamaged, "SHA-256 does not match"},
		{"a schema newer than the code", store.JoinPGBackupForTest(store.LatestVersion()+1, parts), store.ErrSchemaTooNew, "code knows"},
		{"a pg_dump archive", append([]byte("PGDMP\x01\x0f\x00\x04\x08\x01\x01\x01"), raw[40:200]...), store.ErrPGDumpArchive, "pg_restore --no-owner"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "edited.backup")
			if err := os.WriteFile(f, c.file, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := (store.RestoreOptions{Force: true}).Restore(ctx, f, existing)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("forced restore: %v; want %v saying %q", err, c.is, c.want)
			}
			t.Logf("refused: %v", err)
			if after := pgRows(t, existing); !slices.Equal(after, before) {
				t.Fatalf("the database restored over changed:\n%q\nwas\n%q", after, before)
			}
			if _, err := (store.RestoreOptions{}).Restore(ctx, f, empty); !errors.Is(err, c.is) {
				t.Fatalf("restore into an empty database: %v; want %v", err, c.is)
			}
			if n := pgTableCount(t, empty); n != 0 {
				t.Fatalf("a refused restore left %d tables in the empty database", n)
			}
		})
	}

	f := filepath.Join(t.TempDir(), "rejoined.backup")
	if err := os.WriteFile(f, store.JoinPGBackupForTest(v, parts), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := (store.RestoreOptions{Force: true}).Restore(ctx, f, existing); err != nil {
		t.Fatalf("the backup split and joined unedited: %v", err)
	}
	if got, want := pgRows(t, existing), pgRows(t, src); !slices.Equal(got, want) {
		t.Fatal("the forced restore does not equal the source")
	}
}

// A backup of one database given to a restore into the other kind is
// refused saying which kind it is, and nothing is written.
func TestRestoreNamesABackupOfTheOtherDatabaseKind(t *testing.T) {
	pg := storetest.PostgresURL(t)
	s := storetest.Open(t, pg)
	pgBackup := filepath.Join(t.TempDir(), "pg.backup")
	if _, err := s.Backup(ctx, pgBackup); err != nil {
		t.Fatal(err)
	}
	sq := storetest.Open(t, storetest.SQLitePath(t))
	sqBackup := filepath.Join(t.TempDir(), "sqlite.backup")
	if _, err := sq.Backup(ctx, sqBackup); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "restored", "keyport.db")
	if _, err := (store.RestoreOptions{}).Restore(ctx, pgBackup, target); err == nil || !strings.Contains(err.Error(), "a PostgreSQL backup") {
		t.Fatalf("a PostgreSQL backup restored into SQLite: %v; want it named", err)
	}
	if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused restore left %s: %v", target, err)
	}
	empty := storetest.PostgresURL(t)
	if _, err := (store.RestoreOptions{}).Restore(ctx, sqBackup, empty); err == nil || !strings.Contains(err.Error(), "an SQLite backup") {
		t.Fatalf("an SQLite backup restored into PostgreSQL: %v; want it named", err)
	}
	if n := pgTableCount(t, empty); n != 0 {
		t.Fatalf("a refused restore left %d tables", n)
	}
}
