// Package store is keyport's storage: the keyport.Store port over gorm, on an
// embedded SQLite file (one process, a small issuer) or on PostgreSQL (several
// replicas). The schema is built by versioned migrations (migrate.go) that give
// the same tables, columns, keys and indexes on both databases.
//
// Key material never reaches this package in clear: imported first keys arrive
// KWP-wrapped and are stored exactly as given. Errors name the operation and the
// cause, never a row's values, and gorm's logger is silenced so that no SQL
// argument is ever written to a log.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/mattn/go-sqlite3"
	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/keyport/keyport"
)

// dialect is the database flavour behind a Store.
type dialect int

const (
	dialectSQLite dialect = iota
	dialectPostgres
)

func (d dialect) String() string {
	if d == dialectPostgres {
		return "postgres"
	}
	return "sqlite"
}

// Store is keyport.Store over SQLite or PostgreSQL. It is safe for concurrent
// use. On SQLite all writes go through one connection, so concurrent write
// transactions queue in Go instead of failing with "database is locked";
// reads outside a transaction use a separate pool of read-only connections,
// which WAL lets run beside the writer.
type Store struct {
	*repo
	dialect dialect
	pools   []*sql.DB
	pgURL   string // the PostgreSQL URL, for the wake-up listener (wakebus.go)
	// lockPath is the SQLite database's path, beside which Exclusive
	// keeps its lock files ("" on PostgreSQL).
	lockPath string
	// use is where the database's use lock is kept (uselock.go), which
	// Backup holds shared.
	use useTarget
	// checkpoints copies SQLite's WAL into the database file (nil on
	// PostgreSQL).
	checkpoints *checkpointer

	// timing is set by Collector: from then on statements are timed.
	// txStmts are the write transactions' prepared statements (tx).
	txStmts     *txStmts
	txStmtsOnce sync.Once

	// head is the newest audit event this process saw committed, where
	// the claim pipeline chains a batch without reading the head first
	// (claimpipe.go); nil until then.
	head atomic.Pointer[chainHead]
	// skipGuess is how many more claim batches read the head instead of
	// guessing it, after a guess was wrong.
	skipGuess atomic.Int32
	// guessHits counts the batches committed on a guessed head,
	// guessMisses the guesses that were wrong.
	guessHits, guessMisses atomic.Uint64

	timing        atomic.Pointer[prometheus.HistogramVec]
	timingOnce    sync.Once
	jobScrapeErrs atomic.Uint64

	// adminModules and oldestPending coalesce the reads every admin
	// session makes (readbatch.go).
	adminModules  *coalesced[keyport.EID, *keyport.AdminModule]
	oldestPending *coalesced[int64, []keyport.PendingJob]
}

var _ keyport.Store = (*Store)(nil)

// repo implements keyport.Repo on the store (w, r are the write and read
// pools) or inside a transaction (w == r == the transaction).
type repo struct {
	dialect dialect
	w, r    *gorm.DB
	inTx    bool

	// In a transaction: the audit events appended and not yet chained
	// (SealAudit); a savepoint rolled back drops those appended under it.
	auditQueue []*keyport.AuditEvent
	// hooks are the transaction's BeforeCommit functions, in the order
	// their keys were first set.
	hooks []commitHook
	// sealed is the last event SealAudit chained in this transaction.
	sealed *chainHead
	// timing is the store's: the statements sent past gorm (direct.go)
	// are timed with it.
	timing *atomic.Pointer[prometheus.HistogramVec]
}

type commitHook struct {
	key string
	fn  func(ctx context.Context, tx keyport.Repo) error
}

// BeforeCommit implements keyport.BeforeCommit.
func (r *repo) BeforeCommit(ctx context.Context, key string, fn func(ctx context.Context, tx keyport.Repo) error) error {
	if !r.inTx {
		return fn(ctx, r)
	}
	for i := range r.hooks {
		if r.hooks[i].key == key {
			r.hooks[i].fn = fn
			return nil
		}
	}
	r.hooks = append(r.hooks, commitHook{key: key, fn: fn})
	return nil
}

