package store

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/keyport/keyport"
)

// pipelineClaims commits a batch of claims on PostgreSQL in one transaction
// sent without waiting for each statement, where statements one after
// another would take 5 round trips and one more per claim (each, on a
// machine whose cores the HSM keeps busy, a wait for the database's process
// to be scheduled). Usually it takes one round trip:
//
//	BEGIN; each claim's claimSQL; the audit lock; the seal; COMMIT
//
// chaining the claims' events onto the newest event this process saw
// committed (Store.head), with the head and checkpoints the HSM MACed
// before sending. The seal's statement fails, and so nothing is kept, if
// that guess is wrong (another process appended: the first event's seq is
// taken) or a claim did not win (its event's seq is read from its claim's
// row: sealStatements). Then, or without a guess, it takes two round trips:
//
//  1. BEGIN; each claim's claimSQL; the audit lock; the head read;
//  2. the seal of the claims that won; COMMIT.
//
// The read seals only onto a log that ends at its keyed head (sealable);
// the guess needs no such check, for it chains onto the hash this process
// committed: were the rows before rewritten, the new row would not chain to
// them, which verify reports for good.
//
// Either way the lock is taken after the claims' writes and held to the
// commit, as in SealAudit, so the chain follows commit order across
// replicas and the lock is never held while waiting for a row. A claim
// whose domain was taken gets ErrDomainTaken and writes nothing, and the
// others go on. pipelineClaims returns true, having written nothing, when
// a statement of the first round trip failed (a reused idempotency key,
// say): the caller then commits the batch another way, in which each claim
// gets its own result. Otherwise every claim's err is set.
func (s *Store) pipelineClaims(batch []*batched[claimOp]) (retry bool) {
	ctx := batch[0].op.ctx
	conn, err := s.pools[0].Conn(ctx)
	if err != nil {
		setErr(batch, wrap("claim", err))
		return false
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		done, err := s.guessedSeal(ctx, pc, batch)
		if !done {
			if err == nil {
				retry = s.readSeal(ctx, pc, batch)
			}
			if err != nil {
				setErr(batch, wrap("claim", err))
			}
		}
		// Whatever happened, the connection goes back to the pool idle, or
		// not at all (ErrBadConn makes database/sql close it).
		if err := idle(ctx, pc); err != nil {
			return driver.ErrBadConn
		}
		return nil
	})
	if err != nil && !retry {
		for _, o := range batch {
			if o.err == nil {
				o.err = wrap("claim", err)
			}
		}
	}
	return retry
}

// idle rolls back what pc has open, if anything.
func idle(ctx context.Context, pc *pgx.Conn) error {
	if pc.PgConn().TxStatus() == 'I' {
		return nil
	}
	if _, err := pc.Exec(ctx, "ROLLBACK"); err != nil {
		return err
	}
	if pc.PgConn().TxStatus() != 'I' {
		return errors.New("store: the connection is still in a transaction after ROLLBACK")
	}
	return nil
}

func setErr(batch []*batched[claimOp], err error) {
	for _, o := range batch {
		o.err = err
	}
}

// chainHead is an audit event's place in the chain.
type chainHead struct {
	seq  int64
	hash []byte
}

// committedHead notes h, an event just committed, as the newest one this
// process saw, unless a newer one was noted already.
func (s *Store) committedHead(h *chainHead) {
	if h == nil {
		return
	}
	for {
		cur := s.head.Load()
		if cur != nil && cur.seq >= h.seq {
			return
		}
		if s.head.CompareAndSwap(cur, h) {
			return
		}
	}
}

// guessSkip is how many batches read the head after a guess was wrong
// (another process appends too, or claims lose races, so the next guess
// would likely be wrong as well).
const guessSkip = 8

// guessedSeal tries the one-round-trip commit. done reports that every
// claim's err is set (committed, or failed for good); err, with done
// false, that the connection failed and nothing is known. Otherwise the
// batch is untouched and pc idle or in a failed transaction.
func (s *Store) guessedSeal(ctx context.Context, pc *pgx.Conn, batch []*batched[claimOp]) (done bool, err error) {
	head := s.head.Load()
	if head == nil || s.skipGuess.Load() > 0 {
		if head != nil {
			s.skipGuess.Add(-1)
		}
		return false, nil
	}
	b := &pgx.Batch{}
	claims, results := queueClaims(b, batch)
	ids := make([]string, len(batch))
	for i, c := range claims {
		if c == nil {
			return false, nil // the two-round-trip path gives it its error
		}
		ids[i] = c.id
	}
	chained := chain(head.seq, head.hash, auditEvents(batch))
	h, cps, err := batch[0].op.keys(chained)
	if err != nil {
		setErr(batch, err)
		return true, nil
	}
	stmt, args := sealStatements(chained, cps, h, ids...).one()
	b.Queue("SELECT pg_advisory_xact_lock($1)", int64(auditLockKey))
	b.Queue(pgStatements.of(stmt), args...)
	b.Queue("COMMIT")
	start := time.Now()
	res := pc.SendBatch(ctx, b)
	err = readClaims(res, batch, claims, results)
	for range 2 { // the lock, the seal
		if err == nil {
			_, err = res.Exec()
		}
	}
	if err == nil {
		err = readCommit(res)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	s.observe("pipeline", start)
	if err != nil {
		s.guessMisses.Add(1)
		s.skipGuess.Store(guessSkip)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) && pc.IsClosed() {
			return false, err // the connection, not the guess, failed
		}
		return false, nil
	}
	for i, o := range batch {
		o.err = results[i] // nil: had one failed, the seal would have
	}
	s.sealed(batch, chained)
	s.guessHits.Add(1)
	return true, nil
}

