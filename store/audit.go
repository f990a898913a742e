package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
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

// AppendAudit chains e to the log. Outside a transaction the head is read
// and the event inserted at once, under the chain's lock (on PostgreSQL a
// transaction-scoped advisory lock, on SQLite the write transaction itself).
// In a transaction e is queued, and chained when the transaction commits
// (SealAudit, or the commit itself when no one sealed): its Seq, PrevHash
// and Hash are set then. The lock is so taken after everything else the
// transaction did, and held only from the seal to the commit, so the chain
// follows commit order, and a transaction that waits for the chain never
// holds it while it waits for a row. e.At is normalised to the database's
// precision before hashing, which is exactly what is stored, so the chain
// verifies after reading back.
func (r *repo) AppendAudit(ctx context.Context, e *keyport.AuditEvent) error {
	if r.inTx {
		e.Seq, e.PrevHash, e.Hash = 0, nil, nil
		r.auditQueue = append(r.auditQueue, e)
		return nil
	}
	return r.writeTx(ctx, "append audit", func(db *gorm.DB) error {
		tx := &repo{dialect: r.dialect, w: db, r: db, inTx: true, auditQueue: []*keyport.AuditEvent{e}, timing: r.timing}
		return tx.SealAudit(ctx, nil)
	})
}

// SealAudit implements keyport.AuditSealer: under the chain's lock it reads
// the head, chains the events this transaction queued, and writes them,
// with the head and checkpoints keys returns for them (none if keys is nil),
// in one statement on PostgreSQL.
func (r *repo) SealAudit(ctx context.Context, keys keyport.AuditKeys) error {
	if !r.inTx {
		return fmt.Errorf("store: seal audit outside a transaction: %w", keyport.ErrInvalid)
	}
	if len(r.auditQueue) == 0 {
		return nil
	}
	if r.dialect == dialectPostgres {
		if _, err := r.exec(ctx, `SELECT pg_advisory_xact_lock(?)`, int64(auditLockKey)); err != nil {
			return wrap("append audit: lock", err)
		}
	}
	var end sealEnd
	err := r.scanRow(ctx, sealEndSQL, []any{time.Time{}}, end.dest()...)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return wrap("append audit: head", err)
	}
	chained := chain(end.seq, end.hash, r.auditQueue)
	var h *keyport.AuditHead
	var cps []keyport.AuditCheckpoint
	if keys != nil {
		if err := end.sealable(); err != nil {
			return err
		}
		var err error
		if h, cps, err = keys(chained); err != nil {
			return err
		}
	}
	if err := r.writeSeal(ctx, chained, cps, h); err != nil {
		return err
	}
	for i, e := range r.auditQueue {
		*e = chained[i]
	}
	r.auditQueue = nil
	last := chained[len(chained)-1]
	r.sealed = &chainHead{seq: last.Seq, hash: last.Hash}
	return nil
}

// sealEndSQL reads, under the chain's lock, the log's last event and the
// keyed head (sealEnd); when there is no head, also how many events (0 or
// 1: it stops at the first) were written since keyport began keying the
// log, when migration 4 was applied. Its one argument is the zero time,
// which stands in for that moment when schema_migrations has no record of
// it, so that every event counts. The count is only evaluated when the
// head is missing: a seal does not scan the log.
const sealEndSQL = `SELECT e.seq, e.hash, h.seq, h.hash,
		CASE WHEN h.id IS NULL THEN (SELECT COUNT(*) FROM (SELECT 1 FROM audit_events WHERE at >=
			COALESCE((SELECT applied_at FROM schema_migrations WHERE version = 4), ?) LIMIT 1) k) ELSE 0 END
	FROM (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) e LEFT JOIN audit_head h ON h.id = 1`

// sealEnd is what sealEndSQL read: the last event (seq 0 and no hash when
// the log is empty), the keyed head (invalid headSeq when there is none)
// and, without a head, whether events of the keyed era exist.
type sealEnd struct {
	seq       int64
	hash      []byte
	headSeq   sql.NullInt64
	headHash  []byte
	keyedRows int64
}

func (e *sealEnd) dest() []any {
	return []any{&e.seq, &e.hash, &e.headSeq, &e.headHash, &e.keyedRows}
}

