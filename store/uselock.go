package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyport/keyport/internal/filelock"
)

// ErrInUse: the database's use lock is held in a mode that conflicts: a
// restore was refused because a keyport serve (or a backup, or another
// restore) is using the database, or serve or a backup because a restore
// is running on it.
var ErrInUse = errors.New("the database is in use")

// useLockKey is the database's use lock on PostgreSQL: the key of a
// session-level advisory lock ("kprestor" in ASCII). pg_locks shows it as
// locktype 'advisory', classid 1802531429 (0x6b707265), objid 1937010546
// (0x73746f72), objsubid 1; mode ShareLock for each serve and backup,
// ExclusiveLock for a restore.
const useLockKey = 0x6b70726573746f72

// useLockCheckEvery is how often serve checks the PostgreSQL session that
// holds its use lock, and takes the lock again if the session was lost.
var useLockCheckEvery = 5 * time.Second

// useTarget is where a database's use lock is kept: on PostgreSQL an
// advisory lock in the database pgURL names, on SQLite an flock of file.
// Neither for an in-memory SQLite database, which no other process opens.
type useTarget struct {
	pgURL string
	file  string
}

// useTargetOf returns the use lock's place for the database dsn names.
func useTargetOf(dsn string) (useTarget, error) {
	if isPostgresURL(dsn) {
		return useTarget{pgURL: dsn}, nil
	}
	path, query, err := sqlitePath(dsn)
	if err != nil {
		return useTarget{}, err
	}
	file, err := sqliteUseLockFile(path, query)
	return useTarget{file: file}, err
}

// sqliteUseLockFile is the use lock file of the SQLite database path (a
// path or a file: URI, as sqlitePath returns it, with its query): the
// database file's name with ".lock" added, beside it, symbolic links
// resolved so that every name of one database finds one lock file. It is
// "" for an in-memory database (":memory:", mode=memory, vfs=memdb) or a
// temporary one (an empty file name).
func sqliteUseLockFile(path, query string) (string, error) {
	if strings.HasPrefix(path, "file:") {
		u, err := url.Parse(path)
		if err != nil {
			return "", fmt.Errorf("the SQLite URI does not parse: %w", err)
		}
		path = u.Path
		if u.Opaque != "" {
			if path, err = url.PathUnescape(u.Opaque); err != nil {
				return "", fmt.Errorf("the SQLite URI does not parse: %w", err)
			}
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			return "", fmt.Errorf("the SQLite URI's parameters do not parse: %w", err)
		}
		if q.Get("mode") == "memory" || q.Get("vfs") == "memdb" {
			return "", nil
		}
	}
	if path == "" || path == ":memory:" {
		return "", nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	} else if r, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil {
		abs = filepath.Join(r, filepath.Base(abs))
	}
	return abs + ".lock", nil
}

// UseLock is a hold of a database's use lock, which keeps a restore and the
// processes using the database apart: each keyport serve (every replica),
// each backup and each other command that opens the database
// (HoldForUse) holds it shared for as long as it runs; a restore takes
// it exclusive, without waiting, from before it looks at the target
// database to its end. On PostgreSQL it is the
// session-level advisory lock useLockKey, held by a connection of its own;
// on SQLite an flock(2) of the file "<database>.lock" beside the database
// (created, mode 0600; leave it in place). An in-memory SQLite database has
// none: no other process can open it.
type UseLock struct {
	file *os.File // SQLite
	pg   *pgUse   // PostgreSQL

	lost     chan struct{}      // closed when a kept lock was lost
	lostErr  error              // why, set before lost is closed
	loseOnce sync.Once          // closes lost
	stop     context.CancelFunc // stops the keeper (nil without one)
	done     chan struct{}      // closed when the keeper has returned
	once     sync.Once          // Close's
}

// pgUse is a use lock's PostgreSQL session.
type pgUse struct {
	dsn string
	mu  sync.Mutex
	// conn holds the lock; nil after the session was lost, until check
	// takes the lock again on a new one.
	conn *pgx.Conn
	// table is schema_migrations' OID as last seen while the lock was
	// held (0 before the table exists): a restore (forced, it drops it)
	// makes the table anew, under another OID.
	table uint32
}

