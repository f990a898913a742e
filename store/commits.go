package store

import (
	"context"

	"github.com/keyport/keyport"
)

// ClaimCommits returns the keyport.Committer for claims, the one suited to
// each database. On SQLite, where every write transaction queues for the
// one writer connection, a Group of its own: claims that arrive while one
// commits are committed together, and the writer is handed over once per
// group instead of once per claim. On PostgreSQL each claim is a
// transaction of its own: the database runs them side by side on separate
// connections, and only the audit append at their end is serialized, while
// a group would run every claim's statements one after another on one
// connection.
func (s *Store) ClaimCommits() keyport.Committer {
	if s.dialect == dialectSQLite {
		return s.Group()
	}
	return txCommitter{s}
}

// txCommitter commits each function in a transaction of its own (Store.Tx).
type txCommitter struct{ s *Store }

func (c txCommitter) Commit(ctx context.Context, fn func(ctx context.Context, tx keyport.Repo) error) error {
	return c.s.Tx(ctx, func(tx keyport.Repo) error { return fn(ctx, tx) })
}
