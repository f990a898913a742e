package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/mattn/go-sqlite3"
)

// ErrBackupExists: the backup file, or the database a restore would write,
// exists already. A backup never overwrites a file; a restore overwrites a
// database only when told to (RestoreOptions.Force).
var ErrBackupExists = errors.New("exists already")

// BackupInfo describes a backup that was written or restored.
type BackupInfo struct {
	Dialect       string // "sqlite" or "postgres"
	SchemaVersion int    // the schema version the backup holds
	Bytes         int64  // the backup file's size
}

// Backup writes a consistent copy of the database to the new file out while
// the database is in use (the server running, an import and claims under
// way). It holds what the database holds and nothing more: wrapped and
// sealed key material, hashes, the audit chain; the HSM token that unwraps
// it is not in it and must be backed up on its own.
//
// On SQLite it is SQLite's online backup API (sqlite3_backup_*, which
// mattn/go-sqlite3 exposes), run in one step from a read connection: under
// WAL the copy is the database as of one read transaction, and writers go
// on beside it. The copy is then checked (quick_check, schema version, a
// schema that is exactly the migrations', as Restore requires) and turned
// into a single self-contained file (rollback journal, not WAL) before it
// appears under out, mode 0600.
//
// On PostgreSQL it writes keyport's own format (pgbackup.go): in one
// REPEATABLE READ, READ ONLY transaction, the schema version and, for each
// table the migrations create at that version, its columns as COPY gives
// them, then the identity sequences' values and a SHA-256 of it all. It
// holds data only: no SQL, nothing of the database that keyport's
// migrations do not make. It needs no client tools. So that nothing is
// left out without a word, it first requires the snapshot's tables and
// columns (those of the current schema) to be exactly those the migrations
// create at its version, with the same types, and refuses a database
// that has drifted (ErrSchemaDrift, naming each table and column that is
// extra, missing or of another type), writing nothing.
//
// It holds the database's use lock shared while it runs (UseLock), as
// serve does: it fails with ErrInUse while a restore is running, and a
// restore is refused while it runs, so that a backup is never of a
// database half restored, nor its schema version read before a restore
// and its data after.
func (s *Store) Backup(ctx context.Context, out string) (*BackupInfo, error) {
	if _, err := os.Lstat(out); err == nil {
		return nil, fmt.Errorf("store: backup: %s %w; choose a new file", out, ErrBackupExists)
	}
	l, err := holdUse(ctx, s.use, true)
	if errors.Is(err, ErrInUse) {
		return nil, fmt.Errorf("store: backup: %w: a keyport restore is running on it; back up once the restore has finished", err)
	}
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	defer l.Close()
	if s.dialect == dialectPostgres {
		return s.pgBackup(ctx, out)
	}
	src, err := s.pools[len(s.pools)-1].Conn(ctx)
	if err != nil {
		return nil, wrap("backup", err)
	}
	defer src.Close()
	return writeSQLiteCopy(ctx, src, out, "backup")
}

// writeSQLiteCopy copies the database behind src into a new temporary file
// next to out, checks it and links it to out (which must not exist).
func writeSQLiteCopy(ctx context.Context, src *sql.Conn, out, op string) (*BackupInfo, error) {
	f, err := createBeside(out)
	if err != nil {
		return nil, fmt.Errorf("store: %s: %w", op, err)
	}
	tmp := f.Name()
	f.Close()
	defer removeSQLite(tmp)
	if err := copySQLite(ctx, src, tmp); err != nil {
		return nil, fmt.Errorf("store: %s: %w", op, err)
	}
	info, err := checkSQLiteCopy(ctx, tmp)
	if err != nil {
		return nil, fmt.Errorf("store: %s: the copy: %w", op, err)
	}
	if err := linkNew(tmp, out, op); err != nil {
		return nil, err
	}
	return info, nil
}

