package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/keyport/keyport"
)

// Group commits the write transactions of concurrent callers together
// (group commit): it is the store's keyport.Committer. On SQLite all writes
// queue for one connection, and each transaction of its own pays BEGIN,
// COMMIT and the hand-over of the connection to the next goroutine; under a
// thousand admin sessions that hand-over, not the writing, bounds the rate.
// A Group runs the functions that arrive while one group is being committed
// as one database transaction, each as if in a transaction of its own: a
// function's error rolls back what that function did and nothing else, and
// every caller returns only once the commit that holds its writes is done,
// so nothing is reported that is not durably stored. If the commit fails,
// every caller of the group gets the error and none of their writes
// happened.
//
// On SQLite one group commits at a time (every write queues for the one
// writer connection); on PostgreSQL up to pgGroupLeaders at once.
//
// The functions run one after another on the group's transaction, with a
// context that is not cancelled when a caller's is (interrupting one
// statement could abort the transaction of all of them). The group first
// runs them all without savepoints (two statements fewer each); if one
// fails, it rolls that attempt back whole and runs them again, each under a
// savepoint of its own. So a function may run twice (keyport.Committer).
type Group struct {
	st *Store
	// Max bounds the functions committed together (default 64), so that
	// one commit does not hold the database, or keep its first caller
	// waiting, for long.
	Max int

	ops batcher[groupOp]
}

var _ keyport.Committer = (*Group)(nil)

type groupOp struct {
	ctx context.Context
	fn  func(ctx context.Context, tx keyport.Repo) error
}

// Group returns a new group committing into s.
func (s *Store) Group() *Group {
	g := &Group{st: s}
	if s.dialect == dialectPostgres {
		g.ops.leaders = pgGroupLeaders
	}
	return g
}

// pgGroupLeaders is how many groups commit at once on PostgreSQL, each a
// transaction on a connection of its own, as the groups of several
// replicas do. A group's statements go one round trip after another, so
// one group at a time left the database waiting between them; the audit
// lock, taken at the end of each, orders the groups' seals (SealAudit).
// 8 of the pool's 20 connections: admin sessions/s on PostgreSQL rose
// about half with 8 against 1, and no further with 16 (cardlink's
// BenchmarkAdminSessions1000Concurrent).
const pgGroupLeaders = 8

// Commit runs fn as Store.Tx would, possibly in one database transaction
// with other callers' functions.
func (g *Group) Commit(ctx context.Context, fn func(ctx context.Context, tx keyport.Repo) error) error {
	return g.ops.do(groupOp{ctx: context.WithoutCancel(ctx), fn: recoverTo(fn)}, batchLimit(g.Max), g.commit)
}

// batchLimit is max, or 64 when max is not set.
func batchLimit(max int) int {
	if max <= 0 {
		return 64
	}
	return max
}

// recoverTo makes a panic in fn that function's error: one caller's bug must
// not leave the other callers of its group waiting for a hand-over that
// never comes.
func recoverTo(fn func(ctx context.Context, tx keyport.Repo) error) func(ctx context.Context, tx keyport.Repo) error {
	return func(ctx context.Context, tx keyport.Repo) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("store: panic in a grouped transaction: %v", r)
			}
		}()
		return fn(ctx, tx)
	}
}

// errGroupRetry rolls back a group's first run when one function failed.
var errGroupRetry = errors.New("store: a function of the group failed; run again with savepoints")

// commit runs the group's functions in one transaction.
func (g *Group) commit(batch []*batched[groupOp]) {
	if len(batch) == 1 {
		o := batch[0]
		o.err = g.st.tx(o.op.ctx, func(tx *repo) error { return o.op.fn(o.op.ctx, tx) })
		return
	}
	// The usual case: no function fails, and none needs a savepoint.
	err := g.st.tx(batch[0].op.ctx, func(tx *repo) error {
		for _, o := range batch {
			if o.err = o.op.fn(o.op.ctx, tx); o.err != nil {
				return errGroupRetry
			}
		}
		return nil
	})
	if err == nil {
		return
	}
	for _, o := range batch {
		o.err = nil
	}
	if err != errGroupRetry { // begin or commit failed: nothing happened
		for _, o := range batch {
			o.err = err
		}
		return
	}
	err = g.st.tx(batch[0].op.ctx, func(tx *repo) error {
		for _, o := range batch {
			fnErr, err := tx.savepoint(o.op.ctx, func(tx keyport.Repo) error { return o.op.fn(o.op.ctx, tx) })
			if err != nil {
				return err
			}
			o.err = fnErr
		}
		return nil
	})
	if err != nil {
		for _, o := range batch {
			if o.err == nil {
				o.err = err
			}
		}
	}
}

// Savepoint runs fn inside the current transaction under a savepoint: fn's
// error rolls back what fn did and nothing else, and is returned as fnErr.
// err reports a savepoint that could not be set, released or rolled back
// to: the transaction is then in no known state and must be rolled back.
// Group uses it to commit several callers' writes at once, each as if in its
// own transaction.
func (r *repo) savepoint(ctx context.Context, fn func(tx keyport.Repo) error) (fnErr, err error) {
	if !r.inTx {
		return nil, fmt.Errorf("store: savepoint outside a transaction: %w", keyport.ErrInvalid)
	}
	// One fixed name: savepoints are set one after another, never nested,
	// and a fixed text keeps the prepared-statement cache small.
	db := r.w.WithContext(ctx)
	if err := db.Exec(`SAVEPOINT keyport_op`).Error; err != nil {
		return nil, wrap("savepoint", err)
	}
	hooks, queued := slices.Clone(r.hooks), len(r.auditQueue)
	if fnErr = fn(r); fnErr != nil {
		// What fn queued for the audit chain, and what it set to run
		// before the commit, go with the rollback.
		r.auditQueue, r.hooks = r.auditQueue[:queued], hooks
		if err := db.Exec(`ROLLBACK TO SAVEPOINT keyport_op`).Error; err != nil {
			return fnErr, wrap("rollback to savepoint", err)
		}
	}
	if err := db.Exec(`RELEASE SAVEPOINT keyport_op`).Error; err != nil {
		return fnErr, wrap("release savepoint", err)
	}
	return fnErr, nil
}
