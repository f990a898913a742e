package store

import (
	"context"

	"github.com/keyport/keyport"
)

// ClaimCommits returns the keyport.ClaimWriter for claims: a group of its
// own, on both databases. On SQLite every write transaction queues for the
// one writer connection, and a group hands the writer over once per group
// instead of once per claim. On PostgreSQL a transaction's audit seal holds
// the advisory lock through the commit, so claims pass the lock one after
// another whatever their connections; a group shares the lock, the head
// read, the audit statement and the commit (the WAL flush), and is sent as
// one pipeline, usually in one round trip (pipelineClaims).
func (s *Store) ClaimCommits() keyport.ClaimWriter { return &claimGroup{st: s, g: s.Group()} }

// claimGroup batches the claims of concurrent callers: through a Group on
// SQLite, pipelined on PostgreSQL, where a batch the pipeline cannot
// commit whole goes through the Group, each claim under a savepoint.
type claimGroup struct {
	st   *Store
	g    *Group
	pipe batcher[claimOp]
}

type claimOp struct {
	ctx  context.Context
	w    keyport.ClaimWrite
	keys keyport.AuditKeys
}

// WriteClaim implements keyport.ClaimWriter.
func (c *claimGroup) WriteClaim(ctx context.Context, w keyport.ClaimWrite, keys keyport.AuditKeys) error {
	if c.st.dialect != dialectPostgres {
		return c.g.Commit(ctx, func(ctx context.Context, tx keyport.Repo) error { return w.Apply(ctx, tx, keys) })
	}
	return c.pipe.do(claimOp{ctx: context.WithoutCancel(ctx), w: w, keys: keys}, batchLimit(0), c.commit)
}

// commit writes a batch through the pipeline, or, when a statement of it
// failed (and so nothing of the batch was written), through the Group.
func (c *claimGroup) commit(batch []*batched[claimOp]) {
	if !c.st.pipelineClaims(batch) {
		return
	}
	ops := make([]*batched[groupOp], len(batch))
	for i, o := range batch {
		w, keys := o.op.w, o.op.keys
		ops[i] = &batched[groupOp]{op: groupOp{ctx: o.op.ctx, fn: recoverTo(func(ctx context.Context, tx keyport.Repo) error {
			return w.Apply(ctx, tx, keys)
		})}}
	}
	c.g.commit(ops)
	for i, o := range ops {
		batch[i].err = o.err
	}
}