// createBeside creates a new temporary file, mode 0600, in out's directory,
// for linkNew to put in place once it is whole.
func createBeside(out string) (*os.File, error) {
	dir, base := filepath.Split(out)
	if dir == "" {
		dir = "."
	}
	return os.CreateTemp(dir, "."+base+".*.partial")
}

// linkNew gives the whole file tmp the name out, which must not exist
// (ErrBackupExists), and makes the new name durable as far as the system
// allows. Link, not rename: a file that appeared under out meanwhile is
// kept.
func linkNew(tmp, out, op string) error {
	if err := os.Link(tmp, out); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("store: %s: %s %w", op, out, ErrBackupExists)
		}
		return fmt.Errorf("store: %s: %w", op, err)
	}
	dir := filepath.Dir(out)
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// copySQLite copies the database behind src over the SQLite file dst with
// the online backup API, in one step: the copy is one read transaction's
// view of src. A busy source (a checkpoint or recovery under way) is
// retried until ctx ends.
func copySQLite(ctx context.Context, src *sql.Conn, dst string) error {
	ddb, err := sql.Open("sqlite3", dst+"?_busy_timeout=10000")
	if err != nil {
		return err
	}
	defer ddb.Close()
	dconn, err := ddb.Conn(ctx)
	if err != nil {
		return err
	}
	defer dconn.Close()
	return src.Raw(func(sc any) error {
		return dconn.Raw(func(dc any) error {
			s, ok1 := sc.(*sqlite3.SQLiteConn)
			d, ok2 := dc.(*sqlite3.SQLiteConn)
			if !ok1 || !ok2 {
				return errors.New("not an SQLite connection")
			}
			b, err := d.Backup("main", s, "main")
			if err != nil {
				return err
			}
			for {
				done, err := b.Step(-1)
				if err != nil {
					b.Finish()
					return err
				}
				if done {
					return b.Finish()
				}
				// Busy or locked: try again shortly.
				select {
				case <-ctx.Done():
					b.Finish()
					return ctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
			}
		})
	})
}

// checkSQLiteCopy checks a copied database file: SQLite's quick_check, a
// keyport schema no newer than this code and exactly the one its
// migrations create at the file's version. It switches the file to a
// rollback journal, so that it is one self-contained file, and syncs it.
func checkSQLiteCopy(ctx context.Context, path string) (*BackupInfo, error) {
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `PRAGMA trusted_schema = OFF`); err != nil {
		return nil, err
	}
	var mode string
	if err := db.QueryRowContext(ctx, `PRAGMA journal_mode=DELETE`).Scan(&mode); err != nil {
		return nil, err
	}
	v, err := checkSQLiteFile(ctx, db)
	if err != nil {
		return nil, err
	}
	if err := db.Close(); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return &BackupInfo{Dialect: "sqlite", SchemaVersion: v, Bytes: st.Size()}, nil
}

// ErrSchemaMismatch: a backup's SQLite schema is not the one this code's
// migrations create at the backup's version: an object is extra (a
// trigger, a view, a table or an index no migration makes), missing or
// defined otherwise. Restoring it could run code planted in the file (a
// trigger fires on every write of its table), so it is refused.
var ErrSchemaMismatch = errors.New("the schema is not the one keyport's migrations create")