// sealable refuses a keyed seal onto a log that does not end where its
// keyed head says: the head missing although events were written since
// keyport began keying the log, the head beyond the last event, or at it
// with another hash. Sealing would write a new head, under a good HSM MAC,
// over rows changed or deleted outside keyport, and so make the change
// permanent. It returns *keyport.AuditBroken, as keyport.Service.VerifyAudit
// would; nothing is appended until the log is restored (README, "Audit
// log"). A head behind the last event is not refused: the store chains
// events no one sealed without a head (Store.Tx), and verify names them.
// The head's MAC is not checked here (that needs the HSM on every seal):
// verify checks it.
func (e *sealEnd) sealable() error {
	var broken *keyport.AuditBroken
	switch {
	case e.seq == 0:
		return nil
	case !e.headSeq.Valid && e.keyedRows > 0:
		broken = &keyport.AuditBroken{Seq: e.seq + 1, Reason: fmt.Sprintf(
			"the keyed head is missing although events were written after keyport began keying the log (migration 4): "+
				"head deleted, the rows up to %d may be rewritten; nothing is appended (run keyport audit verify)", e.seq)}
	case !e.headSeq.Valid:
		return nil // a log from before the keyed head: this seal writes its first head
	case e.headSeq.Int64 > e.seq:
		broken = &keyport.AuditBroken{Seq: e.seq + 1, Reason: fmt.Sprintf(
			"the log ends at row %d but the keyed head is at row %d: rows deleted; nothing is appended (run keyport audit verify)",
			e.seq, e.headSeq.Int64)}
	case e.headSeq.Int64 == e.seq && !bytes.Equal(e.headHash, e.hash):
		broken = &keyport.AuditBroken{Seq: e.seq, Reason: "the last row differs from the keyed head: rewritten; " +
			"nothing is appended (run keyport audit verify)"}
	default:
		return nil
	}
	return fmt.Errorf("store: append audit: %w", broken)
}

// chain links events after the event seq whose hash is prev: copies with
// Seq, PrevHash and Hash set, At at the database's precision.
func chain(seq int64, prev []byte, events []*keyport.AuditEvent) []keyport.AuditEvent {
	chained := make([]keyport.AuditEvent, len(events))
	for i, e := range events {
		seq++
		c := *e
		c.Seq, c.PrevHash, c.At = seq, prev, dbTime(e.At)
		c.Hash = keyport.ChainHash(prev, c)
		chained[i], prev = c, c.Hash
	}
	return chained
}

// writeSeal inserts chained events, their checkpoints and the head (if
// any): one statement on PostgreSQL (data-modifying CTEs), three at most on
// SQLite, where a statement costs no round trip.
func (r *repo) writeSeal(ctx context.Context, events []keyport.AuditEvent, cps []keyport.AuditCheckpoint, h *keyport.AuditHead) error {
	sl := sealStatements(events, cps, h)
	if r.dialect == dialectPostgres {
		// One round trip for all of it, under the lock.
		stmt, args := sl.one()
		if _, err := r.exec(ctx, stmt, args...); err != nil {
			return wrap("append audit", err)
		}
		return nil
	}
	if _, err := r.exec(ctx, sl.events, sl.eventArgs...); err != nil {
		return wrap("append audit", err)
	}
	if sl.cps != "" {
		if _, err := r.exec(ctx, sl.cps, sl.cpArgs...); err != nil {
			return wrap("add checkpoint", err)
		}
	}
	if h != nil {
		if _, err := r.exec(ctx, setHeadSQL, sl.headArgs...); err != nil {
			return wrap("set audit head", err)
		}
	}
	return nil
}

// seal is the statements that write a seal: the events, their checkpoints
// (cps "" when none) and the head (headArgs nil when none).
type seal struct {
	events, cps                 string
	eventArgs, cpArgs, headArgs []any
}

