package keyport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/keyport/keyport/internal/wait"
)

// queueHook runs inside the transaction that queues a campaign target's job
// (createIssuerJob, queueProviderScript), after the job's insert: the
// campaign must still be RUNNING, the module under its cap, and the
// target still PENDING, which it then marks QUEUED with the job. A restarted
// or second runner that tries the target again finds it QUEUED and its
// transaction rolls back, so no target is queued twice.
type queueHook struct {
	fn   func(ctx context.Context, tx Repo, j *Job) error
	used bool
}

type queueHookKey struct{}

func withQueueHook(ctx context.Context, h *queueHook) context.Context {
	return context.WithValue(ctx, queueHookKey{}, h)
}

// runQueueHook runs the context's hook for the first job queued under it
// (a release queues the removal of the access rules after its own job:
// that one is not the target's).
func runQueueHook(ctx context.Context, tx Repo, j *Job) error {
	h, _ := ctx.Value(queueHookKey{}).(*queueHook)
	if h == nil || h.used {
		return nil
	}
	h.used = true
	return h.fn(ctx, tx, j)
}

var (
	errCampaignStopped = errors.New("keyport: the campaign is no longer running")
	errModuleBusy      = errors.New("keyport: the module has as many pending jobs as the campaign allows")
	errTargetTaken     = errors.New("keyport: the target was queued already")
	errNoSuchRule      = fmt.Errorf("%w: the domain has no such access rule", ErrNotFound)
)

// CampaignRunner queues campaigns' jobs: `keyport serve` runs one per
// replica. Each Step takes the lease of every campaign it works (two
// replicas never work one at once; the target rows make a double queueing
// impossible anyway), records the ends of its jobs in the targets, queues
// at most Rate×Tick jobs from its PENDING targets, a page at a time, and
// finishes it when no target is PENDING or QUEUED.
type CampaignRunner struct {
	Service *Service
	// Holder names this runner in leases (the replica); "" makes one up.
	Holder string
	// Tick is the time between steps (default 1 s); a campaign queues at
	// most Rate×Tick jobs a step.
	Tick time.Duration
	// Lease is how long a step's lease of a campaign lasts (default 30 s).
	Lease time.Duration

	once    sync.Once
	mu      sync.Mutex
	cursors map[string]int64 // campaign → last PENDING target tried in this pass
}

func (r *CampaignRunner) init() {
	r.once.Do(func() {
		if r.Holder == "" {
			r.Holder = NewID("run")
		}
		if r.Tick <= 0 {
			r.Tick = time.Second
		}
		if r.Lease <= 0 {
			r.Lease = 30 * time.Second
		}
		r.cursors = map[string]int64{}
	})
}

// Run steps until ctx ends.
func (r *CampaignRunner) Run(ctx context.Context) {
	r.init()
	wait.Every(ctx, r.Tick, func(ctx context.Context) error {
		_, err := r.Step(ctx)
		return err
	}, func(err error) { r.Service.log().Warn("campaign step", "err", err) })
}

// ends and pages bound one step's work on one campaign.
const (
	endPage     = 500
	endPages    = 40
	maxStepJobs = 5000
)

// Step deletes campaigns whose creation died (SweepCampaigns), works every
// unfinished campaign once and returns how many jobs it queued.
func (r *CampaignRunner) Step(ctx context.Context) (int, error) {
	r.init()
	var errs []error
	if _, err := r.Service.SweepCampaigns(ctx, 10); err != nil {
		errs = append(errs, fmt.Errorf("sweep: %w", err))
	}
	cs, err := r.Service.Store.RunnableCampaigns(ctx, 100)
	if err != nil {
		return 0, errors.Join(append(errs, err)...)
	}
	total := 0
	for i := range cs {
		n, err := r.step(ctx, &cs[i])
		total += n
		if err != nil {
			errs = append(errs, fmt.Errorf("campaign %s: %w", cs[i].ID, err))
		}
	}
	return total, errors.Join(errs...)
}