// sqliteQuerier is a database or one of its connections.
type sqliteQuerier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// checkSQLiteFile runs quick_check on db and returns its schema version,
// refusing a file that is not a keyport database, is newer than the code,
// or holds a schema other than the one this code's migrations create at
// its version (ErrSchemaMismatch). The caller has turned trusted_schema
// off: nothing the file defines runs while it is checked.
func checkSQLiteFile(ctx context.Context, db sqliteQuerier) (int, error) {
	var ok string
	if err := db.QueryRowContext(ctx, `PRAGMA quick_check`).Scan(&ok); err != nil {
		return 0, fmt.Errorf("not an SQLite database: %w", err)
	}
	if ok != "ok" {
		return 0, errors.New("SQLite's quick_check fails: the file is damaged")
	}
	got, err := sqliteSchema(ctx, db)
	if err != nil {
		return 0, fmt.Errorf("not a keyport database: %w", err)
	}
	// Read the version only from a table: a view's query would run.
	switch sm, ok := got["schema_migrations"]; {
	case !ok:
		return 0, errors.New("not a keyport database (no schema version)")
	case sm.typ != "table":
		return 0, fmt.Errorf("not a keyport database: schema_migrations is a %s, not a table", sm.typ)
	}
	var v int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil || v == 0 {
		return 0, errors.New("not a keyport database (no schema version)")
	}
	if v > LatestVersion() {
		return v, fmt.Errorf("version %d, code knows %d: %w", v, LatestVersion(), ErrSchemaTooNew)
	}
	want, err := migratedSchema(ctx, v)
	if err != nil {
		return v, fmt.Errorf("the schema of version %d: %w", v, err)
	}
	if err := compareSchema(got, want); err != nil {
		return v, fmt.Errorf("version %d: %w", v, err)
	}
	return v, nil
}

// schemaObject is one row of sqlite_schema: a table, index, view or
// trigger, the table it belongs to and the SQL that created it (none for
// the indexes SQLite makes for UNIQUE and PRIMARY KEY constraints).
type schemaObject struct {
	typ, name, table string
	sql              sql.NullString
}

func (o schemaObject) String() string {
	if o.typ == "table" || o.typ == "view" {
		return fmt.Sprintf("%s %q", o.typ, o.name)
	}
	return fmt.Sprintf("%s %q on %q", o.typ, o.name, o.table)
}