// HoldForServe takes the use lock of the database dsn names, shared, for a
// keyport serve: several servers (replicas) hold it together, and a restore
// is refused while any does. It fails with ErrInUse, at once, while a
// restore is running. Take it before the store opens (and migrates), and
// close it after the store has closed.
//
// On PostgreSQL the lock lives as long as its session: serve checks it
// every few seconds and, should the session be gone (a PostgreSQL restart,
// a dropped connection), takes the lock again on a new one. If a restore
// took the database meanwhile, or ran and finished, or the session went
// before a check had seen the database's tables (so that a restore cannot
// be ruled out), the lock is lost for good: Lost is closed and Err says
// why, and serve must stop.
func HoldForServe(ctx context.Context, dsn string) (*UseLock, error) {
	target, err := useTargetOf(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: serve: %w", err)
	}
	l, err := holdUse(ctx, target, true)
	if errors.Is(err, ErrInUse) {
		return nil, fmt.Errorf("store: serve: %w: a keyport restore is running on it; start serve again once the restore has finished", err)
	}
	if err != nil {
		return nil, fmt.Errorf("store: serve: %w", err)
	}
	if l.pg != nil {
		keepCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
		l.stop, l.done = stop, make(chan struct{})
		go l.keep(keepCtx)
	}
	return l, nil
}

// HoldForUse takes the use lock of the database dsn names, shared, for a
// command that reads or writes it (migrate, import, provider add, hsm
// init…): a restore is refused while it runs, and it fails with ErrInUse,
// at once, while a restore is running. Unlike HoldForServe nothing watches
// the lock's PostgreSQL session: a command is short.
func HoldForUse(ctx context.Context, dsn string) (*UseLock, error) {
	target, err := useTargetOf(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	l, err := holdUse(ctx, target, true)
	if errors.Is(err, ErrInUse) {
		return nil, fmt.Errorf("store: %w: a keyport restore is running on it; run the command again once the restore has finished", err)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return l, nil
}

// lockForRestore takes the use lock of target exclusive, or fails with
// ErrInUse naming who holds it.
func lockForRestore(ctx context.Context, target useTarget) (*UseLock, error) {
	l, err := holdUse(ctx, target, false)
	if !errors.Is(err, ErrInUse) {
		return l, err
	}
	// Who holds it: if it can be had shared, servers (or backups) do.
	var who string
	switch s, serr := holdUse(ctx, target, true); {
	case serr == nil:
		s.release()
		who = "a keyport serve (or a backup or another command) is using it; stop every keyport serve on this database (each replica), then run restore again"
	case errors.Is(serr, ErrInUse):
		who = "another keyport restore is running on it; wait for it to finish"
	default:
		who = "a keyport serve, backup or restore is using it; stop every keyport serve on this database (each replica), then run restore again"
	}
	if target.file != "" {
		who += fmt.Sprintf(" (`fuser %s` names the processes)", target.file)
	}
	return nil, fmt.Errorf("%w: %s", err, who)
}

// holdUse takes target's use lock without waiting, shared or exclusive;
// ErrInUse if it is held in a mode that conflicts.
func holdUse(ctx context.Context, target useTarget, shared bool) (*UseLock, error) {
	l := &UseLock{lost: make(chan struct{})}
	switch {
	case target.pgURL != "":
		conn, err := pgx.Connect(ctx, target.pgURL)
		if err != nil {
			return nil, fmt.Errorf("the use lock's connection: %w", redactURL(mapUnavailable(err), target.pgURL))
		}
		ok, err := pgTryUseLock(ctx, conn, shared)
		if err == nil && ok {
			var table uint32
			if table, err = pgMigrationsTable(ctx, conn); err == nil {
				l.pg = &pgUse{dsn: target.pgURL, conn: conn, table: table}
				return l, nil
			}
		}
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return nil, fmt.Errorf("the use lock: %w", mapErr(err))
		}
		return nil, ErrInUse
	case target.file != "":
		f, err := filelock.TryLock(target.file, shared)
		if errors.Is(err, filelock.ErrHeld) {
			return nil, ErrInUse
		}
		if err != nil {
			return nil, fmt.Errorf("the use lock: %w", err)
		}
		l.file = f
	}
	return l, nil
}

// pgTryUseLock tries the advisory lock useLockKey on conn's session.
func pgTryUseLock(ctx context.Context, conn *pgx.Conn, shared bool) (bool, error) {
	q := `SELECT pg_try_advisory_lock($1)`
	if shared {
		q = `SELECT pg_try_advisory_lock_shared($1)`
	}
	var ok bool
	err := conn.QueryRow(ctx, q, int64(useLockKey)).Scan(&ok)
	return ok, err
}

// pgMigrationsTable returns schema_migrations' OID, 0 if there is none.
func pgMigrationsTable(ctx context.Context, conn *pgx.Conn) (uint32, error) {
	var oid *uint32
	if err := conn.QueryRow(ctx, `SELECT to_regclass('schema_migrations')::oid`).Scan(&oid); err != nil || oid == nil {
		return 0, err
	}
	return *oid, nil
}

// keep checks the PostgreSQL session every useLockCheckEvery until the
// lock is closed or lost.
func (l *UseLock) keep(ctx context.Context) {
	defer close(l.done)
	t := time.NewTicker(useLockCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if l.check(ctx) != nil {
			return
		}
	}
}

// check runs pgUse.check; a lock lost for good closes Lost.
func (l *UseLock) check(ctx context.Context) error {
	err := l.pg.check(ctx)
	if err != nil {
		l.loseOnce.Do(func() {
			l.lostErr = err
			close(l.lost)
		})
	}
	return err
}

// check makes sure the lock's session is alive, or takes the lock again on
// a new session. It returns an error only when the lock is lost for good: a
// restore holds it, or schema_migrations is no longer the table it was (a
// restore ran while the session was gone), or is there now but was not at
// the last check. PostgreSQL out of reach is no such error: the next check
// tries again.
func (p *pgUse) check(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		table, err := pgMigrationsTable(pingCtx, p.conn)
		cancel()
		if err == nil {
			if table != 0 {
				p.table = table
			}
			return nil
		}
		if ctx.Err() != nil {
			return nil // the lock is being closed
		}
		// The session is gone, or too slow to tell (pgx closes a
		// connection whose query timed out): a new one takes the lock.
		p.conn.Close(context.WithoutCancel(ctx))
		p.conn = nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		return nil
	}
	ok, err := pgTryUseLock(ctx, conn, true)
	var table uint32
	if err == nil && ok {
		table, err = pgMigrationsTable(ctx, conn)
	}
	switch {
	case err != nil:
		conn.Close(context.WithoutCancel(ctx))
		return nil
	case !ok:
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("store: serve: %w: the session holding its use lock was lost, and a keyport restore took the database meanwhile; this server must not go on: start it again once the restore has finished", ErrInUse)
	case p.table != 0 && table != p.table:
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("store: serve: %w: the session holding its use lock was lost, and meanwhile the database was restored (schema_migrations is a new table); this server's state is stale: start it again", ErrInUse)
	case p.table == 0 && table != 0:
		// The session went before a check saw the tables (they came with
		// this server's own migrations, or with a restore): which, cannot
		// be told.
		conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("store: serve: %w: the session holding its use lock was lost before this server had seen the database's tables, so a restore may have come between; start it again", ErrInUse)
	}
	p.conn, p.table = conn, table
	return nil
}

