package store

import (
	"context"
	"database/sql/driver"
	"fmt"
	"hash/fnv"

	"github.com/keyport/keyport/internal/filelock"
)

// Exclusive runs fn while no other process of the deployment runs a
// function under the same name: on PostgreSQL under a session advisory
// lock (so across every replica on the cluster), on SQLite under an flock
// of a file beside the database (the processes on its host). It
// implements keyport.Exclusive; the HSM creates token keys under it, so
// that replicas starting together on an empty token, or two creating the
// same batch's key, create it once. It waits for the lock as long as ctx
// allows.
func (s *Store) Exclusive(ctx context.Context, name string, fn func(context.Context) error) error {
	if s.dialect == dialectPostgres {
		return s.pgExclusive(ctx, name, fn)
	}
	return s.fileExclusive(ctx, name, fn)
}

// exclusiveKey is name's advisory lock key, apart from the audit chain's.
func exclusiveKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("keyport/exclusive/" + name))
	return int64(h.Sum64())
}

func (s *Store) pgExclusive(ctx context.Context, name string, fn func(context.Context) error) error {
	conn, err := s.pools[0].Conn(ctx)
	if err != nil {
		return wrap("exclusive "+name, err)
	}
	defer conn.Close()
	key := exclusiveKey(name)
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		return wrap("exclusive "+name, err)
	}
	fnErr := fn(ctx)
	var held bool
	if err := conn.QueryRowContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, key).Scan(&held); err != nil || !held {
		// The lock goes with the session: close it rather than hand a
		// connection that may still hold it back to the pool.
		conn.Raw(func(any) error { return driver.ErrBadConn })
		if fnErr == nil {
			fnErr = fmt.Errorf("store: exclusive %s: release the lock: %v (held: %t)", name, err, held)
		}
	}
	return fnErr
}

func (s *Store) fileExclusive(ctx context.Context, name string, fn func(context.Context) error) error {
	ran := false
	err := filelock.With(ctx, fmt.Sprintf("%s.lock-%x", s.lockPath, uint64(exclusiveKey(name))), func(ctx context.Context) error {
		ran = true
		return fn(ctx)
	})
	if err != nil && !ran {
		return fmt.Errorf("store: exclusive %s: %w", name, err)
	}
	return err
}
