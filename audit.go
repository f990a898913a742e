package keyport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
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

// audit appends an event to the chain inside tx and, every CheckpointEvery
// events, an HSM HMAC checkpoint over the chain head.
func (s *Service) audit(ctx context.Context, tx Repo, actor, action, object string, detail any) error {
	d, err := json.Marshal(detail)
	if err != nil {
		return err
	}
	e := &AuditEvent{At: AuditTime(s.now()), Actor: actor, Action: action, Object: object, Detail: string(d)}
	if err := tx.AppendAudit(ctx, e); err != nil {
		return fmt.Errorf("keyport: audit %s: %w", action, err)
	}
	every := s.CheckpointEvery
	if every <= 0 {
		every = 16
	}
	if e.Seq%every == 0 {
		mac, err := s.Custody.AuditMAC(ctx, checkpointInput(e.Seq, e.Hash))
		if err != nil {
			return fmt.Errorf("keyport: audit checkpoint: %w", err)
		}
		if err := tx.AddCheckpoint(ctx, &AuditCheckpoint{Seq: e.Seq, Hash: e.Hash, MAC: mac, At: e.At}); err != nil {
			return fmt.Errorf("keyport: audit checkpoint: %w", err)
		}
	}
	return nil
}

func checkpointInput(seq int64, hash []byte) []byte {
	return []byte(fmt.Sprintf("keyport/audit-checkpoint/v1|%d|%x", seq, hash))
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
