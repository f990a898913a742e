package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/keyport/keyport"
)

// ClaimDomain moves the domain c.DomainID from one of `from` to ASSIGNED,
// owned by c.ProviderID, stores c and queues m, as TransitionDomain,
// CreateClaim and AddOutbox would one after another. On PostgreSQL the three
// are one statement (data-modifying CTEs: the claim is inserted only from
// the row the conditional UPDATE returned, the outbox row only from the
// claim), so a claim costs one round trip here instead of three. The
// UPDATE is TransitionDomain's: under concurrency exactly one caller wins,
// the others get keyport.ErrDomainTaken and nothing of theirs is written.
func (r *repo) ClaimDomain(ctx context.Context, c *keyport.Claim, from []keyport.DomainState, m *keyport.OutboxMessage) error {
	if r.dialect != dialectPostgres {
		owner := c.ProviderID
		if err := r.TransitionDomain(ctx, c.DomainID, from, keyport.Assigned, &owner); err != nil {
			if errors.Is(err, keyport.ErrConflict) {
				return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrDomainTaken)
			}
			return err
		}
		if err := r.CreateClaim(ctx, c); err != nil {
			return err
		}
		return r.AddOutbox(ctx, m)
	}
	if len(from) == 0 {
		return fmt.Errorf("store: claim domain: no source state: %w", keyport.ErrDomainTaken)
	}
	states := make([]string, len(from))
	for i, s := range from {
		states[i] = string(s)
	}
	id := c.ID
	if id == "" {
		id = newID()
	}
	createdAt, msgAt := dbTime(c.CreatedAt), dbTime(m.CreatedAt)
	var sentAt *sql.NullTime
	if m.SentAt != nil {
		sentAt = &sql.NullTime{Time: dbTime(*m.SentAt), Valid: true}
	}
	rows, err := r.w.WithContext(ctx).Raw(`WITH d AS (
			UPDATE domains SET state = ?, updated_at = ?, owner_id = ? WHERE id = ? AND state IN ? RETURNING id
		), c AS (
			INSERT INTO claims (id, provider_id, domain_id, eid, aid, wrapping_key_id, idempotency_key, request_hash, package, created_at)
			SELECT ?::text, ?::text, d.id, ?::text, ?::text, ?::text, ?::text, ?::text, ?::bytea, ?::timestamptz FROM d RETURNING id
		), o AS (
			INSERT INTO outbox (topic, payload, created_at, sent_at)
			SELECT ?::text, ?::text, ?::timestamptz, ?::timestamptz FROM c RETURNING id
		) SELECT (SELECT id FROM o)`,
		string(keyport.Assigned), now(), sql.NullString{String: c.ProviderID, Valid: c.ProviderID != ""}, c.DomainID, states,
		id, c.ProviderID, string(c.EID), string(c.AID), c.WrappingKeyID,
		sql.NullString{String: c.IdempotencyKey, Valid: c.IdempotencyKey != ""}, c.RequestHash, c.Package, createdAt,
		m.Topic, m.Payload, msgAt, sentAt).Rows()
	if err != nil {
		return wrap("claim domain", err)
	}
	var outboxID sql.NullInt64
	if rows.Next() {
		err = rows.Scan(&outboxID)
	}
	if cerr := rows.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = rows.Err()
	}
	if err != nil {
		return wrap("claim domain", err)
	}
	if !outboxID.Valid {
		var n int64
		if err := r.w.WithContext(ctx).Raw(`SELECT COUNT(*) FROM domains WHERE id = ?`, c.DomainID).Scan(&n).Error; err != nil {
			return wrap("claim domain", err)
		}
		if n == 0 {
			return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrNotFound)
		}
		return fmt.Errorf("store: claim domain %d: not in %v: %w", c.DomainID, states, keyport.ErrDomainTaken)
	}
	c.ID, c.CreatedAt = id, createdAt
	m.ID, m.CreatedAt = outboxID.Int64, msgAt
	if sentAt != nil {
		m.SentAt = &sentAt.Time
	}
	return nil
}
