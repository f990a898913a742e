package keyport

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ChainHash is the hash of audit event e chained to the previous event's hash:
// SHA-256(prev ‖ seq ‖ at ‖ actor ‖ action ‖ object ‖ detail), each variable
// field length-prefixed so that no two events encode alike. At is taken in UTC
// with nanoseconds, the precision both stores keep (microseconds are stored,
// so callers truncate At to microseconds before chaining).
func ChainHash(prev []byte, e AuditEvent) []byte {
	h := sha256.New()
	field := func(b []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field(prev)
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], uint64(e.Seq))
	h.Write(seq[:])
	field([]byte(e.At.UTC().Format(time.RFC3339Nano)))
	field([]byte(e.Actor))
	field([]byte(e.Action))
	field([]byte(e.Object))
	field([]byte(e.Detail))
	return h.Sum(nil)
}

// AuditTime is the timestamp precision the audit log keeps.
func AuditTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

// AuditEvent is one row of the append-only, hash-chained audit log.
type AuditEvent struct {
	Seq      int64
	At       time.Time
	Actor    string // "provider:<id>", "admin:<id>", "system"
	Action   string // "claim", "import", "batch.create", …
	Object   string // "domain:<eid>/<aid>", "batch:<name>", …
	Detail   string // JSON, never a secret
	PrevHash []byte
	Hash     []byte
}

// MarshalJSON gives an audit event its one JSON shape, for the API and the
// portal alike: the fields, the detail as the JSON it is, and the hash in
// hex (prev_hash is the row before's hash).
func (e AuditEvent) MarshalJSON() ([]byte, error) {
	detail := json.RawMessage("null")
	if e.Detail != "" {
		detail = json.RawMessage(e.Detail)
	}
	return json.Marshal(struct {
		Seq    int64           `json:"seq"`
		At     time.Time       `json:"at"`
		Actor  string          `json:"actor"`
		Action string          `json:"action"`
		Object string          `json:"object"`
		Detail json.RawMessage `json:"detail"`
		Hash   string          `json:"hash"`
	}{e.Seq, e.At, e.Actor, e.Action, e.Object, detail, hex.EncodeToString(e.Hash)})
}

// AuditCheckpoint is an HSM HMAC over the chain head at some sequence number,
// so that rewriting the whole chain needs the HSM too.
type AuditCheckpoint struct {
	Seq  int64
	Hash []byte
	MAC  []byte
	At   time.Time
}

// AuditHead is the keyed end of the log: the last row's sequence number and
// hash under an HSM HMAC (headInput), rewritten with every append in the
// append's transaction. It is what proves where the log ends: without it,
// deleting the rows after the last checkpoint would leave a valid chain.
type AuditHead struct {
	Seq  int64
	Hash []byte
	MAC  []byte
	At   time.Time
}

// audit appends an event to the chain inside tx, moves the keyed head to it
// and, every CheckpointEvery events, adds an HSM HMAC checkpoint over it.
// tx must be a transaction (Store.Tx): the store queues the event and, just
// before tx commits (BeforeCommit), chains all of tx's events under its
// lock (AuditSealer), for which the HSM MACs the head once; the lock holds
// until the commit, so heads follow the chain's order.
func (s *Service) audit(ctx context.Context, tx Repo, actor, action, object string, detail any) error {
	e, err := s.auditEvent(actor, action, object, detail)
	if err != nil {
		return err
	}
	return appendAudit(ctx, tx, e, s.keysFor(ctx))
}

// auditEvent is the event of an action done now, its detail as JSON.
func (s *Service) auditEvent(actor, action, object string, detail any) (*AuditEvent, error) {
	d, err := json.Marshal(detail)
	if err != nil {
		return nil, fmt.Errorf("keyport: audit %s: %w", action, err)
	}
	return &AuditEvent{At: AuditTime(s.now()), Actor: actor, Action: action, Object: object, Detail: string(d)}, nil
}

// keysFor is auditKeys as the AuditKeys of a seal done for ctx.
func (s *Service) keysFor(ctx context.Context) AuditKeys {
	return func(chained []AuditEvent) (*AuditHead, []AuditCheckpoint, error) { return s.auditKeys(ctx, chained) }
}

// appendAudit appends e inside tx. A store that queued it (e.Seq still 0)
// chains it, and the rest of tx's events, just before tx commits, with the
// head keyed by keys once for all of them; one that chained it at once has
// its head and checkpoints keyed and written here.
func appendAudit(ctx context.Context, tx Repo, e *AuditEvent, keys AuditKeys) error {
	if err := tx.AppendAudit(ctx, e); err != nil {
		return fmt.Errorf("keyport: audit %s: %w", e.Action, err)
	}
	if e.Seq == 0 {
		bc, ok := tx.(BeforeCommit)
		if _, seals := tx.(AuditSealer); !ok || !seals {
			return fmt.Errorf("keyport: audit %s: the store queued the event but cannot seal it", e.Action)
		}
		return bc.BeforeCommit(ctx, "audit-seal", func(ctx context.Context, tx Repo) error {
			return tx.(AuditSealer).SealAudit(ctx, keys)
		})
	}
	h, cps, err := keys([]AuditEvent{*e})
	if err != nil {
		return err
	}
	for i := range cps {
		if err := tx.AddCheckpoint(ctx, &cps[i]); err != nil {
			return fmt.Errorf("keyport: audit checkpoint: %w", err)
		}
	}
	if err := tx.SetAuditHead(ctx, h); err != nil {
		return fmt.Errorf("keyport: audit head: %w", err)
	}
	return nil
}

