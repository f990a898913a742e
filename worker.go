package keyport

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"
)

// WebhookDelivery is one webhook to POST now.
type WebhookDelivery struct {
	Job       Job
	URL       string
	Body      []byte
	Signature string // value of WebhookSignatureHeader
}

// WebhookClaim selects the webhooks ClaimWebhooksFor takes.
type WebhookClaim struct {
	// Limit bounds the due jobs looked at (default 50).
	Limit int
	// Busy providers are left out: their earlier events are still being
	// sent, and a provider's events go out one at a time, in order.
	Busy []string
	// MaxProviders bounds how many providers' webhooks are taken (0: no
	// bound), PerProvider how many of each provider's (0: no bound). What is
	// left stays due, for a later claim.
	MaxProviders, PerProvider int
}

// ClaimWebhooks takes up to limit due webhook jobs for this process: each is
// claimed with a conditional update that also schedules its retry, so two
// replicas never send the same attempt, and a crash mid-send only delays it.
// Bodies are signed in the HSM.
func (s *Service) ClaimWebhooks(ctx context.Context, limit int) ([]WebhookDelivery, error) {
	return s.ClaimWebhooksFor(ctx, WebhookClaim{Limit: limit})
}

// ClaimWebhooksFor is ClaimWebhooks within c's bounds. Deliveries come
// oldest first, so each provider's in the order of its events.
func (s *Service) ClaimWebhooksFor(ctx context.Context, c WebhookClaim) ([]WebhookDelivery, error) {
	now := s.now().UTC()
	limit := c.Limit
	if limit <= 0 {
		limit = 50
	}
	jobs, err := s.Store.ListJobs(ctx, JobFilter{Kind: JobWebhook, States: []JobState{JobQueued}, DueBefore: now,
		ExcludeProviders: c.Busy, Limit: limit})
	if err != nil {
		return nil, err
	}
	taken := map[string]int{}
	full := map[string]bool{} // a provider whose next job waits: so do its later ones
	var out []WebhookDelivery
	for i := range jobs {
		j := jobs[i]
		if full[j.ProviderID] {
			continue
		}
		n, seen := taken[j.ProviderID]
		if (!seen && c.MaxProviders > 0 && len(taken) >= c.MaxProviders) || (c.PerProvider > 0 && n >= c.PerProvider) {
			full[j.ProviderID] = true
			continue
		}
		from, attempts := j.State, j.Attempts
		if j.Attempts >= s.Delivery.webhookAttempts() || j.expired(now) {
			j.State = JobFailed
			if j.LastError == "" {
				j.LastError = "gave up"
			}
			if err := s.Store.UpdateJob(ctx, &j, from, attempts); err != nil && !errors.Is(err, ErrConflict) {
				return out, err
			}
			continue
		}
		j.Attempts++
		j.NextRunAt = now.Add(s.Delivery.BackoffAfter(j.Attempts, rand.Float64()))
		if err := s.Store.UpdateJob(ctx, &j, from, attempts); err != nil {
			if errors.Is(err, ErrConflict) {
				full[j.ProviderID] = true // another replica took it: it sends this provider's events now
				continue
			}
			return out, err
		}
		prov, err := s.Store.GetProvider(ctx, j.ProviderID)
		if err != nil {
			return out, err
		}
		if prov.WebhookURL == "" {
			j2 := j
			j2.State, j2.LastError = JobCancelled, "the provider removed its webhook URL"
			if err := s.Store.UpdateJob(ctx, &j2, j.State, j.Attempts); err != nil && !errors.Is(err, ErrConflict) {
				return out, err
			}
			continue
		}
		sig, err := s.SignDetached(ctx, j.Event)
		if err != nil {
			return out, err // the job was rescheduled; it is retried later
		}
		taken[j.ProviderID]++
		out = append(out, WebhookDelivery{Job: j, URL: prov.WebhookURL, Body: j.Event, Signature: sig})
	}
	return out, nil
}

// WebhookHealth is how a provider's webhooks fare (JobRepo.WebhookHealth).
type WebhookHealth struct {
	ProviderID string
	Queued     int        // webhook jobs waiting to be delivered
	LastOK     *time.Time // when the newest delivered one was delivered
	LastFailed *time.Time // when the newest failure was recorded
	LastError  string     // that failure's error
}