// readSeal is the two-round-trip commit: the head is read under the lock.
// It returns true when a statement of the first round trip failed.
func (s *Store) readSeal(ctx context.Context, pc *pgx.Conn, batch []*batched[claimOp]) (retry bool) {
	if err := idle(ctx, pc); err != nil {
		setErr(batch, wrap("claim", err))
		return false
	}
	b := &pgx.Batch{}
	claims, results := queueClaims(b, batch)
	b.Queue("SELECT pg_advisory_xact_lock($1)", int64(auditLockKey))
	b.Queue(sealEndSQLNumbered, time.Time{})
	start := time.Now()
	res := pc.SendBatch(ctx, b)
	err := readClaims(res, batch, claims, results)
	var end sealEnd
	if err == nil {
		if _, err = res.Exec(); err == nil {
			if err = res.QueryRow().Scan(end.dest()...); errors.Is(err, pgx.ErrNoRows) {
				end, err = sealEnd{}, nil
			}
		}
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	s.observe("pipeline", start)
	if err != nil {
		return true // nothing of the batch is kept; the caller tries again claim by claim
	}
	var won []*batched[claimOp]
	for i, o := range batch {
		if o.err = results[i]; o.err == nil {
			won = append(won, o)
		}
	}
	if len(won) == 0 {
		return false // the caller rolls the transaction back
	}
	if err := end.sealable(); err != nil {
		setErr(won, err)
		return false // the caller rolls the transaction back
	}
	chained := chain(end.seq, end.hash, auditEvents(won))
	h, cps, err := won[0].op.keys(chained)
	if err != nil {
		setErr(won, err)
		return false
	}
	stmt, args := sealStatements(chained, cps, h).one()
	b = &pgx.Batch{}
	b.Queue(pgStatements.of(stmt), args...)
	b.Queue("COMMIT")
	start = time.Now()
	res = pc.SendBatch(ctx, b)
	if _, err = res.Exec(); err == nil {
		err = readCommit(res)
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	s.observe("pipeline", start)
	if err != nil {
		setErr(won, wrap("claim", err))
		return false
	}
	s.sealed(won, chained)
	return false
}

// queueClaims queues BEGIN and the claims' statements on b. claims[i] is
// batch[i]'s arguments, nil when newPGClaim refused it; results[i] then
// holds that error, for readClaims to fill in the others'.
func queueClaims(b *pgx.Batch, batch []*batched[claimOp]) (claims []*pgClaim, results []error) {
	claims, results = make([]*pgClaim, len(batch)), make([]error, len(batch))
	b.Queue("BEGIN")
	for i, o := range batch {
		if claims[i], results[i] = newPGClaim(o.op.w.Claim, o.op.w.From, o.op.w.Outbox, o.op.w.Token); results[i] == nil {
			b.Queue(claimSQLNumbered, claims[i].args...)
		}
	}
	return claims, results
}

// readClaims reads the answers to what queueClaims queued: results[i] is
// claim i's own outcome (nil: it won; ErrDomainTaken, ErrNotFound). The
// error is the first statement that failed; nothing after it is read.
func readClaims(res pgx.BatchResults, batch []*batched[claimOp], claims []*pgClaim, results []error) error {
	if _, err := res.Exec(); err != nil {
		return err
	}
	for i, c := range claims {
		if c == nil {
			continue
		}
		var a claimAnswer
		if err := res.QueryRow().Scan(a.dest()...); err != nil {
			return err
		}
		results[i] = c.result(batch[i].op.w.Claim, batch[i].op.w.Outbox, a)
	}
	return nil
}

// readCommit reads the answer to a queued COMMIT: an error unless the
// transaction committed (in a failed one, COMMIT answers ROLLBACK).
func readCommit(res pgx.BatchResults) error {
	ct, err := res.Exec()
	if err == nil && ct.String() != "COMMIT" {
		err = fmt.Errorf("the commit ended in %s", ct.String())
	}
	return err
}

// auditEvents is the claims' audit events, in order.
func auditEvents(ops []*batched[claimOp]) []*keyport.AuditEvent {
	events := make([]*keyport.AuditEvent, len(ops))
	for i, o := range ops {
		events[i] = o.op.w.Audit
	}
	return events
}

// sealed gives the claims their events as chained and committed, and
// notes the last as the newest this process saw.
func (s *Store) sealed(ops []*batched[claimOp], chained []keyport.AuditEvent) {
	for i, o := range ops {
		*o.op.w.Audit = chained[i]
	}
	last := chained[len(chained)-1]
	s.committedHead(&chainHead{seq: last.Seq, hash: last.Hash})
}

// sealEndSQLNumbered is sealEndSQL with PostgreSQL's numbered parameters.
var sealEndSQLNumbered = numbered(sealEndSQL)

// claimSQLNumbered is claimSQL with PostgreSQL's numbered parameters, as
// pgx takes them.
var claimSQLNumbered = numbered(claimSQL)