// auditKeys has the HSM MAC the head at the last of chained, and a
// checkpoint at every CheckpointEvery-th event among them.
func (s *Service) auditKeys(ctx context.Context, chained []AuditEvent) (*AuditHead, []AuditCheckpoint, error) {
	every := s.checkpointEvery()
	var cps []AuditCheckpoint
	for _, e := range chained {
		if e.Seq%every != 0 {
			continue
		}
		mac, err := s.Custody.AuditMAC(ctx, checkpointInput(e.Seq, e.Hash))
		if err != nil {
			return nil, nil, fmt.Errorf("keyport: audit checkpoint: %w", err)
		}
		cps = append(cps, AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, MAC: mac, At: e.At})
	}
	last := chained[len(chained)-1]
	mac, err := s.Custody.AuditMAC(ctx, headInput(last.Seq, last.Hash))
	if err != nil {
		return nil, nil, fmt.Errorf("keyport: audit head: %w", err)
	}
	return &AuditHead{Seq: last.Seq, Hash: last.Hash, MAC: mac, At: last.At}, cps, nil
}

// checkpointEvery is CheckpointEvery, 16 when unset.
func (s *Service) checkpointEvery() int64 {
	if s.CheckpointEvery <= 0 {
		return 16
	}
	return s.CheckpointEvery
}

// The three MAC inputs are kept apart by their prefixes, so that no MAC in
// the database stands in for another: a checkpoint's MAC copied into the
// head, after deleting the rows behind that checkpoint, does not verify as a
// head. A v2 checkpoint was written by a keyport that keeps the keyed head:
// once one exists, a missing head means the head was deleted.
func checkpointInput(seq int64, hash []byte) []byte {
	return []byte(fmt.Sprintf("keyport/audit-checkpoint/v2|%d|%x", seq, hash))
}

// checkpointInputV1 is what checkpoints were MACed over before the keyed head.
func checkpointInputV1(seq int64, hash []byte) []byte {
	return []byte(fmt.Sprintf("keyport/audit-checkpoint/v1|%d|%x", seq, hash))
}

func headInput(seq int64, hash []byte) []byte {
	return []byte(fmt.Sprintf("keyport/audit-head/v1|%d|%x", seq, hash))
}

// MyAudit returns the newest audit events done by the caller's provider or
// about it.
func (s *Service) MyAudit(ctx context.Context, p Principal, limit int) ([]AuditEvent, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	return s.Store.ProviderAudit(ctx, p.ProviderID, limit)
}

// AuditEvents returns up to limit audit events after sequence number
// `after`, in chain order (admins only): the log as an auditor reads it.
func (s *Service) AuditEvents(ctx context.Context, p Principal, after int64, limit int) ([]AuditEvent, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.AuditEvents(ctx, after, limit)
}

// RecentAudit returns the newest audit events (admins only).
func (s *Service) RecentAudit(ctx context.Context, p Principal, limit int) ([]AuditEvent, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.RecentAudit(ctx, limit)
}

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
	// Keyed says the log's end is proven by the HSM-MACed head. It is false
	// only for a log written entirely before the keyed head existed (an
	// upgraded database before its first new event: every event older than
	// the store's record of when it began keying the log, AuditKeyedSince):
	// then deleting its last rows (those after the last checkpoint) cannot
	// be detected.
	Keyed bool
}

