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
// CreateClaim and AddOutbox would one after another, once the token (when
// set) is found live. On PostgreSQL these are one statement
// (data-modifying CTEs: the domain is updated only if the token is live,
// the claim is inserted only from the row the conditional UPDATE returned,
// the outbox row only from the claim), so a claim costs one round trip
// here instead of four. The UPDATE is TransitionDomain's: under concurrency
// exactly one caller wins, the others get keyport.ErrDomainTaken and
// nothing of theirs is written.
func (r *repo) ClaimDomain(ctx context.Context, c *keyport.Claim, from []keyport.DomainState, m *keyport.OutboxMessage, token string) error {
	if r.dialect != dialectPostgres {
		if token != "" {
			var one int
			err := r.scanRow(ctx, liveTokenSQL, liveTokenArgs(token, c.ProviderID), &one)
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrTokenNotLive)
			}
			if err != nil {
				return wrap("claim domain", err)
			}
		}
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
	pc, err := newPGClaim(c, from, m, token)
	if err != nil {
		return err
	}
	rows, err := r.w.WithContext(ctx).Raw(claimSQL, pc.args...).Rows()
	if err != nil {
		return wrap("claim domain", err)
	}
	var a claimAnswer
	if rows.Next() {
		err = rows.Scan(a.dest()...)
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
	return pc.result(c, m, a)
}

// liveTokenSQL finds the API token that a claim is asked with live: not
// revoked, not expired, a provider's (the claim's) and that provider
// approved. Its arguments are liveTokenArgs.
const liveTokenSQL = `SELECT 1 FROM api_tokens t JOIN providers p ON p.id = t.provider_id
		WHERE t.id = ? AND t.provider_id = ? AND NOT t.admin AND t.revoked_at IS NULL
		AND (t.expires_at IS NULL OR t.expires_at > ?) AND p.status = ?`

func liveTokenArgs(token, providerID string) []any {
	return []any{token, providerID, now(), string(keyport.ProviderApproved)}
}

// claimSQL is ClaimDomain on PostgreSQL, one statement of data-modifying
// CTEs: the domain is updated only if the token is live (or none is
// given), the claim is inserted only from the row the conditional UPDATE
// returned, the outbox row only from the claim. It returns the outbox
// row's id (NULL when nothing was written: the domain was in none of the
// source states, which are one comma-separated parameter, or the token was
// not live), whether the domain exists at all and whether the token is
// live (claimAnswer).
const claimSQL = `WITH t AS (
		SELECT ?::text = '' OR EXISTS (` + liveTokenSQL + `) AS live
	), d AS (
		UPDATE domains SET state = ?, updated_at = ?, owner_id = ? WHERE id = ? AND state = ANY (string_to_array(?, ','))
		AND (SELECT live FROM t) RETURNING id
	), c AS (
		INSERT INTO claims (id, provider_id, domain_id, eid, aid, wrapping_key_id, idempotency_key, request_hash, package, created_at)
		SELECT ?::text, ?::text, d.id, ?::text, ?::text, ?::text, ?::text, ?::text, ?::bytea, ?::timestamptz FROM d RETURNING id
	), o AS (
		INSERT INTO outbox (topic, payload, created_at, sent_at)
		SELECT ?::text, ?::text, ?::timestamptz, ?::timestamptz FROM c RETURNING id
	) SELECT (SELECT id FROM o), EXISTS (SELECT 1 FROM domains WHERE id = ?), (SELECT live FROM t)`

// claimAnswer is the row claimSQL returns.
type claimAnswer struct {
	outboxID     sql.NullInt64
	exists, live bool
}

func (a *claimAnswer) dest() []any { return []any{&a.outboxID, &a.exists, &a.live} }

// pgClaim is one claim's arguments for claimSQL, and the values its claim
// and outbox row take when it wins.
type pgClaim struct {
	args             []any
	id               string
	createdAt, msgAt time.Time
	sentAt           *time.Time
}

func newPGClaim(c *keyport.Claim, from []keyport.DomainState, m *keyport.OutboxMessage, token string) (*pgClaim, error) {
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
	p.args = append([]any{token}, liveTokenArgs(token, c.ProviderID)...)
	p.args = append(p.args, string(keyport.Assigned), now(), sql.NullString{String: c.ProviderID, Valid: c.ProviderID != ""}, c.DomainID,
		strings.Join(states, ","),
		p.id, c.ProviderID, string(c.EID), string(c.AID), c.WrappingKeyID,
		sql.NullString{String: c.IdempotencyKey, Valid: c.IdempotencyKey != ""}, c.RequestHash, c.Package, p.createdAt,
		m.Topic, m.Payload, p.msgAt, sentAt,
		c.DomainID)
	return p, nil
}

// result reads claimSQL's answer: c and m take their stored values when the
// claim won; otherwise the token was not live (ErrTokenNotLive), the domain
// is not there (ErrNotFound) or was not in a source state (ErrDomainTaken),
// and nothing was written.
func (p *pgClaim) result(c *keyport.Claim, m *keyport.OutboxMessage, a claimAnswer) error {
	switch {
	case a.outboxID.Valid:
		c.ID, c.CreatedAt = p.id, p.createdAt
		m.ID, m.CreatedAt, m.SentAt = a.outboxID.Int64, p.msgAt, p.sentAt
		return nil
	case !a.live:
		return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrTokenNotLive)
	case !a.exists:
		return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrNotFound)
	}
	return fmt.Errorf("store: claim domain %d: %w", c.DomainID, keyport.ErrDomainTaken)
}
