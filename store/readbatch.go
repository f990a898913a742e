package store

import (
	"context"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// Coalesced reads. Every admin session reads its module at the handshake
// (when the server has not cached it) and its oldest pending job at its
// first request. A thousand modules connecting at once made a thousand
// single-row reads, each waiting for a pooled connection and, on
// PostgreSQL, a round trip: most of a session's wait in
// cardlink's BenchmarkAdminSessions1000Concurrent was for connections.
// The reads that arrive while readLeaders such reads run are made as one
// query (at most readBatchMax keys), whose rows go back to each caller.
// A lone caller reads at once, as before.

const (
	// readLeaders is how many coalesced reads of one kind run at once.
	readLeaders = 4
	// readBatchMax bounds the keys of one coalesced read.
	readBatchMax = 64
	// readBatchTimeout bounds a coalesced read, which runs for several
	// callers and so under none's context: as long as the admin server's
	// PSK callback gives its own read.
	readBatchTimeout = 10 * time.Second
)

// coalesced runs the reads of key K that concurrent callers make as one
// fetch of all their keys.
type coalesced[K comparable, V any] struct {
	b batcher[*coalescedRead[K, V]]
	// fetch reads the values of keys (distinct); a key it does not
	// return is not found.
	fetch func(ctx context.Context, keys []K) (map[K]V, error)
}

type coalescedRead[K comparable, V any] struct {
	ctx   context.Context
	key   K
	val   V
	found bool
	// again: another caller of the batch asked for the same key and got
	// the value read; this one reads on its own, so that no two callers
	// share what they may change.
	again bool
}

func newCoalesced[K comparable, V any](fetch func(ctx context.Context, keys []K) (map[K]V, error)) *coalesced[K, V] {
	c := &coalesced[K, V]{fetch: fetch}
	c.b.leaders = readLeaders
	return c
}

// get reads key, alone or with the reads of other callers.
func (c *coalesced[K, V]) get(ctx context.Context, key K) (V, bool, error) {
	op := &coalescedRead[K, V]{ctx: ctx, key: key}
	if err := c.b.do(op, readBatchMax, c.run); err != nil || !op.again {
		return op.val, op.found, err
	}
	vals, err := c.fetch(ctx, []K{key})
	v, found := vals[key]
	return v, found, err
}

func (c *coalesced[K, V]) run(batch []*batched[*coalescedRead[K, V]]) {
	keys := make([]K, 0, len(batch))
	seen := make(map[K]bool, len(batch))
	for _, o := range batch {
		if err := o.op.ctx.Err(); err != nil {
			o.err = err // gave up while queued: not read
			continue
		}
		if seen[o.op.key] {
			o.op.again = true
			continue
		}
		seen[o.op.key] = true
		keys = append(keys, o.op.key)
	}
	if len(keys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(batch[0].op.ctx), readBatchTimeout)
	defer cancel()
	vals, err := c.fetch(ctx, keys)
	for _, o := range batch {
		switch {
		case o.err != nil, o.op.again:
		case err != nil:
			o.err = err
		default:
			o.op.val, o.op.found = vals[o.op.key]
		}
	}
}

// padded is keys, repeated from its first to the next power of two (up
// to readBatchMax), so that a coalesced read has one of a few statement
// texts, each prepared once: a key twice in an IN list is harmless.
func padded[K any](keys []K) []any {
	n := 1
	for n < len(keys) {
		n *= 2
	}
	out := make([]any, n)
	for i := range out {
		if i < len(keys) {
			out[i] = keys[i]
		} else {
			out[i] = keys[0]
		}
	}
	return out
}

// placeholders is "(?, ?, …)" for n values.
func placeholders(n int) string {
	return "(?" + strings.Repeat(", ?", max(n-1, 0)) + ")"
}

// coalesceReads sets up s's coalesced reads.
func (s *Store) coalesceReads() {
	s.adminModules = newCoalesced(s.adminModulesOf)
	s.oldestPending = newCoalesced(s.oldestPendingOf)
}

// GetAdminModule implements keyport.Store: the handshake's module read,
// coalesced with concurrent ones.
func (s *Store) GetAdminModule(ctx context.Context, eid keyport.EID) (*keyport.AdminModule, error) {
	m, found, err := s.adminModules.get(ctx, eid)
	if err != nil {
		return nil, wrap("get admin module", err)
	}
	if !found {
		return nil, wrap("get admin module", keyport.ErrNotFound)
	}
	return m, nil
}

// adminModulesOf reads the modules of eids (repo.GetAdminModule for
// several).
func (s *Store) adminModulesOf(ctx context.Context, eids []keyport.EID) (map[keyport.EID]*keyport.AdminModule, error) {
	args := padded(eids)
	for i, a := range args {
		args[i] = string(a.(keyport.EID))
	}
	rows, err := s.repo.query(ctx, `SELECT eid, id, isd_aid, psk_sealed FROM modules WHERE eid IN `+placeholders(len(args))+
		` AND import_id IS NULL`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[keyport.EID]*keyport.AdminModule, len(eids))
	for rows.Next() {
		m := &keyport.AdminModule{}
		if err := rows.Scan(&m.EID, &m.ID, &m.ISDAID, &m.PSK); err != nil {
			return nil, err
		}
		out[m.EID] = m
	}
	return out, rows.Err()
}

// PendingModuleJobs implements keyport.Store: a session's first read (its
// module's oldest pending job, limit 1) is coalesced with concurrent ones;
// other limits read alone (repo.PendingModuleJobs).
func (s *Store) PendingModuleJobs(ctx context.Context, moduleID int64, limit int) ([]keyport.PendingJob, error) {
	if limit != 1 {
		return s.repo.PendingModuleJobs(ctx, moduleID, limit)
	}
	jobs, _, err := s.oldestPending.get(ctx, moduleID)
	if err != nil {
		return nil, wrap("pending module jobs", err)
	}
	return jobs, nil
}

// oldestPendingOf reads the oldest pending card job of each module
// (repo.PendingModuleJobs with limit 1, for several).
func (s *Store) oldestPendingOf(ctx context.Context, moduleIDs []int64) (map[int64][]keyport.PendingJob, error) {
	ids := padded(moduleIDs)
	kinds, kindArgs := in(keyport.CardJobKinds)
	args := append(append(append(ids, string(keyport.JobQueued), string(keyport.JobSent)), kindArgs...), 1)
	rows, err := s.repo.query(ctx, `SELECT `+jobColumns+`, domain_state, webhook_url FROM (
		SELECT `+prefixed("j.", jobColumns)+`, d.state AS domain_state, p.webhook_url AS webhook_url,
			ROW_NUMBER() OVER (PARTITION BY j.module_id ORDER BY j.id) AS rn
		FROM jobs j LEFT JOIN domains d ON d.id = j.domain_id LEFT JOIN providers p ON p.id = j.provider_id
		WHERE j.module_id IN `+placeholders(len(ids))+` AND j.state IN (?, ?) AND j.kind IN `+kinds+`) pending
		WHERE rn <= ? ORDER BY module_id, id`, args...)
	if err != nil {
		return nil, err
	}
	jobs, err := scanPendingJobs(rows)
	if err != nil {
		return nil, err
	}
	out := make(map[int64][]keyport.PendingJob, len(moduleIDs))
	for _, j := range jobs {
		out[j.ModuleID] = append(out[j.ModuleID], j)
	}
	return out, nil
}
