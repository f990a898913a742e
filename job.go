package keyport

import (
	"context"
	"errors"
	"fmt"
	"strings"
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

// CardJobKinds are the kinds of job an admin session delivers to a module,
// in one per-module order (JobIssuer is in issuerjob.go, JobData in
// data.go).
var CardJobKinds = []JobKind{JobSecondKey, JobIssuer, JobData}

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
	// (webhook).
	Attempts int
	// Version counts the writes of the job since it was created: the
	// compare-and-set of JobRepo.UpdateJob, which a write that changes
	// neither state nor attempts (a failed trigger's cause) moves too.
	Version   int
	NextRunAt time.Time
	ExpiresAt *time.Time
	// SecondKey is what a JobSecondKey job delivers.
	SecondKey *SecondKeyPayload
	// Data is what a JobData job delivers.
	Data *DataPayload
	// Issuer is what a JobIssuer job runs (issuerjob.go).
	Issuer *IssuerPayload
	// Event is the body a JobWebhook job posts, a WebhookEvent in JSON,
	// kept byte for byte: its signature covers these bytes.
	Event []byte
	// Result is what the module answered to a card job; while the
	// job is SENT, only the session it went out in.
	Result    *ScriptResult
	LastError string
	CreatedAt time.Time
	UpdatedAt time.Time
}

// JobFilter selects jobs for ListJobs. Zero fields do not filter. Jobs come
// oldest first (by ID).
type JobFilter struct {
	Kind JobKind
	// Kinds, when set, selects any of these kinds (with Kind empty).
	Kinds         []JobKind
	States        []JobState
	ModuleID      int64
	DomainID      int64
	ProviderID    string
	DueBefore     time.Time // next_run_at <= DueBefore
	ExpiresBefore time.Time // expires_at < ExpiresBefore
	AfterID       int64
	Limit         int // 0 means 100
	// Newest takes the last Limit jobs f selects instead of the first,
	// for a list that shows what happened lately; they still come oldest
	// first.
	Newest bool

	// ExcludeProviders leaves out these providers' jobs.
	ExcludeProviders []string
}

// issuerJobs returns every issuer job of domain domainID in states (any
// state when none is given), oldest first (domainJobs).
func issuerJobs(ctx context.Context, repo Repo, domainID int64, states ...JobState) ([]Job, error) {
	return domainJobs(ctx, repo, domainID, JobIssuer, states...)
}

// domainJobs returns every job of kind of domain domainID in states (any
// state when none is given), oldest first, a page at a time. A domain's
// history has no bound (each access rule's change is an issuer job, each
// rotation a second-key job), and one page from the oldest would miss the
// newest: who locked the domain last, what its last release removed,
// whether its last rotation was proven.
func domainJobs(ctx context.Context, repo Repo, domainID int64, kind JobKind, states ...JobState) ([]Job, error) {
	const page = 500
	var all []Job
	var after int64
	for {
		jobs, err := repo.ListJobs(ctx, JobFilter{DomainID: domainID, Kind: kind, States: states, AfterID: after, Limit: page})
		if err != nil {
			return nil, err
		}
		all = append(all, jobs...)
		if len(jobs) < page {
			return all, nil
		}
		after = jobs[len(jobs)-1].ID
	}
}

// PendingJob is a pending second-key job with what its session needs to
// know besides: its domain's state and where its provider's events go.
type PendingJob struct {
	Job
	DomainState DomainState
	WebhookURL  string
}

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
	// DevLoopbackWebhooks lets providers set webhook URLs to loopback IP
	// addresses, plain http included: for a development receiver only
	// (CheckWebhookURL). The sender must allow loopback too.
	DevLoopbackWebhooks bool
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

