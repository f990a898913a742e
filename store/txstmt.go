package store

import (
	"context"
	"database/sql"
	"strings"
	"sync"
)

// maxTxStmts bounds the statements kept prepared for write transactions:
// statements whose text varies (IN lists of any length) run unprepared
// once it is reached.
const maxTxStmts = 512

// txStmts keeps the statements of write transactions prepared on the
// writer pool, so that a transaction reuses what its connection already
// prepared. gorm's own cache cannot: a statement it first meets in a
// transaction it prepares on that transaction, which closes it, so every
// transaction prepared every statement again (on PostgreSQL one more round
// trip per statement, on SQLite the parse inside the single writer).
//
// A statement met in a transaction runs unprepared the first time and is
// prepared on the pool after that transaction ends: preparing on the pool
// while the transaction holds the connection would wait for it (SQLite's
// writer has only the one).
type txStmts struct {
	db   *sql.DB
	mu   sync.Mutex
	m    map[string]*sql.Stmt
	want map[string]struct{}
}

func newTxStmts(db *sql.DB) *txStmts {
	return &txStmts{db: db, m: map[string]*sql.Stmt{}, want: map[string]struct{}{}}
}

// get returns q prepared on the pool, or nil (then q is noted for
// prepareWanted).
func (c *txStmts) get(q string) *sql.Stmt {
	if !preparable(q) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.m[q]
	if st == nil && len(c.m)+len(c.want) < maxTxStmts {
		c.want[q] = struct{}{}
	}
	return st
}

// prepareWanted prepares on the pool the statements get was asked for and
// did not have. A statement that does not prepare is left to run
// unprepared.
func (c *txStmts) prepareWanted(ctx context.Context) {
	c.mu.Lock()
	if len(c.want) == 0 {
		c.mu.Unlock()
		return
	}
	want := c.want
	c.want = map[string]struct{}{}
	c.mu.Unlock()
	for q := range want {
		st, err := c.db.PrepareContext(context.WithoutCancel(ctx), q)
		if err != nil {
			continue
		}
		c.mu.Lock()
		if c.m[q] == nil && len(c.m) < maxTxStmts {
			c.m[q], st = st, nil
		}
		c.mu.Unlock()
		if st != nil {
			st.Close()
		}
	}
}

// preparable reports whether q is a plain statement worth keeping
// prepared (not SAVEPOINT, BEGIN, a lock, …).
func preparable(q string) bool {
	q = strings.TrimLeft(q, " \t\r\n")
	for _, p := range []string{"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"} {
		if len(q) >= len(p) && strings.EqualFold(q[:len(p)], p) {
			return true
		}
	}
	return false
}

// stmtTx is the connection pool of a write transaction's gorm session: the
// transaction, running the statements txStmts has prepared through them.
type stmtTx struct {
	*sql.Tx
	stmts *txStmts
}

func (t *stmtTx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st := t.stmts.get(q); st != nil {
		return t.Tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, q, args...)
}

func (t *stmtTx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := t.stmts.get(q); st != nil {
		return t.Tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, q, args...)
}

func (t *stmtTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st := t.stmts.get(q); st != nil {
		return t.Tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, q, args...)
}
