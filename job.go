package keyport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// JobKind says what a card-link job delivers.
type JobKind string

// Job kinds.
const (
	// JobSecondKey delivers a provider's precomputed SCP03 script that
	// replaces the first keys with its own (DESIGN.md flows 7 and 8).
	JobSecondKey JobKind = "second-key"
	// JobWebhook delivers one signed event to a provider's webhook URL.
	JobWebhook JobKind = "webhook"
)

// JobState is where a job is in its delivery.
//
//	QUEUED --session opens--> SENT --module answers as expected--> DONE
//	  |                        |  \--module answers otherwise-----> FAILED
//	  |                        \----answer lost (new dialog)------> FAILED
//	  +--cancel--> CANCELLED   +--expires_at passes--> EXPIRED
type JobState string

// The job states.
const (
	JobQueued    JobState = "QUEUED"
	JobSent      JobState = "SENT"
	JobDone      JobState = "DONE"
	JobFailed    JobState = "FAILED"
	JobCancelled JobState = "CANCELLED"
	JobExpired   JobState = "EXPIRED"
)

// Final reports whether the job can change no more.
func (s JobState) Final() bool {
	return s == JobDone || s == JobFailed || s == JobCancelled || s == JobExpired
}

// Job is one delivery: a script for a module (JobSecondKey) or an event for
// a provider (JobWebhook). Jobs live in the database, so that any replica
// can serve any module (DESIGN.md, "Scale").
type Job struct {
	ID         int64  // row id: orders a module's jobs
	Ref        string // public identifier, "job_…"
	Kind       JobKind
	DomainID   int64 // 0 for webhooks
	ModuleID   int64 // 0 for webhooks
	ProviderID string
	State      JobState
	// Attempts counts wake-ups sent (second-key) or deliveries tried
	// (webhook); it is also the row's version for optimistic updates.
	Attempts  int
	NextRunAt time.Time
	ExpiresAt *time.Time
	// Payload is JSON: a SecondKeyPayload or a WebhookPayload.
	Payload string
	// Result is JSON: a ScriptResult for second-key jobs.
	Result    string
	LastError string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// JobFilter selects jobs for ListJobs. Zero fields do not filter. Jobs come
// oldest first (by ID).
type JobFilter struct {
	Kind          JobKind
	States        []JobState
	ModuleID      int64
	DomainID      int64
	ProviderID    string
	DueBefore     time.Time // next_run_at <= DueBefore
	ExpiresBefore time.Time // expires_at < ExpiresBefore
	AfterID       int64
	Limit         int // 0 means 100
}

// JobRepo is the storage card-link delivery needs; Repo embeds it.
type JobRepo interface {
	// CreateJob inserts j and sets its ID, CreatedAt and UpdatedAt.
	CreateJob(ctx context.Context, j *Job) error
	// GetJob returns the job with the public reference; ErrNotFound if none.
	GetJob(ctx context.Context, ref string) (*Job, error)
	// ListJobs returns the jobs f selects, oldest first.
	ListJobs(ctx context.Context, f JobFilter) ([]Job, error)
	// UpdateJob writes j's state, attempts, next run, result and last
	// error, conditionally: only if the row is still in state `from` with
	// `fromAttempts` attempts. Otherwise it changes nothing and fails with
	// ErrConflict (another replica or session moved the job first).
	UpdateJob(ctx context.Context, j *Job, from JobState, fromAttempts int) error

	// PendingModuleJobs returns up to limit of the module's second-key jobs
	// that are QUEUED or SENT, oldest first, each with its domain's state
	// and its provider's webhook URL: what an admin session reads before
	// it writes, in one query.
	PendingModuleJobs(ctx context.Context, moduleID int64, limit int) ([]PendingJob, error)

	// AcquireLease gives holder the module's admin-session lease until
	// `until`, if nobody else holds an unexpired one at `now`; ErrConflict
	// otherwise. The holder renews with the same call.
	AcquireLease(ctx context.Context, moduleID int64, holder string, now, until time.Time) error
	// ReleaseLease ends holder's lease, if it holds it; holder "" breaks
	// the lease whoever holds it.
	ReleaseLease(ctx context.Context, moduleID int64, holder string) error
	// ReleaseIdleLease ends holder's lease only if the module has no
	// second-key job QUEUED or SENT, and reports whether it did: in the
	// transaction that records a session's last answer, the session ends
	// exactly when there is nothing more to send.
	ReleaseIdleLease(ctx context.Context, moduleID int64, holder string) (bool, error)

	// SetDomainKeys records the key set the card confirmed: KVN, KCVs (nil:
	// unchanged) and the SCP03 sequence counter.
	SetDomainKeys(ctx context.Context, domainID int64, kvn int, kcv map[KeyUsage]string, seq int) error
	// TouchModule sets the module's last admin-session time.
	TouchModule(ctx context.Context, moduleID int64, at time.Time) error
}

// PendingJob is a pending second-key job with what its session needs to
// know besides: its domain's state and where its provider's events go.
type PendingJob struct {
	Job
	DomainState DomainState
	WebhookURL  string
}

// LinkCustody is the HSM part of card-link: each module's TLS-PSK (KVN 0x40,
// key type '85'), derived in the HSM and handed only to the TLS layer.
type LinkCustody interface {
	ModulePSK(ctx context.Context, eid EID, isdAID AID) ([]byte, error)
}

// Trigger wakes a module so that it opens an admin session (GP Amendment B:
// "administration session triggering"; an SMS in the field). Wake returns
// ErrUnreachable when the module cannot be told now; the job is retried
// with backoff.
type Trigger interface {
	Wake(ctx context.Context, eid EID) error
}

// ErrUnreachable: a push trigger could not reach the module.
var ErrUnreachable = errors.New("module not reachable")

// DeliveryPolicy tunes card-link delivery; zero fields take the defaults.
type DeliveryPolicy struct {
	// Expiry is how long a second-key job waits for its module (default 7 days).
	Expiry time.Duration
	// Backoff is the first retry delay (default 30 s); each attempt doubles
	// it up to MaxBackoff (default 1 h), with ±20 % jitter.
	Backoff, MaxBackoff time.Duration
	// Lease is how long an admin session holds its module without a
	// request (default 2 min): a dropped session blocks others that long,
	// and may resume within it.
	Lease time.Duration
	// WebhookAttempts bounds webhook deliveries (default 12).
	WebhookAttempts int
}

func (p DeliveryPolicy) expiry() time.Duration { return orDefault(p.Expiry, 7*24*time.Hour) }
func (p DeliveryPolicy) lease() time.Duration  { return orDefault(p.Lease, 2*time.Minute) }
func (p DeliveryPolicy) webhookAttempts() int {
	if p.WebhookAttempts <= 0 {
		return 12
	}
	return p.WebhookAttempts
}

// BackoffAfter is the delay before retry number attempts (1-based):
// Backoff·2^(attempts-1), capped at MaxBackoff, ±20 % jitter from jitter in
// [0,1).
func (p DeliveryPolicy) BackoffAfter(attempts int, jitter float64) time.Duration {
	d := orDefault(p.Backoff, 30*time.Second)
	maxD := orDefault(p.MaxBackoff, time.Hour)
	for i := 1; i < attempts && d < maxD; i++ {
		d *= 2
	}
	d = min(d, maxD)
	return time.Duration(float64(d) * (0.8 + 0.4*jitter))
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// TxGroup commits the write transactions of concurrent admin sessions
// together (group commit). On SQLite all writes queue for one connection,
// and each transaction of its own pays BEGIN, COMMIT and the hand-over of
// the connection to the next goroutine; under a thousand sessions that
// hand-over, not the writing, bounds the rate. A TxGroup runs the
// transactions that arrive while one is being committed as one database
// transaction, each under a savepoint of its own: a function's error rolls
// back what that function did and nothing else, exactly as its own
// transaction would have, and every caller returns only once the commit
// that holds its writes is done, so nothing is reported that is not
// durably stored. If the commit fails, every caller of the group gets the
// error and none of their writes happened.
//
// The functions run one after another on the group's transaction, with a
// context that is not cancelled when a caller's is (interrupting one
// statement could abort the transaction of all of them); they must use the
// context and Repo they are given. A function may run twice: the group
// first runs them all without savepoints (two statements fewer each), and
// if one fails, rolls that attempt back whole and runs them again, each
// under its own savepoint. Only what a committed run wrote counts, so the
// functions must keep nothing from a run but what they return.
type TxGroup struct {
	store Store
	// Max bounds the functions committed together (default 64), so that
	// one commit does not hold the database, or keep its first caller
	// waiting, for long.
	Max int

	mu    sync.Mutex
	queue []*groupOp
	busy  bool // a leader is running a group
}

type groupOp struct {
	ctx context.Context
	fn  func(ctx context.Context, tx Repo) error
	err error
	// wake says true: lead the next group (this op is its first), or
	// false: this op's group is committed (or failed), err is its result.
	wake chan bool
}

// NewTxGroup returns a group committing into st.
func NewTxGroup(st Store) *TxGroup { return &TxGroup{store: st} }

// savepointer is the store side of a TxGroup (store.repo in a transaction).
type savepointer interface {
	Savepoint(ctx context.Context, fn func(tx Repo) error) (fnErr, err error)
}

// Tx runs fn as Store.Tx would, possibly in one database transaction with
// other callers' functions. A nil group is Store.Tx itself.
func (g *TxGroup) Tx(ctx context.Context, st Store, fn func(ctx context.Context, tx Repo) error) error {
	if g == nil {
		return st.Tx(ctx, func(tx Repo) error { return fn(ctx, tx) })
	}
	op := &groupOp{ctx: context.WithoutCancel(ctx), fn: recoverTo(fn), wake: make(chan bool, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, op)
	lead := !g.busy
	g.busy = true
	g.mu.Unlock()
	if !lead && !<-op.wake {
		return op.err
	}
	// Leader: op is first in the queue (it arrived when no group ran, or
	// the previous leader handed over to it). Commit a group, then hand
	// over to the first caller left waiting, if any.
	limit := g.Max
	if limit <= 0 {
		limit = 64
	}
	g.mu.Lock()
	n := min(len(g.queue), limit)
	batch := g.queue[:n:n]
	g.queue = append([]*groupOp(nil), g.queue[n:]...)
	g.mu.Unlock()
	g.commit(batch)
	g.mu.Lock()
	if len(g.queue) > 0 {
		g.queue[0].wake <- true
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	for _, o := range batch[1:] {
		o.wake <- false
	}
	return op.err
}

// recoverTo makes a panic in fn that function's error: one caller's bug must
// not leave the other callers of its group waiting for a hand-over that
// never comes.
func recoverTo(fn func(ctx context.Context, tx Repo) error) func(ctx context.Context, tx Repo) error {
	return func(ctx context.Context, tx Repo) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("keyport: panic in a grouped transaction: %v", r)
			}
		}()
		return fn(ctx, tx)
	}
}

// errGroupRetry rolls back a group's first run when one function failed.
var errGroupRetry = errors.New("keyport: a function of the group failed; run again with savepoints")

// commit runs the group's functions in one transaction.
func (g *TxGroup) commit(batch []*groupOp) {
	run := func(o *groupOp) error {
		return g.store.Tx(o.ctx, func(tx Repo) error { return o.fn(o.ctx, tx) })
	}
	if len(batch) == 1 {
		batch[0].err = run(batch[0])
		return
	}
	// The usual case: no function fails, and none needs a savepoint.
	err := g.store.Tx(batch[0].ctx, func(tx Repo) error {
		for _, o := range batch {
			if o.err = o.fn(o.ctx, tx); o.err != nil {
				return errGroupRetry
			}
		}
		return nil
	})
	if err == nil {
		return
	}
	for _, o := range batch {
		o.err = nil
	}
	if err != errGroupRetry { // begin or commit failed: nothing happened
		for _, o := range batch {
			o.err = err
		}
		return
	}
	var alone []*groupOp // a store without savepoints: one transaction each
	in := batch
	err = g.store.Tx(batch[0].ctx, func(tx Repo) error {
		sp, ok := tx.(savepointer)
		if !ok {
			in, alone = batch[:1], batch[1:]
			batch[0].err = batch[0].fn(batch[0].ctx, tx)
			return batch[0].err
		}
		for _, o := range batch {
			fnErr, err := sp.Savepoint(o.ctx, func(tx Repo) error { return o.fn(o.ctx, tx) })
			if err != nil {
				return err
			}
			o.err = fnErr
		}
		return nil
	})
	if err != nil {
		for _, o := range in {
			if o.err == nil {
				o.err = err
			}
		}
	}
	for _, o := range alone {
		o.err = run(o)
	}
}
