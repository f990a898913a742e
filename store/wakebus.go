package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/keyport/keyport"
)

// wakeChannel is the PostgreSQL NOTIFY channel of the wake-up bus; a
// notification's payload is an EID.
const wakeChannel = "keyport_wake"

// WakeBus returns the wake-up bus between the replicas on this database:
// LISTEN/NOTIFY on PostgreSQL, nil on SQLite (one process; its agents find
// their jobs by polling).
func (s *Store) WakeBus() keyport.WakeBus {
	if s.dialect != dialectPostgres {
		return nil
	}
	return pgWakeBus{s: s}
}

type pgWakeBus struct{ s *Store }

// PublishWake notifies every listening replica, in its own statement (a
// NOTIFY in a transaction would wait for its commit).
func (b pgWakeBus) PublishWake(ctx context.Context, eid keyport.EID) error {
	err := b.s.repo.w.WithContext(ctx).Exec(`SELECT pg_notify(?, ?)`, wakeChannel, string(eid)).Error
	return wrap("publish wake-up", err)
}

// ListenWakes holds one connection of its own (LISTEN needs a session,
// which the pool does not keep) and calls fn with each wake-up's EID.
// Payloads that are no EID are dropped.
func (b pgWakeBus) ListenWakes(ctx context.Context, fn func(keyport.EID)) error {
	conn, err := pgx.Connect(ctx, b.s.pgURL)
	if err != nil {
		return fmt.Errorf("store: listen for wake-ups: %w", redactURL(mapUnavailable(err), b.s.pgURL))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+wakeChannel); err != nil {
		return fmt.Errorf("store: listen for wake-ups: %w", err)
	}
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("store: listen for wake-ups: %w", err)
		}
		if n.Channel != wakeChannel {
			continue
		}
		eid, err := keyport.ParseEID(n.Payload)
		if err != nil {
			continue
		}
		fn(eid)
	}
}