// WebhookHealth returns every provider's webhook health (admins only).
func (s *Service) WebhookHealth(ctx context.Context, p Principal) ([]WebhookHealth, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.WebhookHealth(ctx)
}

// WebhookSent records a delivery's outcome: DONE on success; on failure
// the job stays QUEUED for the retry ClaimWebhooks scheduled, with the error.
func (s *Service) WebhookSent(ctx context.Context, d *WebhookDelivery, sendErr error) error {
	j := d.Job
	if sendErr == nil {
		s.metrics().WebhookDelivered(ResultOK)
	} else {
		s.metrics().WebhookDelivered(ResultError)
	}
	if sendErr == nil {
		j.State, j.LastError = JobDone, ""
	} else {
		j.LastError = sendErr.Error()
		if len(j.LastError) > 500 {
			j.LastError = j.LastError[:500]
		}
	}
	err := s.Store.UpdateJob(ctx, &j, d.Job.State, d.Job.Attempts)
	if errors.Is(err, ErrConflict) {
		return nil
	}
	return err
}

// WakeDue wakes the modules of due QUEUED card jobs (CardJobKinds) (one wake per
// module) through the Trigger, and schedules each job's next wake-up with
// backoff, whether the trigger reached the module or not: a woken module
// that never calls is woken again later. It returns how many jobs it saw.
func (s *Service) WakeDue(ctx context.Context, limit int) (int, error) {
	now := s.now().UTC()
	jobs, err := s.Store.ListJobs(ctx, JobFilter{Kinds: CardJobKinds, States: []JobState{JobQueued}, DueBefore: now, Limit: limit})
	if err != nil {
		return 0, err
	}
	woken := map[int64]error{}
	for i := range jobs {
		j := &jobs[i]
		if j.expired(now) {
			if err := s.finish(ctx, j, jobEnd{to: JobExpired, cause: "expired before the module opened a session", actor: "system", action: "job.expire"}); err != nil && !errors.Is(err, ErrConflict) {
				return i, err
			}
			continue
		}
		werr, done := woken[j.ModuleID]
		if !done {
			eid, err := j.eid()
			if err != nil {
				return i, err
			}
			werr = ErrUnreachable
			if s.Trigger != nil {
				werr = s.Trigger.Wake(ctx, eid)
			}
			woken[j.ModuleID] = werr
		}
		// The wake-up counts even when something else changed the job
		// meanwhile (a receipt of its trigger's failure, read again).
		err := s.whileQueued(ctx, j, func(j *Job) error {
			from, attempts := j.State, j.Attempts
			j.Attempts++
			j.NextRunAt = now.Add(s.Delivery.BackoffAfter(j.Attempts, rand.Float64()))
			if werr != nil {
				j.LastError = "wake-up: " + werr.Error()
			} else if !strings.HasPrefix(j.LastError, TriggerErrorPrefix) {
				j.LastError = ""
			}
			return s.Store.UpdateJob(ctx, j, from, attempts)
		})
		if err != nil && !errors.Is(err, ErrConflict) {
			return i, err
		}
	}
	return len(jobs), nil
}

// ExpireSent fails SENT jobs past their expiry whose module never came back
// to answer (no resume within the expiry).
func (s *Service) ExpireSent(ctx context.Context, limit int) (int, error) {
	now := s.now().UTC()
	jobs, err := s.Store.ListJobs(ctx, JobFilter{Kinds: CardJobKinds, States: []JobState{JobSent}, ExpiresBefore: now, Limit: limit})
	if err != nil {
		return 0, err
	}
	for i := range jobs {
		e := s.answerLost(&jobs[i], jobEnd{to: JobExpired, cause: "the module never answered the script", actor: "system", action: "job.expire"})
		if err := s.finish(ctx, &jobs[i], e); err != nil && !errors.Is(err, ErrConflict) {
			return i, err
		}
	}
	return len(jobs), nil
}

// ModuleHasWork reports whether the module has a job waiting for a session:
// what a waiting handset agent asks between wake-ups.
func (s *Service) ModuleHasWork(ctx context.Context, eid EID) (bool, error) {
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return false, err
	}
	jobs, err := s.Store.ListJobs(ctx, JobFilter{ModuleID: m.ID, Kinds: CardJobKinds, States: []JobState{JobQueued, JobSent}, Limit: 1})
	return len(jobs) > 0, err
}