// JobView is a job as its provider (and the issuer) sees it: GET
// /api/v1/jobs/{id} and every webhook event.
type JobView struct {
	ID            string        `json:"id"`
	Kind          JobKind       `json:"kind"`
	State         JobState      `json:"state"`
	EID           EID           `json:"eid,omitempty"`
	AID           AID           `json:"aid,omitempty"`
	Attempts      int           `json:"attempts"`
	NextAttemptAt *time.Time    `json:"next_attempt_at,omitempty"`
	ExpiresAt     *time.Time    `json:"expires_at,omitempty"`
	Operation     IssuerOp      `json:"operation,omitempty"`
	Expect        *Expectation  `json:"expect,omitempty"`
	Result        *ScriptResult `json:"result,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	CreatedAt     time.Time     `json:"created_at"`
	UpdatedAt     time.Time     `json:"updated_at"`
	// Sandbox marks a job of the provider sandbox.
	Sandbox bool `json:"sandbox,omitempty"`
}

// View returns the job as providers see it.
func (j *Job) View() JobView {
	v := JobView{ID: j.Ref, Kind: j.Kind, State: j.State, Attempts: j.Attempts, ExpiresAt: j.ExpiresAt,
		LastError: j.LastError, CreatedAt: j.CreatedAt, UpdatedAt: j.UpdatedAt}
	if j.State == JobQueued {
		t := j.NextRunAt
		v.NextAttemptAt = &t
	}
	if j.Kind == JobSecondKey {
		if p := j.SecondKey; p != nil {
			v.EID, v.AID, v.Expect = p.EID, p.AID, &p.Expect
		}
		v.Result = j.Result
		if p := j.SecondKey; p != nil && p.Verify {
			// The proof of a release is shown to the domain's former
			// owner: its verdict, never the new keys' KCVs or the card's
			// answers under them.
			v.Expect = nil
			if r := j.Result; r != nil {
				v.Result = &ScriptResult{ScriptStatus: r.ScriptStatus, SW: r.SW, Cause: r.Cause, Confirmed: r.Confirmed}
			}
		}
	}
	if j.Kind == JobData {
		if p := j.Data; p != nil {
			v.EID, v.AID = p.EID, p.AID
		}
		v.Result = j.Result
	}
	if p := j.Issuer; j.Kind == JobIssuer && p != nil {
		v.EID, v.AID, v.Operation, v.Result = p.EID, p.AID, p.Op, j.Result
	}
	return v
}

// cardScript is what a card job (CardJobKinds) sends: its domain, its
// APDUs, and the state its domain must be in for it to go out.
func (j *Job) cardScript() (eid EID, aid AID, apdus []string, needs DomainState, err error) {
	switch {
	case j.Kind == JobSecondKey && j.SecondKey != nil:
		return j.SecondKey.EID, j.SecondKey.AID, j.SecondKey.APDUs, j.SecondKey.DomainState(), nil
	case j.Kind == JobData && j.Data != nil && j.Data.Probe:
		return j.Data.EID, j.Data.AID, j.Data.APDUs, j.Data.ProbeState, nil
	case j.Kind == JobData && j.Data != nil:
		return j.Data.EID, j.Data.AID, j.Data.APDUs, Personalized, nil
	}
	return "", "", nil, "", fmt.Errorf("keyport: job %s (%s) carries no card script", j.Ref, j.Kind)
}

// isCardJob reports whether j is delivered to a module.
func (j *Job) isCardJob() bool {
	return j.Kind == JobSecondKey || j.Kind == JobData || j.Kind == JobIssuer
}

// failedAction is the audit action of a card job that failed.
func (j *Job) failedAction() string {
	if j.Kind == JobData && j.Data != nil && j.Data.Probe {
		return ActionCounterResync + ".failed"
	}
	if j.Kind == JobData {
		return "data.failed"
	}
	if j.SecondKey != nil {
		return j.SecondKey.action("failed")
	}
	return "second-key.failed"
}

// eid is the module a card job is for.
func (j *Job) eid() (EID, error) {
	if j.Kind == JobIssuer {
		p, err := j.issuer()
		if err != nil {
			return "", err
		}
		return p.EID, nil
	}
	eid, _, _, _, err := j.cardScript()
	return eid, err
}

// secondKey is the script of a second-key job; an error for a job of
// another kind, or one stored without its script.
func (j *Job) secondKey() (*SecondKeyPayload, error) {
	if j.Kind != JobSecondKey || j.SecondKey == nil {
		return nil, fmt.Errorf("keyport: job %s (%s) carries no second-key script", j.Ref, j.Kind)
	}
	return j.SecondKey, nil
}

// sentIn reports whether j went out in admin session id.
func (j *Job) sentIn(id string) bool { return j.Result != nil && j.Result.Session == id }

// expired reports whether j's expiry has passed at now.
func (j *Job) expired(now time.Time) bool { return j.ExpiresAt != nil && now.After(*j.ExpiresAt) }

func domainObject(eid EID, aid AID) string { return "domain:" + string(eid) + "/" + string(aid) }

// GetJob returns one of the caller's jobs (admins see all); other
// providers' jobs are ErrNotFound.
func (s *Service) GetJob(ctx context.Context, p Principal, ref string) (*Job, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	if !strings.HasPrefix(ref, "job_") || len(ref) > 64 {
		return nil, ErrNotFound
	}
	j, err := s.Store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if !p.Admin && j.ProviderID != p.ProviderID || !j.isCardJob() {
		return nil, ErrNotFound
	}
	return j, nil
}

// ListJobs lists second-key jobs for the issuer (GET /api/v1/admin/jobs).
func (s *Service) ListJobs(ctx context.Context, p Principal, f JobFilter) ([]Job, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	if f.Kind != JobSecondKey && f.Kind != JobIssuer && f.Kind != JobData {
		f.Kind, f.Kinds = "", CardJobKinds
	}
	return s.Store.ListJobs(ctx, f)
}

// CancelJob cancels a QUEUED job. A SENT job cannot be cancelled: its script
// may be running on the module, and only the module's answer may end it.
func (s *Service) CancelJob(ctx context.Context, p Principal, ref string) (*Job, error) {
	j, err := s.GetJob(ctx, p, ref)
	if err != nil {
		return nil, err
	}
	if err := s.cancelQueued(ctx, j, jobEnd{to: JobCancelled, actor: p.Actor(), action: "job.cancel"}); err != nil {
		return nil, err
	}
	return j, nil
}

// queuedTries bounds how often whileQueued reads a job again.
const queuedTries = 8

// whileQueued runs write, a compare-and-set of j (same state and attempts),
// while j is QUEUED. A QUEUED job is changed by more than one writer at
// once (the delivery worker counting a wake-up in its attempts, on any
// replica; an SMS receipt recording a failed trigger; a cancel): when write
// fails with ErrConflict the job is read again and, if it is still QUEUED,
// write runs again on what is stored now, so that neither change is lost.
// ErrConflict once the job is no longer QUEUED (a session took it, or it
// ended); j is then the job as last read. write must compute its change
// from *j each time it runs.
func (s *Service) whileQueued(ctx context.Context, j *Job, write func(j *Job) error) error {
	for try := 1; ; try++ {
		if j.State != JobQueued {
			return fmt.Errorf("%w: job is %s, no longer QUEUED", ErrConflict, j.State)
		}
		err := write(j)
		if !errors.Is(err, ErrConflict) || try == queuedTries {
			return err
		}
		fresh, err := s.Store.GetJob(ctx, j.Ref)
		if err != nil {
			return err
		}
		*j = *fresh
	}
}

// cancelQueued ends j with e (a cancel) while j is QUEUED (whileQueued).
func (s *Service) cancelQueued(ctx context.Context, j *Job, e jobEnd) error {
	if j.State != JobQueued {
		return fmt.Errorf("%w: job is %s; only a QUEUED job can be cancelled", ErrConflict, j.State)
	}
	err := s.whileQueued(ctx, j, func(j *Job) error { return s.finish(ctx, j, e) })
	if errors.Is(err, ErrConflict) && j.State != JobQueued {
		return fmt.Errorf("%w: job is %s; only a QUEUED job can be cancelled", ErrConflict, j.State)
	}
	return err
}

// jobEnd is how finish ends a job.
type jobEnd struct {
	to JobState
	// cause becomes the job's LastError.
	cause         string
	actor, action string // of the audit event
	// in, if set, runs in the transaction and returns the domain's state
	// for the webhook.
	in func(ctx context.Context, tx Repo) (DomainState, error)
	// verdict is an issuer job's end as its operation's Finish sees it;
	// nil means failed with cause.
	verdict *IssuerVerdict
	// hook, if set, is the provider's webhook URL as the caller read it
	// before (webhookURL; the session that sent the job); nil: finish
	// reads it.
	hook *string
}

// finish moves j from its state to e.to in one transaction with e.in, the
// audit event and the provider's webhook, conditionally (j still in its
// state with its attempts: ErrConflict otherwise, changing nothing). On
// success *j is the job as finished.
func (s *Service) finish(ctx context.Context, j *Job, e jobEnd) error {
	var hook string
	if e.hook != nil {
		hook = *e.hook
	} else {
		var err error
		if hook, err = s.webhookURL(ctx, j.ProviderID); err != nil {
			return err
		}
	}
	next := *j
	next.State, next.LastError = e.to, withSandboxNote(e.cause, s.sandboxNote(j))
	obj := "job:" + next.Ref
	if p := next.SecondKey; p != nil {
		obj = domainObject(p.EID, p.AID)
	}
	if p := next.Data; p != nil {
		obj = domainObject(p.EID, p.AID)
	}
	if next.Kind == JobIssuer {
		obj = issuerObject(&next)
		if e.in == nil {
			// Whatever ends an issuer job, its operation records what is true.
			v := IssuerVerdict{Outcome: IssuerFailed, Cause: e.cause}
			if v.Cause == "" {
				v.Cause = "the job was " + strings.ToLower(string(e.to))
			}
			if e.verdict != nil {
				v = *e.verdict
			}
			e.in = func(ctx context.Context, tx Repo) (DomainState, error) { return s.issuerFinish(ctx, tx, &next, v) }
		}
	}
	if p := next.Data; p != nil && p.Probe && e.in == nil {
		// A counter probe that ends unanswered (cancelled, expired, its
		// domain moved on) leaves the last counter known.
		e.in = func(ctx context.Context, tx Repo) (DomainState, error) {
			d, err := tx.GetDomain(ctx, p.EID, p.AID)
			if err != nil {
				return "", err
			}
			return d.State, tx.SetCounterUnverified(ctx, d.ID, false)
		}
	}
	err := s.commit(ctx, func(ctx context.Context, tx Repo) error {
		if err := tx.UpdateJob(ctx, &next, j.State, j.Attempts); err != nil {
			return err
		}
		var ds DomainState
		if e.in != nil {
			var err error
			if ds, err = e.in(ctx, tx); err != nil {
				return err
			}
		}
		if err := s.audit(ctx, tx, e.actor, e.action, obj, map[string]any{"job": next.Ref, "state": e.to, "cause": next.LastError}); err != nil {
			return err
		}
		return s.notify(ctx, tx, &next, ds, hook)
	})
	if err != nil {
		return err
	}
	*j = next
	return nil
}