func (r *CampaignRunner) step(ctx context.Context, c *Campaign) (int, error) {
	s := r.Service
	now := s.now().UTC()
	ok, err := s.Store.ClaimCampaign(ctx, c.ID, r.Holder, now, now.Add(r.Lease))
	if err != nil || !ok {
		return 0, err
	}
	if err := r.recordEnds(ctx, c); err != nil {
		return 0, err
	}
	n := 0
	if c.State == CampaignRunning {
		if n, err = r.queue(ctx, c); err != nil {
			return n, err
		}
	}
	return n, r.maybeFinish(ctx, c)
}

// recordEnds gives QUEUED targets their job's end.
func (r *CampaignRunner) recordEnds(ctx context.Context, c *Campaign) error {
	s := r.Service
	var after int64
	for range endPages {
		ends, err := s.Store.CampaignEnds(ctx, c.ID, after, endPage)
		if err != nil {
			return err
		}
		for _, e := range ends {
			after = e.TargetID
			to, cause, detail := jobEndCause(e)
			if _, err := s.Store.MarkCampaignTarget(ctx, e.TargetID, TargetQueued, to, 0, "", cause, detail); err != nil {
				return err
			}
		}
		if len(ends) < endPage {
			return nil
		}
	}
	return nil
}

// jobEndCause is the target state and failure cause of a job's end: the
// status word that failed it when there is one, else a class.
func jobEndCause(e CampaignEnd) (TargetState, string, string) {
	detail := e.LastError
	if e.Result != nil && e.Result.Cause != "" {
		detail = e.Result.Cause
	}
	detail = clip(detail, 200)
	switch e.JobState {
	case JobDone:
		return TargetDone, "", ""
	case JobCancelled:
		return TargetCancelled, "cancelled", detail
	case JobExpired:
		return TargetFailed, "expired", detail
	}
	if e.Result != nil && e.Result.SW != "" {
		return TargetFailed, "SW " + strings.ToUpper(e.Result.SW), detail
	}
	if e.Result != nil && e.Result.ScriptStatus != "" && e.Result.ScriptStatus != "ok" {
		return TargetFailed, "script status " + clip(e.Result.ScriptStatus, 40), detail
	}
	return TargetFailed, "failed", detail
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// budget is how many jobs c may queue in one step.
func (r *CampaignRunner) budget(c *Campaign) int {
	n := int(float64(c.Rate) * r.Tick.Seconds())
	return min(max(n, 1), maxStepJobs)
}

// queue queues up to the step's budget of c's PENDING targets, in ID order
// from where this pass stands; a page that comes back short ends the pass
// (the next step starts again from the first PENDING target, which is
// where targets waiting for a busy module are).
func (r *CampaignRunner) queue(ctx context.Context, c *Campaign) (int, error) {
	s := r.Service
	r.mu.Lock()
	after := r.cursors[c.ID]
	r.mu.Unlock()
	want := r.budget(c)
	ts, err := s.Store.CampaignTargetsAfter(ctx, c.ID, TargetPending, after, want)
	if err != nil {
		return 0, err
	}
	queued := 0
	p := c.principal()
	for i := range ts {
		t := &ts[i]
		ok, err := s.queueTarget(ctx, c, p, t)
		if errors.Is(err, errCampaignStopped) {
			break
		}
		if err != nil {
			r.setCursor(c.ID, after)
			return queued, err
		}
		after = t.ID
		if ok {
			queued++
		}
	}
	if len(ts) < want {
		after = 0
	}
	r.setCursor(c.ID, after)
	return queued, nil
}

func (r *CampaignRunner) setCursor(id string, after int64) {
	r.mu.Lock()
	r.cursors[id] = after
	r.mu.Unlock()
}

// queueTarget queues t's job through the operation's own use case, with the
// queue hook in its transaction. It reports whether a job was queued; a
// refused target is marked REFUSED (or SKIPPED) with its cause. An error
// it returns leaves t PENDING (the database or the HSM cannot serve now).
func (s *Service) queueTarget(ctx context.Context, c *Campaign, p Principal, t *CampaignTarget) (bool, error) {
	h := &queueHook{fn: func(ctx context.Context, tx Repo, j *Job) error {
		st, err := tx.CampaignStateForQueue(ctx, c.ID)
		if err != nil {
			return err
		}
		if st != CampaignRunning {
			return errCampaignStopped
		}
		if err := tx.LockModuleForQueue(ctx, j.ModuleID); err != nil {
			return err
		}
		pending, err := tx.ListJobs(ctx, JobFilter{ModuleID: j.ModuleID, Kinds: CardJobKinds,
			States: []JobState{JobQueued, JobSent}, Limit: c.ModuleCap + 1})
		if err != nil {
			return err
		}
		if len(pending) > c.ModuleCap { // the new job counts
			return errModuleBusy
		}
		ok, err := tx.MarkCampaignTarget(ctx, t.ID, TargetPending, TargetQueued, j.ID, j.Ref, "", "")
		if err != nil {
			return err
		}
		if !ok {
			return errTargetTaken
		}
		return nil
	}}
	if c.ModuleCap > 0 && t.ModuleID != 0 {
		// Cheap pre-check outside the transaction: a busy module's target
		// costs no use case (the hook checks again, locked).
		pending, err := s.Store.ListJobs(ctx, JobFilter{ModuleID: t.ModuleID, Kinds: CardJobKinds,
			States: []JobState{JobQueued, JobSent}, Limit: c.ModuleCap})
		if err != nil {
			return false, err
		}
		if len(pending) >= c.ModuleCap {
			return false, s.busyTarget(ctx, c, t)
		}
	}
	err := s.campaignOp(withQueueHook(ctx, h), c, p, t)
	switch {
	case errors.Is(err, errCampaignStopped):
		return false, err
	case errors.Is(err, errTargetTaken):
		return false, nil
	case errors.Is(err, errModuleBusy):
		return false, s.busyTarget(ctx, c, t)
	case err == nil && h.used:
		return true, nil
	case err == nil:
		_, err = s.Store.MarkCampaignTarget(ctx, t.ID, TargetPending, TargetSkipped, 0, "", CauseNothing, CauseNothing)
		return false, err
	}
	if h.used {
		// The target's job went in; what failed after it (a release's
		// removal of the access rules) is the job's business.
		var fail error
		if errors.Is(err, ErrUnavailable) {
			fail = err
		}
		return true, fail
	}
	cause, transient := refusalCause(c, err)
	if transient {
		return false, err
	}
	_, merr := s.Store.MarkCampaignTarget(ctx, t.ID, TargetPending, TargetRefused, 0, "", cause, clip(err.Error(), 200))
	return false, merr
}

func (s *Service) busyTarget(ctx context.Context, c *Campaign, t *CampaignTarget) error {
	if c.Busy != BusySkip {
		return nil // it waits: the next pass tries it again
	}
	_, err := s.Store.MarkCampaignTarget(ctx, t.ID, TargetPending, TargetSkipped, 0, "", CauseModuleBusy, CauseModuleBusy)
	return err
}

// refusalCause is the cause of a use case's refusal; transient when the
// error is not the use case's judgement (the database, the HSM).
func refusalCause(c *Campaign, err error) (string, bool) {
	switch {
	case errors.Is(err, ErrNoISDKeys):
		return "imported module (no ISD keys)", false
	case errors.Is(err, errNoSuchRule):
		return "no such rule", false
	case errors.Is(err, ErrNotFound):
		if c.ProviderID != "" {
			return CauseNotYours, false
		}
		return CauseUnknown, false
	case errors.Is(err, ErrCounterResync):
		return "counter being re-read", false
	case errors.Is(err, ErrConflict):
		return "conflict", false
	case errors.Is(err, ErrForbidden):
		return "forbidden", false
	case errors.Is(err, ErrInvalid):
		return "invalid", false
	}
	return "", true
}

// campaignOp runs c's operation on t through the single-domain use case.
func (s *Service) campaignOp(ctx context.Context, c *Campaign, p Principal, t *CampaignTarget) error {
	if t.DomainID == 0 {
		return ErrNotFound
	}
	var err error
	switch c.Op {
	case CampaignLock, CampaignUnlock:
		_, err = s.LockDomain(ctx, p, t.EID, t.AID, c.Op == CampaignLock)
	case CampaignRelease:
		_, err = s.RequestRelease(ctx, p, t.EID, t.AID)
	case CampaignRuleAdd:
		var req AccessRuleRequest
		if err := json.Unmarshal(c.Params, &req); err != nil {
			return fmt.Errorf("%w: campaign %s: stored access rule: %v", ErrInvalid, c.ID, err)
		}
		_, _, err = s.RequestAccessRule(ctx, p, t.EID, t.AID, req)
	case CampaignRuleRemove:
		err = s.removeCampaignRule(ctx, c, p, t)
	case CampaignRotation:
		var req ScriptRequest
		if err := json.Unmarshal([]byte(t.Params), &req); err != nil {
			return fmt.Errorf("%w: target %d: stored script: %v", ErrInvalid, t.ID, err)
		}
		req.Rotate = true
		_, err = s.SubmitScript(ctx, p, t.EID, t.AID, req)
	case CampaignData:
		var req DataScriptRequest
		if err := json.Unmarshal([]byte(t.Params), &req); err != nil {
			return fmt.Errorf("%w: target %d: stored script: %v", ErrInvalid, t.ID, err)
		}
		_, err = s.SubmitDataScript(ctx, p, t.EID, t.AID, req)
	default:
		return fmt.Errorf("%w: campaign operation %q", ErrInvalid, c.Op)
	}
	return err
}

// removeCampaignRule deletes the domain's rule for the campaign's app (the
// same certificate hash and package).
func (s *Service) removeCampaignRule(ctx context.Context, c *Campaign, p Principal, t *CampaignTarget) error {
	var req AccessRuleRequest
	if err := json.Unmarshal(c.Params, &req); err != nil {
		return fmt.Errorf("%w: campaign %s: stored access rule: %v", ErrInvalid, c.ID, err)
	}
	want, err := req.Rule()
	if err != nil {
		return err
	}
	rules, err := s.ListAccessRules(ctx, p, t.EID, t.AID)
	if err != nil {
		return err
	}
	for _, r := range rules {
		if r.Hash == want.Hash && r.Package == want.Package {
			_, _, err := s.DeleteAccessRule(ctx, p, t.EID, t.AID, r.ID)
			return err
		}
	}
	return errNoSuchRule
}

// maybeFinish ends c once no target is PENDING or QUEUED: a RUNNING one
// becomes FINISHED; a CANCELLED one gets its finish time once its sent
// jobs ended. The "campaign.finish" audit event says how it ended.
func (r *CampaignRunner) maybeFinish(ctx context.Context, c *Campaign) error {
	if c.State == CampaignPaused {
		return nil
	}
	s := r.Service
	counts, err := s.Store.CampaignCounts(ctx, c.ID)
	if err != nil {
		return err
	}
	if counts[TargetPending] > 0 || counts[TargetQueued] > 0 {
		return nil
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		state := c.State
		if state == CampaignRunning {
			if err := tx.SetCampaignState(ctx, c.ID, []CampaignState{CampaignRunning}, CampaignFinished); err != nil {
				return err
			}
			state = CampaignFinished
		}
		ended, err := tx.EndCampaign(ctx, c.ID, s.now().UTC())
		if err != nil || !ended {
			return err
		}
		detail := map[string]any{"state": state}
		for st, n := range counts {
			detail[strings.ToLower(string(st))] = n
		}
		return s.audit(ctx, tx, "system", "campaign.finish", campaignObject(c.ID), detail)
	})
	if errors.Is(err, ErrConflict) {
		return nil // paused or cancelled meanwhile
	}
	if err == nil {
		s.log().Info("campaign finished", "campaign", c.ID)
		r.mu.Lock()
		delete(r.cursors, c.ID)
		r.mu.Unlock()
	}
	return err
}
