package store

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/keyport/keyport"
)

// auditLockKey is the pg_advisory_xact_lock key that serializes audit
// appends across replicas ("kpaudit" in ASCII).
const auditLockKey = 0x6b7061756469740a

type auditRow struct {
	Seq      int64     `gorm:"column:seq;primaryKey;autoIncrement:false"`
	At       time.Time `gorm:"column:at"`
	Actor    string    `gorm:"column:actor"`
	Action   string    `gorm:"column:action"`
	Object   string    `gorm:"column:object"`
	Detail   string    `gorm:"column:detail"`
	PrevHash []byte    `gorm:"column:prev_hash"`
	Hash     []byte    `gorm:"column:hash"`
}

func (auditRow) TableName() string { return "audit_events" }

// AppendAudit chains e to the log. The head is read and the event inserted
// under one lock: on PostgreSQL a transaction-scoped advisory lock (which
// holds until the caller's transaction ends, so the chain follows commit
// order), on SQLite the write transaction itself. e.At is normalised to
// keyport.AuditTime (now if zero) before hashing, which is exactly what is
// stored, so the chain verifies after reading back.
func (r *repo) AppendAudit(ctx context.Context, e *keyport.AuditEvent) error {
	return r.writeTx(ctx, "append audit", func(db *gorm.DB) error {
		if r.dialect == dialectPostgres && !(r.inTx && r.auditLocked) {
			if err := db.Exec(`SELECT pg_advisory_xact_lock(?)`, int64(auditLockKey)).Error; err != nil {
				return wrap("append audit: lock", err)
			}
			r.auditLocked = r.inTx
		}
		// Under the lock, what this transaction appended last is the head.
		var head []auditRow
		if r.inTx && r.auditHead != nil {
			head = []auditRow{*r.auditHead}
		} else if err := db.Raw(`SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1`).Scan(&head).Error; err != nil {
			return wrap("append audit: head", err)
		}
		var prev []byte
		e.Seq = 1
		if len(head) == 1 {
			e.Seq, prev = head[0].Seq+1, head[0].Hash
		}
		e.PrevHash = prev
		e.At = dbTime(e.At)
		e.Hash = keyport.ChainHash(prev, *e)
		row := auditRow{Seq: e.Seq, At: e.At, Actor: e.Actor, Action: e.Action, Object: e.Object, Detail: e.Detail,
			PrevHash: e.PrevHash, Hash: e.Hash}
		if err := db.Create(&row).Error; err != nil {
			return wrap("append audit", err)
		}
		if r.inTx {
			r.auditHead = &auditRow{Seq: e.Seq, Hash: e.Hash}
		}
		return nil
	})
}

// AuditEvents returns up to limit events with Seq > after, in Seq order.
func (r *repo) AuditEvents(ctx context.Context, after int64, limit int) ([]keyport.AuditEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("store: audit events: %w", keyport.Invalid("limit", "must be positive, got %d", limit))
	}
	var rows []auditRow
	err := r.r.WithContext(ctx).Where("seq > ?", after).Order("seq").Limit(limit).Find(&rows).Error
	if err != nil {
		return nil, wrap("audit events", err)
	}
	out := make([]keyport.AuditEvent, len(rows))
	for i, row := range rows {
		out[i] = keyport.AuditEvent{Seq: row.Seq, At: row.At.UTC(), Actor: row.Actor, Action: row.Action,
			Object: row.Object, Detail: row.Detail, PrevHash: nonEmpty(row.PrevHash), Hash: row.Hash}
	}
	return out, nil
}

// nonEmpty returns nil for an empty slice: PostgreSQL gives an empty bytea
// where SQLite gives nil; both mean "no previous event".
func nonEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

type checkpointRow struct {
	Seq  int64     `gorm:"column:seq;primaryKey;autoIncrement:false"`
	Hash []byte    `gorm:"column:hash"`
	MAC  []byte    `gorm:"column:mac"`
	At   time.Time `gorm:"column:at"`
}