// Lost is closed when serve's lock on PostgreSQL was lost for good (see
// HoldForServe); Err then says why. On SQLite it is never closed.
func (l *UseLock) Lost() <-chan struct{} { return l.lost }

// Err is why the lock was lost, nil while it is held.
func (l *UseLock) Err() error {
	select {
	case <-l.lost:
		return l.lostErr
	default:
		return nil
	}
}

// confirm returns an error if a restore's lock on PostgreSQL may have gone
// with its session during the restore (a server could then have started).
func (l *UseLock) confirm(ctx context.Context) error {
	if l.pg == nil {
		return nil
	}
	l.pg.mu.Lock()
	defer l.pg.mu.Unlock()
	if _, err := l.pg.conn.Exec(ctx, `SELECT 1`); err != nil {
		return fmt.Errorf("the session holding the database's use lock was lost during the restore, so a keyport serve may have started on the database meanwhile: stop every server and restore again (%v)", mapErr(err))
	}
	return nil
}

// Close releases the lock: it ends its PostgreSQL session or closes its
// lock file.
func (l *UseLock) Close() error {
	if l == nil {
		return nil
	}
	var err error
	l.once.Do(func() {
		if l.stop != nil {
			l.stop()
			<-l.done
		}
		err = l.release()
	})
	return err
}

// release lets the lock go; the keeper has stopped or never ran.
func (l *UseLock) release() error {
	switch {
	case l.pg != nil:
		l.pg.mu.Lock()
		defer l.pg.mu.Unlock()
		if l.pg.conn != nil {
			// Unlocked before the connection goes: a closed connection's
			// locks are released when its backend notices, a moment
			// after Close returns, and a restore started at once (after
			// `keyport audit verify`, say) would find the lock still held.
			// On a connection already lost this fails, and its locks are
			// gone or going anyway.
			uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, _ = l.pg.conn.Exec(uctx, `SELECT pg_advisory_unlock_all()`)
			cancel()
			err := l.pg.conn.Close(context.Background())
			l.pg.conn = nil
			if err != nil {
				return fmt.Errorf("store: release the use lock: %w", err)
			}
		}
	case l.file != nil:
		if err := l.file.Close(); err != nil {
			return fmt.Errorf("store: release the use lock: %w", err)
		}
	}
	return nil
}
