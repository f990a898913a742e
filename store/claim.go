package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

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
	pc, err := newPGClaim(c, from, m)
	if err != nil {
		return err
	}
	rows, err := r.w.WithContext(ctx).Raw(claimSQL, pc.args...).Rows()
	if err != nil {
		return wrap("claim domain", err)
	}
	var outboxID sql.NullInt64
	var exists bool
	if rows.Next() {
		err = rows.Scan(&outboxID, &exists)
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
	return pc.result(c, m, outboxID, exists)
}

// claimSQL is ClaimDomain on PostgreSQL, one statement of data-modifying
// CTEs: the claim is inserted only from the row the conditional UPDATE
// returned, the outbox row only from the claim. It returns the outbox row's
// id (NULL when the domain was in none of the source states, which are one
// comma-separated parameter) and whether the domain exists at all.
const claimSQL = `WITH d AS (
		UPDATE domains SET state = ?, updated_at = ?, owner_id = ? WHERE id = ? AND state = ANY (string_to_array(?, ',')) RETURNING id
	), c AS (
		INSERT INTO claims (id, provider_id, domain_id, eid, aid, wrapping_key_id, idempotency_key, request_hash, package, created_at)
		SELECT ?::text, ?::text, d.id, ?::text, ?::text, ?::text, ?::text, ?::text, ?::bytea, ?::timestamptz FROM d RETURNING id
	), o AS (
		INSERT INTO outbox (topic, payload, created_at, sent_at)
		SELECT ?::text, ?::text, ?::timestamptz, ?::timestamptz FROM c RETURNING id
	) SELECT (SELECT id FROM o), EXISTS (SELECT 1 FROM domains WHERE id = ?)`

// pgClaim is one claim's arguments for claimSQL, and the values its claim
// and outbox row take when it wins.
type pgClaim struct {
	args             []any
	id               string
	createdAt, msgAt time.Time
	sentAt           *time.Time
}

func newPGClaim(c *keyport.Claim, from []keyport.DomainState, m *keyport.OutboxMessage) (*pgClaim, error) {
	if len(from) == 0 {
		return nil, fmt.Errorf("store: claim domain: no source state: %w", keyport.ErrDomainTaken)
	}
	states := make([]string, len(from))
	for i, s := range from {
		states[i] = string(s)
	}
	p := &pgClaim{id: c.ID, createdAt: dbTime(c.CreatedAt), msgAt: dbTime(m.CreatedAt)}
	if p.id == "" {
		p.id = newID()
	}
	var sentAt sql.NullTime
	if m.SentAt != nil {
		at := dbTime(*m.SentAt)
		p.sentAt, sentAt = &at, sql.NullTime{Time: at, Valid: true}
	}
	p.args = []any{string(keyport.Assigned), now(), sql.NullString{String: c.ProviderID, Valid: c.ProviderID != ""}, c.DomainID,
		strings.Join(states, ","),
		p.id, c.ProviderID, string(c.EID), string(c.AID), c.WrappingKeyID,
		sql.NullString{String: c.IdempotencyKey, Valid: c.IdempotencyKey != ""}, c.RequestHash, c.Package, p.createdAt,
		m.Topic, m.Payload, p.msgAt, sentAt,
		c.DomainID}
	return p, nil
}

// result reads claimSQL's answer: c and m take their stored values when the
// claim won; otherwise the domain is not there (ErrNotFound) or was not in
// a source state (ErrDomainTaken), and nothing was written.
func (p *pgClaim) result(c *keyport.Claim, m *keyport.OutboxMessage, outboxID sql.NullInt64, exists bool) error {
	if !outboxID.Valid {
		if !exists {
			return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrNotFound)
		}
		return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrDomainTaken)
	}
	c.ID, c.CreatedAt = p.id, p.createdAt
	m.ID, m.CreatedAt, m.SentAt = outboxID.Int64, p.msgAt, p.sentAt
	return nil
}