func (checkpointRow) TableName() string { return "audit_checkpoints" }

// AddCheckpoint stores an HSM MAC over the chain head at c.Seq; ErrConflict if
// that sequence number already has one.
func (r *repo) AddCheckpoint(ctx context.Context, c *keyport.AuditCheckpoint) error {
	row := checkpointRow{Seq: c.Seq, Hash: c.Hash, MAC: c.MAC, At: dbTime(c.At)}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("add checkpoint", err)
	}
	c.At = row.At
	return nil
}

// Checkpoints returns every checkpoint in Seq order.
func (r *repo) Checkpoints(ctx context.Context) ([]keyport.AuditCheckpoint, error) {
	var rows []checkpointRow
	if err := r.r.WithContext(ctx).Order("seq").Find(&rows).Error; err != nil {
		return nil, wrap("checkpoints", err)
	}
	out := make([]keyport.AuditCheckpoint, len(rows))
	for i, row := range rows {
		out[i] = keyport.AuditCheckpoint{Seq: row.Seq, Hash: row.Hash, MAC: row.MAC, At: row.At.UTC()}
	}
	return out, nil
}

type auditHeadRow struct {
	ID   int       `gorm:"column:id;primaryKey;autoIncrement:false"`
	Seq  int64     `gorm:"column:seq"`
	Hash []byte    `gorm:"column:hash"`
	MAC  []byte    `gorm:"column:mac"`
	At   time.Time `gorm:"column:at"`
}

func (auditHeadRow) TableName() string { return "audit_head" }

// SetAuditHead stores h as the keyed head, one UPSERT that never moves the
// head back: a stored head at h.Seq or later is kept. Inside the append's
// transaction the append's lock (the advisory lock on PostgreSQL, the write
// transaction on SQLite) still holds, so heads are written in chain order.
func (r *repo) SetAuditHead(ctx context.Context, h *keyport.AuditHead) error {
	at := dbTime(h.At)
	err := r.w.WithContext(ctx).Exec(`INSERT INTO audit_head (id, seq, hash, mac, at) VALUES (1, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, at = excluded.at
		WHERE audit_head.seq < excluded.seq`, h.Seq, h.Hash, h.MAC, at).Error
	if err != nil {
		return wrap("set audit head", err)
	}
	h.At = at
	return nil
}

// AuditHead returns the keyed head, ErrNotFound if none was written yet.
func (r *repo) AuditHead(ctx context.Context) (*keyport.AuditHead, error) {
	var rows []auditHeadRow
	if err := r.r.WithContext(ctx).Where("id = 1").Limit(1).Find(&rows).Error; err != nil {
		return nil, wrap("audit head", err)
	}
	if len(rows) == 0 {
		return nil, fmt.Errorf("store: audit head: %w", keyport.ErrNotFound)
	}
	row := rows[0]
	return &keyport.AuditHead{Seq: row.Seq, Hash: row.Hash, MAC: row.MAC, At: row.At.UTC()}, nil
}

type outboxRow struct {
	ID        int64      `gorm:"column:id;primaryKey"`
	Topic     string     `gorm:"column:topic"`
	Payload   string     `gorm:"column:payload"`
	CreatedAt time.Time  `gorm:"column:created_at"`
	SentAt    *time.Time `gorm:"column:sent_at"`
}

func (outboxRow) TableName() string { return "outbox" }

// AddOutbox stores m to be sent after the surrounding transaction commits,
// setting its ID and CreatedAt.
func (r *repo) AddOutbox(ctx context.Context, m *keyport.OutboxMessage) error {
	row := outboxRow{Topic: m.Topic, Payload: m.Payload, CreatedAt: dbTime(m.CreatedAt), SentAt: m.SentAt}
	if row.SentAt != nil {
		at := dbTime(*row.SentAt)
		row.SentAt = &at
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("add outbox", err)
	}
	m.ID, m.CreatedAt, m.SentAt = row.ID, row.CreatedAt, row.SentAt
	return nil
}
