package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mattn/go-sqlite3"
)

// ErrBackupExists: the backup file, or the database a restore would write,
// exists already. A backup never overwrites a file; a restore overwrites a
// database only when told to (RestoreOptions.Force).
var ErrBackupExists = errors.New("exists already")

// BackupInfo describes a backup that was written or restored.
type BackupInfo struct {
	Dialect       string // "sqlite" or "postgres"
	SchemaVersion int    // the schema version the backup holds (0 when unknown: a PostgreSQL dump before restore)
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
// on beside it. The copy is then checked (quick_check, schema version) and
// turned into a single self-contained file (rollback journal, not WAL)
// before it appears under out, mode 0600.
//
// On PostgreSQL it runs pg_dump (custom format, one snapshot, no owners or
// privileges), which must be on PATH; the password travels in PGPASSWORD,
// never on its command line.
func (s *Store) Backup(ctx context.Context, out string) (*BackupInfo, error) {
	if _, err := os.Lstat(out); err == nil {
		return nil, fmt.Errorf("store: backup: %s %w; choose a new file", out, ErrBackupExists)
	}
	if s.dialect == dialectPostgres {
		return s.pgDump(ctx, out)
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
	dir, base := filepath.Split(out)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*.partial") // mode 0600
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
	// Link, not rename: a file that appeared under out meanwhile is kept.
	if err := os.Link(tmp, out); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("store: %s: %s %w", op, out, ErrBackupExists)
		}
		return nil, fmt.Errorf("store: %s: %w", op, err)
	}
	return info, nil
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
// keyport schema no newer than this code. It switches the file to a
// rollback journal, so that it is one self-contained file, and syncs it.
func checkSQLiteCopy(ctx context.Context, path string) (*BackupInfo, error) {
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
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

// checkSQLiteFile runs quick_check on db and returns its schema version,
// refusing a file that is not a keyport database or is newer than the code.
func checkSQLiteFile(ctx context.Context, db *sql.DB) (int, error) {
	var ok string
	if err := db.QueryRowContext(ctx, `PRAGMA quick_check`).Scan(&ok); err != nil {
		return 0, fmt.Errorf("not an SQLite database: %w", err)
	}
	if ok != "ok" {
		return 0, errors.New("SQLite's quick_check fails: the file is damaged")
	}
	var v int
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil || v == 0 {
		return 0, errors.New("not a keyport database (no schema version)")
	}
	if v > LatestVersion() {
		return v, fmt.Errorf("version %d, code knows %d: %w", v, LatestVersion(), ErrSchemaTooNew)
	}
	return v, nil
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
}

// Restore writes the backup in file from (made by Backup) to the database
// dsn names, then checks it. It refuses a backup whose schema is newer than
// this code, and a database that exists already unless o.Force. A backup
// older than the code is restored; `keyport migrate` then brings it up to
// date. The HSM token the backup's keys are wrapped under must be restored
// separately: without it the database is of no use.
//
// On SQLite a new database file is written next to the target and linked
// into place; with Force an existing one is overwritten through the online
// backup API, which takes SQLite's locks (so a server still running on it
// cannot see half a restore, though it should be stopped first). On
// PostgreSQL it runs pg_restore (with --clean when forced) in one
// transaction.
func (o RestoreOptions) Restore(ctx context.Context, from, dsn string) (*BackupInfo, error) {
	st, err := os.Stat(from)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return o.pgRestore(ctx, from, dsn, st.Size())
	}
	path, _, err := sqlitePath(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	if strings.HasPrefix(path, "file:") {
		return nil, errors.New("store: restore: give the target database as a plain path, not a file: URI")
	}
	sdb, err := sql.Open("sqlite3", from+"?_query_only=1")
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer sdb.Close()
	sdb.SetMaxOpenConns(1)
	v, err := checkSQLiteFile(ctx, sdb)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	src, err := sdb.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer src.Close()
	exists := false
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil && fi.Size() > 0 {
			exists = true
		}
	}
	if exists && !o.Force {
		return nil, fmt.Errorf("store: restore: the database %s %w; to replace it, stop the server and pass --force", path, ErrBackupExists)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
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
	return &BackupInfo{Dialect: "sqlite", SchemaVersion: v, Bytes: st.Size()}, nil
}

// pgTool runs a PostgreSQL client tool against dsn: the URL without its
// password goes on the command line, the password in PGPASSWORD.
func pgTool(ctx context.Context, dsn, name string, args ...string) error {
	u, err := url.Parse(dsn)
	if err != nil {
		return fmt.Errorf("%s: the database URL does not parse", name)
	}
	env := os.Environ()
	if pw, ok := u.User.Password(); ok {
		env = append(env, "PGPASSWORD="+pw)
		u.User = url.User(u.User.Username())
	}
	bin, err := exec.LookPath(name) // deps: optional (pg_dump, pg_restore: postgresql-client, for PostgreSQL only)
	if err != nil {
		return fmt.Errorf("%s is not on PATH: install the PostgreSQL client tools (apt-get install postgresql-client)", name)
	}
	cmd := exec.CommandContext(ctx, bin, append(args, "--dbname="+u.String())...) // deps: optional (the tool found above)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(out))
		if pw, ok := mustPassword(dsn); ok {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
		if len(msg) > 2000 {
			msg = msg[:2000] + "…"
		}
		return fmt.Errorf("%s: %v: %s", name, err, msg)
	}
	return nil
}

func mustPassword(dsn string) (string, bool) {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return "", false
	}
	pw, ok := u.User.Password()
	return pw, ok && pw != ""
}

func (s *Store) pgDump(ctx context.Context, out string) (*BackupInfo, error) {
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	dsn, ok := s.pgDSN()
	if !ok {
		return nil, errors.New("store: backup: the PostgreSQL URL is unknown")
	}
	dir, base := filepath.Split(out)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".*.partial")
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	tmp := f.Name()
	f.Close()
	defer os.Remove(tmp)
	if err := pgTool(ctx, dsn, "pg_dump", "--format=custom", "--no-owner", "--no-privileges", "--file="+tmp); err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	if err := os.Link(tmp, out); err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	fi, err := os.Stat(out)
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	return &BackupInfo{Dialect: "postgres", SchemaVersion: v, Bytes: fi.Size()}, nil
}

func (o RestoreOptions) pgRestore(ctx context.Context, from, dsn string, size int64) (*BackupInfo, error) {
	s, err := open(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	var reg *string
	err = s.w.WithContext(ctx).Raw(`SELECT to_regclass('schema_migrations')::text`).Scan(&reg).Error
	s.Close()
	if err != nil {
		return nil, wrap("restore", err)
	}
	if reg != nil && !o.Force {
		return nil, fmt.Errorf("store: restore: the database %w (it holds keyport's tables); to replace it, stop the servers and pass --force", ErrBackupExists)
	}
	args := []string{"--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"}
	if reg != nil {
		args = append(args, "--clean", "--if-exists")
	}
	if err := pgTool(ctx, dsn, "pg_restore", append(args, from)...); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	s, err = open(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer s.Close()
	v, err := s.SchemaVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	if v > LatestVersion() {
		return nil, fmt.Errorf("store: restore: restored version %d, code knows %d: %w", v, LatestVersion(), ErrSchemaTooNew)
	}
	return &BackupInfo{Dialect: "postgres", SchemaVersion: v, Bytes: size}, nil
}

func (s *Store) pgDSN() (string, bool) { return s.pgURL, s.pgURL != "" }
