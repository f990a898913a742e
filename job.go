package keyport

import (
	"context"
	"errors"
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

	// AcquireLease gives holder the module's admin-session lease until
	// `until`, if nobody else holds an unexpired one at `now`; ErrConflict
	// otherwise. The holder renews with the same call.
	AcquireLease(ctx context.Context, moduleID int64, holder string, now, until time.Time) error
	// ReleaseLease ends holder's lease, if it holds it; holder "" breaks
	// the lease whoever holds it.
	ReleaseLease(ctx context.Context, moduleID int64, holder string) error

	// SetDomainKeys records the key set the card confirmed: KVN, KCVs (nil:
	// unchanged) and the SCP03 sequence counter.
	SetDomainKeys(ctx context.Context, domainID int64, kvn int, kcv map[KeyUsage]string, seq int) error
	// TouchModule sets the module's last admin-session time.
	TouchModule(ctx context.Context, moduleID int64, at time.Time) error
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
