package keyport

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ClaimRequest asks for one domain of a module. Without AID, the module's
// lowest unassigned domain is taken.
type ClaimRequest struct {
	EID            EID
	AID            AID // optional
	WrappingKeyID  string
	IdempotencyKey string // optional; the same key returns the same claim
}

func (r ClaimRequest) hash() string {
	h := sha256.Sum256([]byte(fmt.Sprintf("claim/v1|%s|%s|%s", r.EID, r.AID, r.WrappingKeyID)))
	return hex.EncodeToString(h[:])
}

// MaxIdempotencyKey is the longest Idempotency-Key accepted.
const MaxIdempotencyKey = 255

// Claim gives the caller one unassigned domain (flow 5): a conditional
// UNASSIGNED → ASSIGNED update, the first keys wrapped to the caller's key
// inside the HSM, a signed key package, an audit event and an outbox row, all
// in one transaction. Exactly one of any number of concurrent claims of a
// domain wins; the others get ErrConflict. created is false when an earlier
// claim with the same idempotency key is returned.
//
// A principal from AuthenticateClaim is checked again: by the claim's write
// (ErrTokenNotLive), or, for a replay and for any claim that did not
// commit, by reading its token again before answering.
func (s *Service) Claim(ctx context.Context, p Principal, req ClaimRequest) (c *Claim, created bool, err error) {
	defer func() {
		r := ResultOf(err)
		if err == nil && !created {
			r = ResultReplayed
		}
		s.metrics().Claimed(r)
	}()
	if p.check != nil && req.IdempotencyKey != "" {
		// A replay answers from what is stored: the token first.
		if p, err = s.recheck(ctx, p); err != nil {
			return nil, false, err
		}
	}
	c, created, err = s.claim(ctx, p, req)
	if err != nil && p.check != nil {
		if _, rerr := s.recheck(ctx, p); rerr != nil {
			return nil, false, rerr
		}
	}
	return c, created, err
}

func (s *Service) claim(ctx context.Context, p Principal, req ClaimRequest) (c *Claim, created bool, err error) {
	if p.ProviderID == "" {
		return nil, false, fmt.Errorf("%w: only a provider can claim a domain", ErrForbidden)
	}
	if len(req.IdempotencyKey) > MaxIdempotencyKey {
		return nil, false, Invalid("Idempotency-Key", "at most %d characters", MaxIdempotencyKey)
	}
	if req.IdempotencyKey != "" {
		if c, err := s.replay(ctx, p, req); c != nil || err != nil {
			return c, false, err
		}
	}
	wk, pub, err := s.wrappingKey(ctx, p.ProviderID, req.WrappingKeyID)
	if err != nil {
		return nil, false, err
	}
	// Without an AID, race for the lowest free domain; a lost race moves on
	// to the next one a few times before giving up.
	for attempt := 0; ; attempt++ {
		c, err = s.claimOnce(ctx, p, req, wk, pub)
		if req.AID != "" || !errors.Is(err, errLostRace) || attempt == 4 {
			break
		}
	}
	if errors.Is(err, errLostRace) {
		err = fmt.Errorf("%w: the domain was claimed by someone else", ErrConflict)
	}
	if errors.Is(err, ErrConflict) && req.IdempotencyKey != "" {
		// A concurrent request with the same key may have won.
		if c2, err2 := s.replay(ctx, p, req); c2 != nil || err2 != nil {
			return c2, false, err2
		}
	}
	if err != nil {
		return nil, false, err
	}
	s.log().Info("domain claimed", "claim", c.ID, "provider", p.ProviderID, "eid", c.EID, "aid", c.AID)
	return c, true, nil
}

var errLostRace = errors.New("lost race")

// ErrDomainTaken is the ErrConflict of Repo.ClaimDomain when the domain is
// not in a state a claim starts from: another claim (or a lock) got there
// first. A reused idempotency key is a plain ErrConflict.
var ErrDomainTaken = fmt.Errorf("%w: the domain is not in a claimable state", ErrConflict)

func (s *Service) replay(ctx context.Context, p Principal, req ClaimRequest) (*Claim, error) {
	c, err := s.Store.GetClaimByIdempotencyKey(ctx, p.ProviderID, req.IdempotencyKey)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if c.RequestHash != req.hash() {
		return nil, fmt.Errorf("%w: Idempotency-Key was used for a different claim request", ErrConflict)
	}
	return c, nil
}