// With claims (one claim ID per event), each event's seq is read from its
// claim's row, written earlier in the same transaction: if a claim is not
// there, its event's seq is NULL, which the primary key refuses, so the
// statement, and with it the transaction, fails instead of storing a chain
// with an event for a claim that did not happen (claimpipe.go).
func sealStatements(events []keyport.AuditEvent, cps []keyport.AuditCheckpoint, h *keyport.AuditHead, claims ...string) seal {
	var sl seal
	var q strings.Builder
	sl.eventArgs = make([]any, 0, 9*len(events))
	q.WriteString(`INSERT INTO audit_events (seq, at, actor, action, object, detail, prev_hash, hash) VALUES `)
	for i, e := range events {
		if i > 0 {
			q.WriteString(", ")
		}
		if claims != nil {
			q.WriteString("((SELECT ?::bigint FROM claims WHERE id = ?), ?, ?, ?, ?, ?, ?, ?)")
			sl.eventArgs = append(sl.eventArgs, e.Seq, claims[i])
		} else {
			q.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
			sl.eventArgs = append(sl.eventArgs, e.Seq)
		}
		sl.eventArgs = append(sl.eventArgs, e.At, e.Actor, e.Action, e.Object, e.Detail, e.PrevHash, e.Hash)
	}
	sl.events = q.String()
	if len(cps) > 0 {
		q.Reset()
		q.WriteString(`INSERT INTO audit_checkpoints (seq, hash, mac, at) VALUES `)
		for i, c := range cps {
			if i > 0 {
				q.WriteString(", ")
			}
			q.WriteString("(?, ?, ?, ?)")
			sl.cpArgs = append(sl.cpArgs, c.Seq, c.Hash, c.MAC, dbTime(c.At))
		}
		sl.cps = q.String()
	}
	if h != nil {
		sl.headArgs = []any{h.Seq, h.Hash, h.MAC, dbTime(h.At)}
	}
	return sl
}

// one is the seal as one PostgreSQL statement (data-modifying CTEs).
func (sl seal) one() (string, []any) {
	if sl.cps == "" && sl.headArgs == nil {
		return sl.events, sl.eventArgs
	}
	var q strings.Builder
	args := append([]any(nil), sl.eventArgs...)
	q.WriteString("WITH e AS (" + sl.events + " RETURNING seq)")
	if sl.cps != "" {
		q.WriteString(", c AS (" + sl.cps + " RETURNING seq)")
		args = append(args, sl.cpArgs...)
	}
	if sl.headArgs != nil {
		q.WriteString(" " + setHeadSQL)
		args = append(args, sl.headArgs...)
	} else {
		q.WriteString(" SELECT 1")
	}
	return q.String(), args
}

// setHeadSQL stores the keyed head unless the stored one is at its Seq or
// later (SetAuditHead).
const setHeadSQL = `INSERT INTO audit_head (id, seq, hash, mac, at) VALUES (1, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac, at = excluded.at
		WHERE audit_head.seq < excluded.seq`

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

// AuditKeyedSince returns when migration 4 (audit keyed head) was applied,
// from schema_migrations: since then every event is covered by the keyed
// head and every CheckpointEvery-th by a checkpoint. ErrNotFound if the
// schema has no record of it (the row was deleted).
func (r *repo) AuditKeyedSince(ctx context.Context) (time.Time, error) {
	var rows []Migration
	err := r.r.WithContext(ctx).Raw(`SELECT version, description, applied_at FROM schema_migrations WHERE version = 4`).
		Scan(&rows).Error
	if err != nil {
		return time.Time{}, wrap("audit keyed since", err)
	}
	if len(rows) == 0 {
		return time.Time{}, fmt.Errorf("store: audit keyed since: migration 4 not in schema_migrations: %w", keyport.ErrNotFound)
	}
	return rows[0].AppliedAt.UTC(), nil
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
// head back: a stored head at h.Seq or later is kept. (A sealed
// transaction writes its head with its events, under the chain's lock:
// SealAudit.)
func (r *repo) SetAuditHead(ctx context.Context, h *keyport.AuditHead) error {
	at := dbTime(h.At)
	err := r.w.WithContext(ctx).Exec(setHeadSQL, h.Seq, h.Hash, h.MAC, at).Error
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
	const insert = `INSERT INTO outbox (topic, payload, created_at, sent_at) VALUES (?, ?, ?, ?)`
	var err error
	if r.dialect == dialectPostgres {
		err = r.scanRow(ctx, insert+` RETURNING id`, []any{row.Topic, row.Payload, row.CreatedAt, row.SentAt}, &row.ID)
	} else {
		// No RETURNING: a query's rows cost more than a statement's result.
		var res sql.Result
		if res, err = r.exec(ctx, insert, row.Topic, row.Payload, row.CreatedAt, row.SentAt); err == nil {
			row.ID, err = res.LastInsertId()
		}
	}
	if err != nil {
		return wrap("add outbox", err)
	}
	m.ID, m.CreatedAt, m.SentAt = row.ID, row.CreatedAt, row.SentAt
	return nil
}