// sqliteSchema reads db's schema objects by name.
func sqliteSchema(ctx context.Context, db sqliteQuerier) (map[string]schemaObject, error) {
	rows, err := db.QueryContext(ctx, `SELECT type, name, tbl_name, sql FROM sqlite_schema`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	objs := map[string]schemaObject{}
	for rows.Next() {
		var o schemaObject
		if err := rows.Scan(&o.typ, &o.name, &o.table, &o.sql); err != nil {
			return nil, err
		}
		objs[o.name] = o
	}
	return objs, rows.Err()
}

// migratedSchema returns the schema this code's migrations create on
// SQLite at version v: that of a new database in a temporary directory,
// migrated to v and no further.
func migratedSchema(ctx context.Context, v int) (objs map[string]schemaObject, err error) {
	err = withMigratedSQLite(ctx, v, func(db *sql.DB) error {
		objs, err = sqliteSchema(ctx, db)
		return err
	})
	return objs, err
}

// withMigratedSQLite runs fn on a new SQLite database in a temporary
// directory, migrated to version v and no further: what this code's
// migrations make at v, whatever the database at hand holds.
func withMigratedSQLite(ctx context.Context, v int, fn func(db *sql.DB) error) error {
	dir, err := os.MkdirTemp("", "keyport-schema-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s, err := open(ctx, filepath.Join(dir, "keyport.db"))
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.migrate(ctx, v); err != nil {
		return err
	}
	return fn(s.pools[0])
}

// sqliteInternalTables are the tables SQLite makes for itself, by name,
// with the SQL it gives them: the AUTOINCREMENT counters (made with the
// first such table) and ANALYZE's statistics (made by ANALYZE or PRAGMA
// optimize, which an operator may run). A backup may hold them or not.
var sqliteInternalTables = map[string]string{
	"sqlite_sequence": "CREATE TABLE sqlite_sequence(name,seq)",
	"sqlite_stat1":    "CREATE TABLE sqlite_stat1(tbl,idx,stat)",
	"sqlite_stat4":    "CREATE TABLE sqlite_stat4(tbl,idx,neq,nlt,ndlt,sample)",
}

// compareSchema requires got to hold the objects of want, each of the same
// type, on the same table and made by the same SQL (whitespace aside), and
// nothing else but SQLite's own tables; it names the objects that differ.
func compareSchema(got, want map[string]schemaObject) error {
	var problems []string
	for _, name := range slices.Sorted(maps.Keys(got)) {
		g := got[name]
		w, ok := want[name]
		switch {
		case !ok:
			if def, internal := sqliteInternalTables[name]; internal && g.typ == "table" && g.sql.String == def {
				continue
			}
			problems = append(problems, g.String()+" is not part of it")
		case g.typ != w.typ || g.table != w.table:
			problems = append(problems, fmt.Sprintf("%s should be %s", g, w))
		case g.sql.Valid != w.sql.Valid || normalizeSQL(g.sql.String) != normalizeSQL(w.sql.String):
			problems = append(problems, g.String()+" is defined otherwise")
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want)) {
		if _, ok := got[name]; !ok {
			if _, internal := sqliteInternalTables[name]; !internal {
				problems = append(problems, want[name].String()+" is missing")
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	if n := len(problems); n > 5 {
		problems = append(problems[:5], fmt.Sprintf("and %d more", n-5))
	}
	return fmt.Errorf("%w: %s", ErrSchemaMismatch, strings.Join(problems, "; "))
}

// normalizeSQL turns each run of whitespace outside quotes into one space,
// so that SQL differing only in its layout compares equal; quoted strings
// and identifiers are kept as they are.
func normalizeSQL(q string) string {
	var b strings.Builder
	var quote rune // the closing quote of the quoted text we are in, or 0
	space := false
	for _, r := range strings.TrimSpace(q) {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			}
		case unicode.IsSpace(r):
			space = true
			continue
		case r == '\'' || r == '"' || r == '`':
			quote = r
		case r == '[':
			quote = ']'
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

// removeSQLite removes an SQLite file and its journal, WAL and shared-memory
// files.
func removeSQLite(path string) {
	for _, suffix := range []string{"", "-journal", "-wal", "-shm"} {
		os.Remove(path + suffix)
	}
}

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// Force overwrites a database that exists already (SQLite: a non-empty
	// file; PostgreSQL: a database holding keyport's tables).
	Force bool
	// AfterRestore, if set, runs once the backup is in place and checked,
	// while Restore still holds the database's use lock, so that no
	// server starts on the database before it has returned (keyport
	// restore finishes the imports the backup caught under way). Its
	// error is Restore's.
	AfterRestore func(ctx context.Context, info *BackupInfo) error
}

// Restore writes the backup in file from (made by Backup) to the database
// dsn names, then checks it. It refuses a backup whose schema is newer than
// this code, and a database that exists already unless o.Force. A backup
// older than the code is restored; `keyport migrate` then brings it up to
// date. The HSM token the backup's keys are wrapped under must be restored
// separately: without it the database is of no use.
//
// On SQLite it refuses, before it writes anything, a backup whose schema
// is not exactly the one this code's migrations create at the backup's
// version (ErrSchemaMismatch): an object added to the file, such as a
// trigger that makes every new user an admin, would otherwise live on in
// the restored database. The file is opened read-only with trusted_schema
// off, and checked and copied in one read transaction, so that nothing in
// it runs and what is copied is what was checked. A new database file is
// written next to the target and linked into place; with Force an
// existing one is overwritten through the online backup API.
//
// On PostgreSQL it runs no statement from the file. It reads the whole
// file first with a strict, bounded parser and refuses, before it touches
// the database, one truncated or corrupted (ErrBackupDamaged), of a schema
// newer than the code (ErrSchemaTooNew), holding a table or column this
// code's migrations do not create at the backup's version, or lacking one
// (ErrSchemaMismatch), an SQLite backup, and a pg_dump archive of an
// earlier keyport (ErrPGDumpArchive, whose message says how to restore it
// by hand; on SQLite too). Then,
// in one transaction, it drops keyport's own tables when forced, runs
// keyport's migrations up to the backup's version, checks that the tables
// they made have exactly the file's columns (ErrSchemaDrift: something in
// the database, such as an event trigger, changed them as they were made),
// copies each table in with COPY FROM STDIN on the table and column names
// the code knows, sets the identity sequences and checks the file's hash
// again before it commits: a restore that fails leaves the database as it
// was.
//
// Before it looks at the target database it takes the database's use lock
// exclusive, without waiting, and holds it until it returns (UseLock): it
// fails with ErrInUse, naming who holds the lock, while a keyport serve
// (any replica), a backup or another restore is using the database, and a
// serve starting meanwhile fails.
func (o RestoreOptions) Restore(ctx context.Context, from, dsn string) (*BackupInfo, error) {
	st, err := os.Stat(from)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	if isPostgresURL(dsn) {
		return o.pgRestore(ctx, from, dsn, st.Size())
	}
	if err := refuseNonSQLite(from); err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	path, _, err := sqlitePath(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	if strings.HasPrefix(path, "file:") {
		return nil, errors.New("store: restore: give the target database as a plain path, not a file: URI")
	}
	lockFile, err := sqliteUseLockFile(path, "")
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	// Read-only, and nothing the file defines (a trigger, a view, a
	// function in a default) runs while it is checked and copied.
	abs, err := filepath.Abs(from)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	sdb, err := sql.Open("sqlite3", (&url.URL{Scheme: "file", Path: abs}).String()+"?mode=ro&_query_only=1")
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer sdb.Close()
	sdb.SetMaxOpenConns(1)
	src, err := sdb.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	defer src.Close()
	if _, err := src.ExecContext(ctx, `PRAGMA trusted_schema = OFF`); err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	// One read transaction: what is copied is what was checked.
	if _, err := src.ExecContext(ctx, `BEGIN`); err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	defer src.ExecContext(context.WithoutCancel(ctx), `ROLLBACK`)
	v, err := checkSQLiteFile(ctx, src)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	// The lock file goes beside the database: its directory first.
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	l, err := lockForRestore(ctx, useTarget{file: lockFile})
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer l.Close()
	exists := false
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
			exists = true
		}
	}
	if exists && !o.Force {
		return nil, fmt.Errorf("store: restore: the database %s %w; to replace it, pass --force", path, ErrBackupExists)
	}
	if exists {
		if err := copySQLite(ctx, src, path); err != nil {
			return nil, fmt.Errorf("store: restore over %s: %w", path, err)
		}
	} else {
		// An empty file or stale -shm/-journal files are no database.
		removeSQLite(path)
		if _, err := writeSQLiteCopy(ctx, src, path, "restore"); err != nil {
			return nil, err
		}
	}
	return o.finish(ctx, l, &BackupInfo{Dialect: "sqlite", SchemaVersion: v, Bytes: st.Size()})
}

// finish runs AfterRestore under the restore's lock l, then makes sure l
// was held all along.
func (o RestoreOptions) finish(ctx context.Context, l *UseLock, info *BackupInfo) (*BackupInfo, error) {
	if o.AfterRestore != nil {
		if err := o.AfterRestore(ctx, info); err != nil {
			return nil, err
		}
	}
	if err := l.confirm(ctx); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	return info, nil
}

// refuseNonSQLite names the backups of PostgreSQL (keyport's format or a
// pg_dump archive) given for an SQLite database, which would otherwise
// fail as "not an SQLite database".
func refuseNonSQLite(from string) error {
	f, err := os.Open(from)
	if err != nil {
		return err
	}
	defer f.Close()
	p := make([]byte, len(pgBackupMagic))
	n, _ := io.ReadFull(f, p)
	switch {
	case string(p[:n]) == pgBackupMagic:
		return errors.New("a PostgreSQL backup: restore it into a PostgreSQL database (--db postgres://…)")
	case strings.HasPrefix(string(p[:n]), pgDumpMagic):
		return errPGDumpRefused()
	}
	return nil
}