// claimOnce does the HSM work first, outside any transaction, so that
// concurrent claims of different domains use the HSM in parallel instead of
// queuing behind a database write lock; then one transaction makes the
// conditional UNASSIGNED → ASSIGNED update and stores claim, package, audit
// event and outbox row. A claim that loses the race, or fails before the
// commit, leaves nothing behind: the wrapped keys and the package exist only
// in memory until the commit.
func (s *Service) claimOnce(ctx context.Context, p Principal, req ClaimRequest, wk *WrappingKey, pub *rsa.PublicKey) (*Claim, error) {
	var d *Domain
	var err error
	if req.AID != "" {
		d, err = s.Store.GetDomain(ctx, req.EID, req.AID)
	} else {
		d, err = s.Store.FirstUnassigned(ctx, req.EID)
		if errors.Is(err, ErrNotFound) {
			// An unknown module, or one with every domain taken?
			if _, merr := s.Store.GetModule(ctx, req.EID); merr != nil {
				return nil, merr
			}
			return nil, fmt.Errorf("%w: module %s has no unassigned domain", ErrConflict, req.EID)
		}
	}
	if err != nil {
		return nil, err
	}
	b, err := s.batch(ctx, d.BatchID)
	if err != nil {
		return nil, err
	}
	if d.State != Unassigned {
		if p.Admin || (d.OwnerID != "" && d.OwnerID == p.ProviderID) {
			return nil, fmt.Errorf("%w: domain %s is %s, not UNASSIGNED", ErrConflict, d.AID, d.State)
		}
		// Another provider's domain: nothing about its state.
		return nil, fmt.Errorf("%w: domain %s is not available", ErrConflict, d.AID)
	}
	keys, err := s.Custody.WrapFirstKeys(ctx, FirstKeysRequest{Batch: b.Name, Source: d.KeySource, EID: d.EID, AID: d.AID,
		Wrapped: d.Wrapped, Recipient: pub})
	if err != nil {
		return nil, fmt.Errorf("keyport: wrap first keys of %s/%s: %w", d.EID, d.AID, err)
	}
	for _, k := range keys {
		if want, ok := d.KCV[k.Usage]; ok && want != k.KCV {
			// The HSM unwrapped a key that is not the one the manufacturer
			// declared: never hand it out.
			return nil, fmt.Errorf("keyport: %s key of %s/%s has KCV %s, import declared %s", k.Usage, d.EID, d.AID, k.KCV, want)
		}
	}
	c := &Claim{ID: NewID("clm"), ProviderID: p.ProviderID, DomainID: d.ID, EID: d.EID, AID: d.AID, WrappingKeyID: wk.ID,
		IdempotencyKey: req.IdempotencyKey, RequestHash: req.hash(), CreatedAt: s.now().UTC()}
	pkg := &KeyPackage{Version: 1, EID: d.EID, AID: d.AID, KVN: d.KVN, SCP: "03", I: "70", SequenceCounter: d.SeqCounter,
		Wrapping: PackageWrapping{Alg: "RSA-OAEP+AES-KWP", OAEPHash: s.Custody.OAEPHash(), PublicKeySHA256: wk.SHA256},
		IssuedAt: c.CreatedAt, ClaimID: c.ID}
	for i, k := range keys {
		pkg.Keys = append(pkg.Keys, PackageKey{ID: i + 1, Usage: k.Usage, Bits: k.Bits, KCV: k.KCV, Wrapped: k.Wrapped})
	}
	if c.Package, err = s.signPackage(ctx, pkg); err != nil {
		return nil, err
	}
	msg, _ := json.Marshal(map[string]any{"event": "domain.assigned", "provider": p.ProviderID, "eid": d.EID, "aid": d.AID, "claim": c.ID})
	ev, err := s.auditEvent(p.Actor(), "claim", "domain:"+string(d.EID)+"/"+string(d.AID),
		map[string]any{"claim": c.ID, "wrapping_key_sha256": wk.SHA256, "kcv": pkg.kcvs()})
	if err != nil {
		return nil, err
	}
	w := ClaimWrite{Claim: c, From: From(EventClaim), Outbox: &OutboxMessage{Topic: "domain.assigned", Payload: string(msg), CreatedAt: c.CreatedAt},
		Audit: ev, Token: p.checkedToken()}
	if err := s.writeClaim(ctx, w); err != nil {
		if errors.Is(err, ErrDomainTaken) && req.AID == "" {
			return nil, errLostRace
		}
		return nil, err
	}
	return c, nil
}

// writeClaim stores w through Claims, or in a Store.Tx of its own without.
func (s *Service) writeClaim(ctx context.Context, w ClaimWrite) error {
	keys := s.keysFor(ctx)
	if s.Claims != nil {
		return s.Claims.WriteClaim(ctx, w, keys)
	}
	return s.Store.Tx(ctx, func(tx Repo) error { return w.Apply(ctx, tx, keys) })
}

// ClaimWrite is what a claim that wins stores: the domain's conditional
// move from one of From to ASSIGNED, with the claim and its outbox row
// (Repo.ClaimDomain), and the claim's audit event.
type ClaimWrite struct {
	Claim  *Claim
	From   []DomainState
	Outbox *OutboxMessage
	Audit  *AuditEvent
	// Token, when set, is the API token the claim must find live
	// (Repo.ClaimDomain).
	Token string
}

// Apply does w inside the transaction tx: ClaimDomain, then the audit
// event, which tx seals with keys when it commits. A ClaimWriter without a
// pipeline of its own runs it; it may run more than once for one claim
// (Committer), keeping only what the committed run wrote.
func (w ClaimWrite) Apply(ctx context.Context, tx Repo, keys AuditKeys) error {
	if err := tx.ClaimDomain(ctx, w.Claim, w.From, w.Outbox, w.Token); err != nil {
		return err
	}
	return appendAudit(ctx, tx, w.Audit, keys)
}

// Claim records that a provider took a domain, and holds the signed key
// package it received (a JWS with the first keys wrapped to its key; no
// secret in the clear).
type Claim struct {
	ID             string
	ProviderID     string
	DomainID       int64
	EID            EID
	AID            AID
	WrappingKeyID  string
	IdempotencyKey string
	// RequestHash binds an idempotency key to one request body.
	RequestHash string
	Package     []byte
	CreatedAt   time.Time
}
