package keyport

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
func (s *Service) Claim(ctx context.Context, p Principal, req ClaimRequest) (c *Claim, created bool, err error) {
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
	wk, err := s.Store.GetWrappingKey(ctx, p.ProviderID, req.WrappingKeyID)
	if errors.Is(err, ErrNotFound) {
		return nil, false, Invalid("wrapping_key_id", "no wrapping key %q is registered for you", req.WrappingKeyID)
	}
	if err != nil {
		return nil, false, err
	}
	pub, err := x509.ParsePKIXPublicKey(wk.PublicKeyDER)
	if err != nil {
		return nil, false, fmt.Errorf("keyport: stored wrapping key %s: %w", wk.ID, err)
	}
	// Without an AID, race for the lowest free domain; a lost race moves on
	// to the next one a few times before giving up.
	for attempt := 0; ; attempt++ {
		c, err = s.claimOnce(ctx, p, req, wk, pub.(*rsa.PublicKey))
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

// batch returns a batch by ID. Batches never change once created, so they
// are cached for the life of the process.
func (s *Service) batch(ctx context.Context, id int64) (*Batch, error) {
	if b, ok := s.batches.Load(id); ok {
		return b.(*Batch), nil
	}
	b, err := s.Store.GetBatchByID(ctx, id)
	if err != nil {
		return nil, err
	}
	s.batches.Store(id, b)
	return b, nil
}

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
		return nil, fmt.Errorf("%w: domain %s is %s, not UNASSIGNED", ErrConflict, d.AID, d.State)
	}
	keys, err := s.Custody.WrapFirstKeys(ctx, FirstKeysRequest{Batch: b.Name, Source: d.KeySource, EID: d.EID, AID: d.AID,
		Imported: d.Imported, Recipient: pub})
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
	err = s.Store.Tx(ctx, func(tx Repo) error {
		owner := p.ProviderID
		if err := tx.TransitionDomain(ctx, d.ID, From(EventClaim), Assigned, &owner); err != nil {
			if errors.Is(err, ErrConflict) && req.AID == "" {
				return errLostRace
			}
			return err
		}
		if err := tx.CreateClaim(ctx, c); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, p.Actor(), "claim", "domain:"+string(d.EID)+"/"+string(d.AID),
			map[string]any{"claim": c.ID, "wrapping_key_sha256": wk.SHA256, "kcv": pkg.kcvs()}); err != nil {
			return err
		}
		msg, _ := json.Marshal(map[string]any{"event": "domain.assigned", "provider": p.ProviderID, "eid": d.EID, "aid": d.AID, "claim": c.ID})
		return tx.AddOutbox(ctx, &OutboxMessage{Topic: "domain.assigned", Payload: string(msg), CreatedAt: c.CreatedAt})
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (p *KeyPackage) kcvs() map[KeyUsage]string {
	m := map[KeyUsage]string{}
	for _, k := range p.Keys {
		m[k.Usage] = k.KCV
	}
	return m
}

// signPackage serializes p as a flattened JWS signed in the HSM (ES256).
func (s *Service) signPackage(ctx context.Context, p *KeyPackage) ([]byte, error) {
	kid, _, err := s.Custody.ReceiptKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("keyport: receipt key: %w", err)
	}
	payload, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	hdr, _ := json.Marshal(jwsHeader{Alg: "ES256", Kid: kid, Typ: KeyPackageType})
	j := JWS{Protected: b64.EncodeToString(hdr), Payload: b64.EncodeToString(payload)}
	sig, err := s.Custody.SignES256(ctx, []byte(j.Protected+"."+j.Payload))
	if err != nil {
		return nil, fmt.Errorf("keyport: sign key package: %w", err)
	}
	j.Signature = b64.EncodeToString(sig)
	return json.Marshal(j)
}

// KeyPackage returns the signed key package of one of the caller's domains.
// It can be downloaded again as often as needed; each download is audited.
func (s *Service) KeyPackage(ctx context.Context, p Principal, eid EID, aid AID) ([]byte, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	c, err := s.Store.GetClaimForDomain(ctx, p.ProviderID, d.ID)
	if err != nil {
		return nil, err
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		return s.audit(ctx, tx, p.Actor(), "key-package.download", "domain:"+string(eid)+"/"+string(aid), map[string]any{"claim": c.ID})
	})
	if err != nil {
		return nil, err
	}
	return c.Package, nil
}

// JWKS returns the receipt key set that verifies key packages.
func (s *Service) JWKS(ctx context.Context) (JWKS, error) {
	kid, pub, err := s.Custody.ReceiptKey(ctx)
	if err != nil {
		return JWKS{}, err
	}
	return JWKS{Keys: []JWK{NewJWK(kid, pub)}}, nil
}

// ---- Audit verification ----

// AuditBroken names the first audit row that fails verification.
type AuditBroken struct {
	Seq    int64
	Reason string
}

func (e *AuditBroken) Error() string {
	return fmt.Sprintf("audit chain broken at row %d: %s", e.Seq, e.Reason)
}

// AuditReport summarises a verified audit log.
type AuditReport struct {
	Events      int64
	Checkpoints int
	Head        []byte
}

// VerifyAudit walks the whole audit chain, recomputing every hash, and checks
// every HSM checkpoint. It returns *AuditBroken naming the first row that was
// edited, deleted or moved.
func (s *Service) VerifyAudit(ctx context.Context) (*AuditReport, error) {
	cps, err := s.Store.Checkpoints(ctx)
	if err != nil {
		return nil, err
	}
	cpAt := map[int64]AuditCheckpoint{}
	for _, cp := range cps {
		mac, err := s.Custody.AuditMAC(ctx, checkpointInput(cp.Seq, cp.Hash))
		if err != nil {
			return nil, fmt.Errorf("keyport: audit checkpoint MAC: %w", err)
		}
		if !bytes.Equal(mac, cp.MAC) {
			return nil, &AuditBroken{Seq: cp.Seq, Reason: "the checkpoint's HSM MAC does not verify (checkpoint edited)"}
		}
		cpAt[cp.Seq] = cp
	}
	var prev []byte
	var seq int64
	for {
		evs, err := s.Store.AuditEvents(ctx, seq, 1000)
		if err != nil {
			return nil, err
		}
		for _, e := range evs {
			switch {
			case e.Seq != seq+1:
				return nil, &AuditBroken{Seq: seq + 1, Reason: fmt.Sprintf("row missing (next row is %d): deleted", e.Seq)}
			case !bytes.Equal(e.PrevHash, prev):
				return nil, &AuditBroken{Seq: e.Seq, Reason: "does not chain to the row before it: rows deleted or reordered"}
			case !bytes.Equal(ChainHash(prev, e), e.Hash):
				return nil, &AuditBroken{Seq: e.Seq, Reason: "content does not match its hash: edited"}
			}
			if cp, ok := cpAt[e.Seq]; ok && !bytes.Equal(cp.Hash, e.Hash) {
				return nil, &AuditBroken{Seq: e.Seq, Reason: "differs from the HSM checkpoint: rewritten"}
			}
			prev, seq = e.Hash, e.Seq
		}
		if len(evs) < 1000 {
			break
		}
	}
	for _, cp := range cps {
		if cp.Seq > seq {
			return nil, &AuditBroken{Seq: seq + 1, Reason: fmt.Sprintf("the log ends at row %d but an HSM checkpoint covers row %d: rows deleted", seq, cp.Seq)}
		}
	}
	return &AuditReport{Events: seq, Checkpoints: len(cps), Head: prev}, nil
}