// VerifyAudit walks the whole audit chain, recomputing every hash, checks
// every HSM checkpoint and the keyed head. It returns *AuditBroken naming the
// first row that was edited, deleted or moved, including the last rows: the
// head's HSM MAC says where the log ends.
//
// From the first event written since the store began keying the log
// (AuditKeyedSince: migration 4, which a store serving this code always
// has), the head must exist and every CheckpointEvery-th row must have its
// checkpoint, as keyport writes them: a log whose head and checkpoints were
// deleted is broken, not a log from before the keyed head, whose rows could
// then be rewritten and re-chained unseen. Only events older than that
// record are accepted without them, and the record itself must exist.
//
// What it cannot see is a copy of an older head put back together with the
// rows after it deleted, nor that record moved past every event, with the
// head and checkpoints deleted: that needs the head's sequence number
// recorded outside the database (README, "Audit log").
func (s *Service) VerifyAudit(ctx context.Context) (*AuditReport, error) {
	since, err := s.Store.AuditKeyedSince(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, &AuditBroken{Seq: 1, Reason: "the store has no record of when it began keying the log " +
			"(schema_migrations lacks migration 4, audit keyed head): deleted, and with it what says which rows need the keyed head and checkpoints"}
	case err != nil:
		return nil, err
	}
	every := s.checkpointEvery()
	cps, err := s.Store.Checkpoints(ctx)
	if err != nil {
		return nil, err
	}
	cpAt := map[int64]AuditCheckpoint{}
	keyedEra := false // some checkpoint was written by a keyport keeping the head
	for _, cp := range cps {
		ok, err := s.macVerifies(ctx, checkpointInput(cp.Seq, cp.Hash), cp.MAC)
		if err != nil {
			return nil, fmt.Errorf("keyport: audit checkpoint MAC: %w", err)
		}
		if ok {
			keyedEra = true
		} else if ok, err = s.macVerifies(ctx, checkpointInputV1(cp.Seq, cp.Hash), cp.MAC); err != nil {
			return nil, fmt.Errorf("keyport: audit checkpoint MAC: %w", err)
		}
		if !ok {
			return nil, &AuditBroken{Seq: cp.Seq, Reason: "the checkpoint's HSM MAC does not verify (checkpoint edited)"}
		}
		cpAt[cp.Seq] = cp
	}
	head, err := s.Store.AuditHead(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		head = nil
	case err != nil:
		return nil, err
	default:
		ok, err := s.macVerifies(ctx, headInput(head.Seq, head.Hash), head.MAC)
		if err != nil {
			return nil, fmt.Errorf("keyport: audit head MAC: %w", err)
		}
		if !ok {
			return nil, &AuditBroken{Seq: head.Seq, Reason: "the keyed head's HSM MAC does not verify (head edited)"}
		}
	}
	var prev []byte
	var seq, lastCheckpoint int64
	var keyedFrom int64 // the first row written since the store began keying the log; 0: none
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
			if keyedFrom == 0 && !e.At.Before(since) {
				keyedFrom = e.Seq
			}
			cp, ok := cpAt[e.Seq]
			switch {
			case ok && !bytes.Equal(cp.Hash, e.Hash):
				return nil, &AuditBroken{Seq: lastCheckpoint + 1, Reason: fmt.Sprintf(
					"rows %d to %d differ from the HSM checkpoint at row %d: rewritten", lastCheckpoint+1, e.Seq, e.Seq)}
			case ok:
				lastCheckpoint = e.Seq
			case keyedFrom > 0 && e.Seq%every == 0:
				return nil, &AuditBroken{Seq: lastCheckpoint + 1, Reason: fmt.Sprintf(
					"no HSM checkpoint at row %d, though keyport writes one every %d rows from row %d on (written since it began keying the log, %s): "+
						"checkpoint deleted, rows %d to %d may be rewritten", e.Seq, every, keyedFrom, since.Format(time.RFC3339), lastCheckpoint+1, e.Seq)}
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
	switch {
	case head == nil && keyedEra:
		return nil, &AuditBroken{Seq: seq + 1, Reason: fmt.Sprintf("the keyed head is missing although checkpoints were written with it: head deleted, rows after %d may be too", seq)}
	case head == nil && keyedFrom > 0:
		return nil, &AuditBroken{Seq: seq + 1, Reason: fmt.Sprintf(
			"the keyed head is missing although rows %d to %d were written since keyport began keying the log (%s): head deleted, "+
				"rows %d to %d may be rewritten, rows after %d deleted", keyedFrom, seq, since.Format(time.RFC3339), lastCheckpoint+1, seq, seq)}
	case head == nil:
		return &AuditReport{Events: seq, Checkpoints: len(cps), Head: prev}, nil
	case head.Seq > seq:
		return nil, &AuditBroken{Seq: seq + 1, Reason: fmt.Sprintf("the log ends at row %d but the keyed head is at row %d: rows deleted", seq, head.Seq)}
	case head.Seq < seq:
		return nil, &AuditBroken{Seq: head.Seq + 1, Reason: fmt.Sprintf("the keyed head is at row %d: rows %d to %d were added outside keyport", head.Seq, head.Seq+1, seq)}
	case !bytes.Equal(head.Hash, prev):
		return nil, &AuditBroken{Seq: lastCheckpoint + 1, Reason: fmt.Sprintf(
			"rows %d to %d differ from the keyed head: rewritten", lastCheckpoint+1, seq)}
	}
	return &AuditReport{Events: seq, Checkpoints: len(cps), Head: prev, Keyed: true}, nil
}

// macVerifies says whether mac is the HSM audit MAC of data.
func (s *Service) macVerifies(ctx context.Context, data, mac []byte) (bool, error) {
	want, err := s.Custody.AuditMAC(ctx, data)
	if err != nil {
		return false, err
	}
	return hmac.Equal(want, mac), nil
}