// runHooks runs the BeforeCommit functions; the first error is returned.
func (r *repo) runHooks(ctx context.Context) error {
	for _, h := range r.hooks {
		if err := h.fn(ctx, r); err != nil {
			return err
		}
	}
	return nil
}

// OpenOptions tune Open.
type OpenOptions struct {
	// Migrate applies pending migrations before the store serves. Without it
	// Open refuses a database whose schema is older than the code.
	Migrate bool
}

// Open opens the database dsn names and checks its schema version; it refuses
// a database older or newer than this code (ErrSchemaTooOld, ErrSchemaTooNew).
// dsn is a PostgreSQL URL (postgres://, postgresql://) or an SQLite file: a
// path, "sqlite:path" or a "file:" URI.
func Open(ctx context.Context, dsn string) (*Store, error) {
	return OpenOptions{}.Open(ctx, dsn)
}

// Open opens dsn as the package-level Open does, migrating first if o.Migrate.
func (o OpenOptions) Open(ctx context.Context, dsn string) (*Store, error) {
	s, err := open(ctx, dsn)
	if err != nil {
		return nil, err
	}
	if o.Migrate {
		if err := s.Migrate(ctx); err != nil {
			s.Close()
			return nil, err
		}
	}
	if err := s.checkVersion(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func gormConfig() *gorm.Config {
	return &gorm.Config{
		// Silent and discarded: SQL arguments may hold wrapped key material,
		// password hashes or token hashes, none of which belongs in a log.
		Logger:                 logger.Discard.LogMode(logger.Silent),
		NowFunc:                now,
		SkipDefaultTransaction: true,
		TranslateError:         true,
		// Prepared statements are cached per connection, so that the hot
		// read paths (claims, EID lookups) do not parse their statements
		// on every call. (Not inside a transaction: gorm prepares a
		// statement first met there anew on every execution; see
		// ImportModules.)
		PrepareStmt: true,
	}
}

func open(ctx context.Context, dsn string) (*Store, error) {
	var s *Store
	var err error
	if isPostgresURL(dsn) {
		s, err = openPostgres(ctx, dsn)
	} else {
		s, err = openSQLite(ctx, dsn)
	}
	if err != nil {
		return nil, err
	}
	if err := s.instrument(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// isPostgresURL reports whether dsn names a PostgreSQL database rather than
// an SQLite file.
func isPostgresURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func openPostgres(ctx context.Context, dsn string) (*Store, error) {
	db, err := gorm.Open(postgres.Open(dsn), gormConfig())
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", redactURL(mapUnavailable(err), dsn))
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", err)
	}
	// Enough for a replica's request and worker goroutines; PostgreSQL's
	// default max_connections is 100 and several replicas share it. As
	// many kept idle as may be open: with fewer, a burst (a thousand
	// modules' handshakes, each reading its module) closed connections
	// as soon as they came back and opened new ones, a backend started
	// each time, one after another, while the burst waited.
	sqlDB.SetMaxOpenConns(20)
	sqlDB.SetMaxIdleConns(20)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	if err := sqlDB.PingContext(ctx); err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("store: open postgres: %w", redactURL(mapUnavailable(err), dsn))
	}
	s := &Store{dialect: dialectPostgres, pools: []*sql.DB{sqlDB}, pgURL: dsn, use: useTarget{pgURL: dsn}}
	s.repo = &repo{dialect: dialectPostgres, w: db, r: db, timing: &s.timing}
	s.coalesceReads()
	return s, nil
}

// sqlitePath turns the accepted SQLite DSN forms into the path (or file: URI)
// the driver opens, without query parameters, and the caller's own query.
func sqlitePath(dsn string) (path, query string, err error) {
	dsn = strings.TrimPrefix(dsn, "sqlite://")
	dsn = strings.TrimPrefix(dsn, "sqlite:")
	if dsn == "" {
		return "", "", errors.New("empty SQLite path")
	}
	if strings.HasPrefix(dsn, "file:") {
		path, query, _ = strings.Cut(dsn, "?")
		return path, query, nil
	}
	if strings.ContainsAny(dsn, "?#") {
		return "", "", errors.New("SQLite path may not contain '?' or '#'; use a file: URI")
	}
	if dsn == ":memory:" {
		// Two pools (writer, readers) would see two different databases.
		return "", "", errors.New("an in-memory SQLite database is not supported; use a file")
	}
	return dsn, "", nil
}

// openBusyFor is how long opening SQLite retries while the file is locked.
// Turning a new file to WAL (the writer's journal_mode pragma, run as its
// connection opens) needs the file to itself, and SQLite does not wait for
// that as busy_timeout waits for a lock: of processes opening a new data
// directory together, those that lost the race failed with "database is
// locked" (seen in TestHSMInitOfProcessesStartingTogetherOnANewDataDirMakesOneToken).
const openBusyFor = 10 * time.Second

func openSQLite(ctx context.Context, dsn string) (*Store, error) {
	deadline := time.Now().Add(openBusyFor)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		s, err := openSQLiteOnce(ctx, dsn)
		var se sqlite3.Error
		if err == nil || !errors.As(err, &se) || se.Code != sqlite3.ErrBusy && se.Code != sqlite3.ErrLocked ||
			time.Now().Add(wait).After(deadline) {
			return s, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("store: open sqlite: %w", ctx.Err())
		case <-time.After(wait):
		}
	}
}

func openSQLiteOnce(ctx context.Context, dsn string) (*Store, error) {
	path, userQuery, err := sqlitePath(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	useFile, err := sqliteUseLockFile(path, userQuery)
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	common := []sqlitePragma{
		{"busy_timeout", "10000"},
		{"foreign_keys", "1"},
		{"synchronous", "NORMAL"},
	}

	// The writer: one connection, so that write transactions queue in
	// database/sql's pool rather than race for SQLite's lock; BEGIN IMMEDIATE
	// so that a transaction that reads then writes takes the write lock up
	// front and cannot fail to upgrade it (another process, e.g. a CLI
	// import, may hold it: busy_timeout then waits up to 10 s).
	//
	// SQLite's default 4 KiB pages. 16 KiB pages made a 1M-module import a
	// sixth cheaper but lookups and claims slower (EID lookup p50 0.18 →
	// 0.37 ms, every claim commit writing four times larger WAL frames):
	// the online paths matter more than the batch import.
	wp := append(slices.Clip(common), sqlitePragma{"journal_mode", "WAL"}, sqlitePragma{"cache_size", "-65536"})
	w, err := gorm.Open(sqliteDialector(path, userQuery, wp, true), gormConfig())
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	wDB, err := w.DB()
	if err != nil {
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	wDB.SetMaxOpenConns(1)
	wDB.SetMaxIdleConns(1)
	wDB.SetConnMaxLifetime(0)
	wDB.SetConnMaxIdleTime(0)
	if err := wDB.PingContext(ctx); err != nil {
		wDB.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	// Checkpoints run beside the writer, not in its commits (checkpointer).
	if _, err := wDB.ExecContext(ctx, `PRAGMA wal_autocheckpoint = 0`); err != nil {
		wDB.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}

	// Readers: query_only so that a write sent to this pool by mistake
	// fails loudly instead of bypassing the writer queue.
	rp := append(slices.Clip(common), sqlitePragma{"query_only", "1"})
	r, err := gorm.Open(sqliteDialector(path, userQuery, rp, false), gormConfig())
	if err != nil {
		wDB.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	rDB, err := r.DB()
	if err != nil {
		wDB.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	rDB.SetMaxOpenConns(4)
	rDB.SetMaxIdleConns(4)
	ck, err := gorm.Open(sqliteDialector(path, userQuery, common, false), gormConfig())
	if err != nil {
		wDB.Close()
		rDB.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	ckDB, err := ck.DB()
	if err != nil {
		wDB.Close()
		rDB.Close()
		return nil, fmt.Errorf("store: open sqlite: %w", err)
	}
	ckDB.SetMaxOpenConns(1)

	s := &Store{dialect: dialectSQLite, pools: []*sql.DB{wDB, rDB}, checkpoints: startCheckpointer(ckDB),
		lockPath: strings.TrimPrefix(path, "file:"), use: useTarget{file: useFile}}
	s.repo = &repo{dialect: dialectSQLite, w: w, r: r, timing: &s.timing}
	s.coalesceReads()
	return s, nil
}

// sqlitePragma is a PRAGMA every connection of a pool runs when it opens.
type sqlitePragma struct{ name, value string }

// sqliteDialector opens the SQLite file at path through mattn/go-sqlite3
// (cgo, the SQLite it bundles): each pragma as the driver's "_name=value"
// parameter, BEGIN IMMEDIATE if immediate. The driver reads the first value
// of a parameter, so these come before the caller's own query and win over
// it, as they did with the pure-Go driver this store used before
// (glebarez/sqlite, SQLite 3.41). Against it, measured side by side on a
// loaded 2-core machine: store imports 20-40 % less CPU per module, store
// EID lookups about half the time and CPU; claims and card-link sessions
// within the noise.
func sqliteDialector(path, userQuery string, pragmas []sqlitePragma, immediate bool) gorm.Dialector {
	q := url.Values{}
	for _, p := range pragmas {
		q.Set("_"+p.name, p.value)
	}
	if immediate {
		q.Set("_txlock", "immediate")
	}
	dsn := path + "?" + q.Encode()
	if userQuery != "" {
		dsn += "&" + userQuery
	}
	return sqlite.Open(dsn)
}

// Close closes the database connections.
func (s *Store) Close() error {
	var errs []error
	if s.checkpoints != nil {
		errs = append(errs, s.checkpoints.Close())
	}
	for _, p := range s.pools {
		errs = append(errs, p.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Dialect returns "sqlite" or "postgres".
func (s *Store) Dialect() string { return s.dialect.String() }

// Tx runs fn in one transaction: fn's error (or a panic) rolls back everything
// fn did through tx, and is returned as it is. On SQLite the transaction holds
// the write lock from its start, so concurrent transactions run one after
// another; fn must therefore use tx, never s, or it waits for itself.
func (s *Store) Tx(ctx context.Context, fn func(tx keyport.Repo) error) error {
	return s.tx(ctx, func(tx *repo) error { return fn(tx) })
}

// tx is Tx for the store's own callers (Group), which need the repo's
// savepoints.
//
// The transaction runs its statements through txStmts, prepared once on
// the writer pool, not once per transaction.
func (s *Store) tx(ctx context.Context, fn func(tx *repo) error) (err error) {
	s.txStmtsOnce.Do(func() { s.txStmts = newTxStmts(s.pools[0]) })
	sqlTx, err := s.pools[0].BeginTx(ctx, nil)
	if err != nil {
		// The database, not fn, is the cause.
		return wrap("tx", err)
	}
	db := s.w.Session(&gorm.Session{Context: ctx, NewDB: true})
	db.Statement.ConnPool = &stmtTx{Tx: sqlTx, stmts: s.txStmts}
	done := false
	defer func() {
		if !done {
			// fn panicked: roll back, and let the panic go on.
			_ = sqlTx.Rollback()
		}
	}()
	r := &repo{dialect: s.dialect, w: db, r: db, inTx: true, timing: &s.timing}
	fnErr := fn(r)
	if fnErr == nil {
		fnErr = r.runHooks(ctx)
	}
	if fnErr == nil {
		// Events no BeforeCommit function sealed are chained now, unkeyed.
		fnErr = r.SealAudit(ctx, nil)
	}
	done = true
	if fnErr != nil {
		_ = sqlTx.Rollback()
		return fnErr
	}
	if err := sqlTx.Commit(); err != nil {
		return wrap("tx", err)
	}
	s.committedHead(r.sealed)
	s.txStmts.prepareWanted(ctx)
	return nil
}

// updateRow sets the columns in set of the row of table whose id is id, in
// one statement (inside the current transaction, if any); ErrNotFound when
// there is no such row.
func (r *repo) updateRow(ctx context.Context, op, table string, id any, set map[string]any) error {
	res := r.w.WithContext(ctx).Table(table).Where("id = ?", id).Updates(set)
	if res.Error != nil {
		return wrap(op, res.Error)
	}
	if res.RowsAffected != 1 {
		return fmt.Errorf("store: %s %v: %w", op, id, keyport.ErrNotFound)
	}
	return nil
}

// writeTx runs fn in the current transaction, or in a new one on the writer.
// fn returns errors already prefixed; a failed begin or commit is prefixed
// with op here.
func (r *repo) writeTx(ctx context.Context, op string, fn func(db *gorm.DB) error) error {
	if r.inTx {
		return fn(r.w.WithContext(ctx))
	}
	var fnErr error
	err := r.w.WithContext(ctx).Transaction(func(db *gorm.DB) error {
		fnErr = fn(db)
		return fnErr
	})
	if err != nil && fnErr == nil {
		return wrap(op, err)
	}
	return err
}

// now is the store's clock: UTC with the microseconds both databases keep, so
// that what is written is what is read back.
func now() time.Time { return keyport.AuditTime(time.Now()) }

// dbTime normalises a caller's time the same way, defaulting to now.
func dbTime(t time.Time) time.Time {
	if t.IsZero() {
		return now()
	}
	return keyport.AuditTime(t)
}

func utcPtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// newID returns a random 128-bit identifier in hex for objects whose caller
// did not choose one.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("store: crypto/rand: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// SQLite's extended result codes the store maps onto keyport's sentinels.
const (
	sqliteBusy             = 5
	sqliteLocked           = 6
	sqliteConstraintUnique = 2067
	sqliteConstraintPK     = 1555
	sqliteConstraintFK     = 787
)

// mapErr maps a driver error onto keyport's sentinel errors: a missing row is
// ErrNotFound, a unique violation ErrConflict, a missing referenced row
// ErrNotFound, a busy database ErrUnavailable. The driver's message is kept
// only for other errors: constraint messages name columns, not values, but
// nothing is lost by leaving them out.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	var sqliteErr sqlite3.Error
	switch {
	case errors.Is(err, keyport.ErrNotFound), errors.Is(err, keyport.ErrConflict),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, gorm.ErrRecordNotFound), errors.Is(err, sql.ErrNoRows):
		return keyport.ErrNotFound
	case errors.Is(err, gorm.ErrDuplicatedKey):
		return keyport.ErrConflict
	case errors.Is(err, gorm.ErrForeignKeyViolated):
		return fmt.Errorf("referenced object: %w", keyport.ErrNotFound)
	case errors.As(err, &pgErr):
		switch pgErr.Code {
		case "23505":
			return keyport.ErrConflict
		case "23503":
			return fmt.Errorf("referenced object: %w", keyport.ErrNotFound)
		case "40001", "40P01", "55P03", "57P01", "57P03", "53300":
			// serialization failure, deadlock, lock timeout, shutdown,
			// cannot connect now, too many connections: retry may work.
			return fmt.Errorf("%w: %s", keyport.ErrUnavailable, pgErr.Code)
		}
		return err
	case errors.As(err, &sqliteErr):
		code := int(sqliteErr.ExtendedCode)
		switch code {
		case sqliteConstraintUnique, sqliteConstraintPK:
			return keyport.ErrConflict
		case sqliteConstraintFK:
			return fmt.Errorf("referenced object: %w", keyport.ErrNotFound)
		}
		switch code & 0xff {
		case sqliteBusy, sqliteLocked:
			return fmt.Errorf("%w: %v", keyport.ErrUnavailable, err)
		}
		return err
	}
	return mapUnavailable(err)
}

// mapUnavailable marks connection failures (PostgreSQL down, refused) as
// ErrUnavailable so that callers may retry.
func mapUnavailable(err error) error {
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) || pgconn.Timeout(err) {
		return fmt.Errorf("%w: %v", keyport.ErrUnavailable, err)
	}
	return err
}

// wrap prefixes a mapped driver error with the operation.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("store: %s: %w", op, mapErr(err))
}

// redactURL removes a password in dsn from err's text (pgx repeats the
// connection string in some errors), keeping ErrUnavailable matchable.
func redactURL(err error, dsn string) error {
	u, perr := url.Parse(dsn)
	if perr != nil || u.User == nil {
		return err
	}
	pw, ok := u.User.Password()
	if !ok || pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	msg := strings.ReplaceAll(err.Error(), pw, "xxxxx")
	if errors.Is(err, keyport.ErrUnavailable) {
		return fmt.Errorf("%w: %s", keyport.ErrUnavailable, msg)
	}
	return errors.New(msg)
}
