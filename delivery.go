package keyport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/keyport/keyport/gp"
)

// ---- Second-key scripts (flow 7) and their delivery (flow 8) ----

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
	Expect        *Expectation  `json:"expect,omitempty"`
	Result        *ScriptResult `json:"result,omitempty"`
	LastError     string        `json:"last_error,omitempty"`
	CreatedAt     time.Time     `json:"created_at"`
	UpdatedAt     time.Time     `json:"updated_at"`
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
		if p, err := j.secondKey(); err == nil {
			v.EID, v.AID, v.Expect = p.EID, p.AID, &p.Expect
		}
		if j.Result != "" {
			var r ScriptResult
			if json.Unmarshal([]byte(j.Result), &r) == nil {
				v.Result = &r
			}
		}
	}
	return v
}

func (j *Job) secondKey() (*SecondKeyPayload, error) {
	var p SecondKeyPayload
	if err := json.Unmarshal([]byte(j.Payload), &p); err != nil {
		return nil, fmt.Errorf("keyport: job %s payload: %w", j.Ref, err)
	}
	return &p, nil
}

// SubmitScript queues a provider's second-key script for one of its
// ASSIGNED domains (flow 7): the job, its audit event and the provider's
// "job.queued" webhook are written in one transaction. One script per
// domain at a time: ErrConflict while another is not final.
func (s *Service) SubmitScript(ctx context.Context, p Principal, eid EID, aid AID, req ScriptRequest) (*Job, error) {
	if p.ProviderID == "" {
		return nil, fmt.Errorf("%w: only the domain's provider submits its scripts", ErrForbidden)
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	payload, err := CheckScript(eid, aid, d.KVN, req)
	if err != nil {
		return nil, err
	}
	pj, _ := json.Marshal(payload)
	now := s.now().UTC()
	exp := now.Add(s.Delivery.expiry())
	j := &Job{Ref: NewID("job"), Kind: JobSecondKey, DomainID: d.ID, ModuleID: d.ModuleID, ProviderID: p.ProviderID,
		State: JobQueued, NextRunAt: now, ExpiresAt: &exp, Payload: string(pj)}
	hook, err := s.webhookURL(ctx, p.ProviderID)
	if err != nil {
		return nil, err
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		d, err := tx.GetDomain(ctx, eid, aid) // re-read inside the transaction
		if err != nil {
			return err
		}
		if d.State != Assigned || d.OwnerID != p.ProviderID {
			return fmt.Errorf("%w: domain is %s; a second-key script needs an ASSIGNED domain", ErrConflict, d.State)
		}
		active, err := tx.ListJobs(ctx, JobFilter{DomainID: d.ID, Kind: JobSecondKey, States: []JobState{JobQueued, JobSent}, Limit: 1})
		if err != nil {
			return err
		}
		if len(active) > 0 {
			return fmt.Errorf("%w: job %s for this domain is still %s", ErrConflict, active[0].Ref, active[0].State)
		}
		if err := tx.CreateJob(ctx, j); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, p.Actor(), "script.submit", domainObject(eid, aid),
			map[string]any{"job": j.Ref, "apdus": len(payload.APDUs), "expect": payload.Expect}); err != nil {
			return err
		}
		return s.notify(ctx, tx, j, d.State, hook)
	})
	if err != nil {
		return nil, err
	}
	s.log().Info("script queued", "job", j.Ref, "eid", eid, "aid", aid)
	return j, nil
}

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
	if !p.Admin && j.ProviderID != p.ProviderID || j.Kind != JobSecondKey {
		return nil, ErrNotFound
	}
	return j, nil
}

// ListJobs lists second-key jobs for the issuer (GET /api/v1/admin/jobs).
func (s *Service) ListJobs(ctx context.Context, p Principal, f JobFilter) ([]Job, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	f.Kind = JobSecondKey
	return s.Store.ListJobs(ctx, f)
}

// CancelJob cancels a QUEUED job. A SENT job cannot be cancelled: its script
// may be running on the module, and only the module's answer may end it.
func (s *Service) CancelJob(ctx context.Context, p Principal, ref string) (*Job, error) {
	j, err := s.GetJob(ctx, p, ref)
	if err != nil {
		return nil, err
	}
	if j.State != JobQueued {
		return nil, fmt.Errorf("%w: job is %s; only a QUEUED job can be cancelled", ErrConflict, j.State)
	}
	err = s.finish(ctx, j, JobCancelled, "", p.Actor(), "job.cancel", nil)
	if err != nil {
		return nil, err
	}
	return j, nil
}

// finish moves j (in state j.State) to a final state in one transaction
// with its audit event and webhook. fn, if set, runs in the transaction.
func (s *Service) finish(ctx context.Context, j *Job, to JobState, lastErr, actor, action string, fn func(tx Repo) (DomainState, error)) error {
	hook, err := s.webhookURL(ctx, j.ProviderID)
	if err != nil {
		return err
	}
	return s.finishIn(ctx, nil, hook, j, to, lastErr, actor, action, func(_ context.Context, tx Repo) (DomainState, error) {
		if fn == nil {
			return "", nil
		}
		return fn(tx)
	})
}

// finishIn is finish in group g's transactions (nil: a transaction of its
// own), telling hook (read by the caller before, as webhookURL does); fn
// gets the context to use in the transaction.
func (s *Service) finishIn(ctx context.Context, g *TxGroup, hook string, j *Job, to JobState, lastErr, actor, action string, fn func(ctx context.Context, tx Repo) (DomainState, error)) error {
	from, attempts := j.State, j.Attempts
	next := *j
	next.State, next.LastError = to, lastErr
	err := g.Tx(ctx, s.Store, func(ctx context.Context, tx Repo) error {
		if err := tx.UpdateJob(ctx, &next, from, attempts); err != nil {
			return err
		}
		ds, err := fn(ctx, tx)
		if err != nil {
			return err
		}
		p, _ := next.secondKey()
		obj := "job:" + next.Ref
		if p != nil {
			obj = domainObject(p.EID, p.AID)
		}
		if err := s.audit(ctx, tx, actor, action, obj, map[string]any{"job": next.Ref, "state": to, "cause": lastErr}); err != nil {
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

// ---- Admin sessions (GP Amendment B), called by cardlink ----

// AdminSession is one module's GP Amendment B admin session. It holds the
// module's lease: one session per module at a time, across replicas.
type AdminSession struct {
	ID       string
	EID      EID
	ModuleID int64
	ISDAID   AID
	// RenewAfter is when the lease is half spent: a session that is still
	// talking renews it then (OpenAdminSession with its ID), not on every
	// request.
	RenewAfter time.Time

	// sent is the job this session last sent, as the session left it, so
	// that recording its answer needs no read first. It is only a guess:
	// the answer's conditional update (state SENT, same attempts) fails if
	// the row moved on, and the row is then read.
	sent *Job
	// group commits the session's writes with other sessions' (nil: one
	// transaction each).
	group *TxGroup
}

// AdminModule is what an admin session needs of a module. Imported modules
// never change, so the admin server may keep it across sessions.
type AdminModule struct {
	ID     int64
	EID    EID
	ISDAID AID
}

// ParsePSKIdentity returns the module a TLS-PSK identity names: its EID.
func ParsePSKIdentity(identity string) (EID, error) { return ParseEID(identity) }

// LookupAdminModule returns the module a TLS-PSK identity names; unknown
// and malformed identities are ErrNotFound.
func (s *Service) LookupAdminModule(ctx context.Context, identity string) (*AdminModule, error) {
	eid, err := ParsePSKIdentity(identity)
	if err != nil {
		return nil, ErrNotFound
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	return &AdminModule{ID: m.ID, EID: m.EID, ISDAID: m.ISDAID}, nil
}

// AdminModulePSK returns the module's TLS-PSK, derived in the HSM, for the
// TLS layer's handshake only: callers must not keep it.
func (s *Service) AdminModulePSK(ctx context.Context, m *AdminModule) ([]byte, error) {
	if s.Link == nil {
		return nil, fmt.Errorf("%w: no link custody configured", ErrUnavailable)
	}
	return s.Link.ModulePSK(ctx, m.EID, m.ISDAID)
}

// ModulePSK returns the TLS-PSK of the module the identity names, for the
// TLS layer's handshake only. Unknown identities are ErrNotFound.
func (s *Service) ModulePSK(ctx context.Context, identity string) ([]byte, error) {
	m, err := s.LookupAdminModule(ctx, identity)
	if err != nil {
		return nil, err
	}
	return s.AdminModulePSK(ctx, m)
}

// OpenAdminSession takes or renews module m's lease for session id (""
// starts a new session). ErrConflict: another session holds the module.
// takeover breaks another session's lease first: for a module that resumes
// (X-Admin-Resume) a dialog whose Next-URI it never received, so that the
// broken session's lease does not lock it out.
func (s *Service) OpenAdminSession(ctx context.Context, m *AdminModule, id string, takeover bool) (*AdminSession, error) {
	if id == "" {
		id = NewID("ses")
	}
	now := s.now().UTC()
	err := s.Store.Tx(ctx, func(tx Repo) error {
		return s.takeLease(ctx, tx, m.ID, id, now, takeover)
	})
	if err != nil {
		return nil, err
	}
	return s.adminSession(m, id, now), nil
}

// takeLease is OpenAdminSession's part of a transaction: break the lease
// (takeover), take it for id, record the module's visit.
func (s *Service) takeLease(ctx context.Context, tx Repo, moduleID int64, id string, now time.Time, takeover bool) error {
	if takeover {
		if err := tx.ReleaseLease(ctx, moduleID, ""); err != nil {
			return err
		}
	}
	if err := tx.AcquireLease(ctx, moduleID, id, now, now.Add(s.Delivery.lease())); err != nil {
		return err
	}
	return tx.TouchModule(ctx, moduleID, now)
}

func (s *Service) adminSession(m *AdminModule, id string, now time.Time) *AdminSession {
	return &AdminSession{ID: id, EID: m.EID, ModuleID: m.ID, ISDAID: m.ISDAID, RenewAfter: now.Add(s.Delivery.lease() / 2)}
}

// StartAdminSession opens a new session for module m (OpenAdminSession
// with takeover) and returns its first script (NextScript with resumed);
// the delivery is nil when the module has nothing to run. When the
// module's oldest pending job is QUEUED, the lease is taken and the job
// marked SENT in one transaction: the job was read before it, and the
// conditional update (still QUEUED, same attempts) makes the transaction
// fail, and the general path decide, if anything moved it meanwhile. Jobs
// never become pending again, so a job still QUEUED then is still the
// module's oldest. ErrConflict: another session holds the module. With
// another error the session may be open (non-nil): its lease then expires
// or is released as usual.
//
// g, if not nil, commits the session's writes in StartAdminSession and
// AnswerScript together with other sessions' (TxGroup).
func (s *Service) StartAdminSession(ctx context.Context, g *TxGroup, m *AdminModule, takeover, resumed bool, opts gp.ScriptOptions) (*AdminSession, *Delivery, error) {
	id := NewID("ses")
	a, del, err := s.startQueued(ctx, g, m, id, takeover, opts)
	if a != nil || err != nil {
		return a, del, err
	}
	if a, err = s.OpenAdminSession(ctx, m, id, takeover); err != nil {
		return nil, nil, err
	}
	a.group = g
	del, err = s.NextScript(ctx, a, opts, resumed)
	return a, del, err
}

// startQueued is StartAdminSession's one-transaction path; all nil when it
// does not apply.
func (s *Service) startQueued(ctx context.Context, g *TxGroup, m *AdminModule, id string, takeover bool, opts gp.ScriptOptions) (*AdminSession, *Delivery, error) {
	// The job, its domain's state and the provider's webhook URL in one
	// read (NextScript reads them one by one).
	jobs, err := s.Store.PendingModuleJobs(ctx, m.ID, 1)
	now := s.now().UTC()
	if err != nil || len(jobs) == 0 || jobs[0].State != JobQueued || jobs[0].ExpiresAt != nil && now.After(*jobs[0].ExpiresAt) ||
		jobs[0].DomainState != Assigned {
		return nil, nil, nil
	}
	j, ds, hook := jobs[0].Job, jobs[0].DomainState, jobs[0].WebhookURL
	p, err := j.secondKey()
	if err != nil {
		return nil, nil, nil
	}
	next := j
	next.State = JobSent
	sent, _ := json.Marshal(ScriptResult{Session: id})
	next.Result = string(sent)
	del, err := delivery(&next, p, opts)
	if err != nil {
		return nil, nil, err
	}
	var leaseErr error
	err = g.Tx(ctx, s.Store, func(ctx context.Context, tx Repo) error {
		if leaseErr = s.takeLease(ctx, tx, m.ID, id, now, takeover); leaseErr != nil {
			return leaseErr
		}
		if err := tx.UpdateJob(ctx, &next, JobQueued, j.Attempts); err != nil {
			return err
		}
		return s.notify(ctx, tx, &next, ds, hook)
	})
	switch {
	case err == nil:
		a := s.adminSession(m, id, now)
		a.sent, a.group = &next, g
		return a, del, nil
	case leaseErr != nil || !errors.Is(err, ErrConflict):
		return nil, nil, err
	}
	return nil, nil, nil // the job moved: the general path reads it again
}

// CloseAdminSession releases the session's lease.
func (s *Service) CloseAdminSession(ctx context.Context, a *AdminSession) error {
	return s.Store.ReleaseLease(ctx, a.ModuleID, a.ID)
}

// Delivery is a script to send in an admin session.
type Delivery struct {
	Job *Job
	// Script is the TS 102 226 expanded command script (AE 80 … 00 00).
	Script []byte
	// Target is the X-Admin-Targeted-Application value: the SSD the
	// script is for, which is not the SD holding the PSK (GP Amd B).
	Target string
}

// NextScript returns the module's next script, oldest job first (per-module
// order), and marks its job SENT; nil when there is none. A job already
// SENT is sent again when it went out in this session or the module says
// it ran nothing (resumed: X-Admin-Resume on its first POST): the module
// never got it. A job SENT by an earlier session that a new dialog does not
// resume means the earlier dialog broke and never came back with the
// answer: it is FAILED ("answer-lost"), since only an answer may prove the
// key change.
func (s *Service) NextScript(ctx context.Context, a *AdminSession, opts gp.ScriptOptions, resumed bool) (*Delivery, error) {
	for range 16 {
		jobs, err := s.Store.ListJobs(ctx, JobFilter{ModuleID: a.ModuleID, Kind: JobSecondKey, States: []JobState{JobQueued, JobSent}, Limit: 1})
		if err != nil || len(jobs) == 0 {
			return nil, err
		}
		j := &jobs[0]
		now := s.now().UTC()
		switch {
		case j.State == JobSent && (resumed || sentIn(j, a.ID)):
			p, perr := j.secondKey()
			if perr != nil {
				return nil, perr
			}
			a.sent = j
			return delivery(j, p, opts)
		case j.State == JobSent:
			r, _ := json.Marshal(ScriptResult{ScriptStatus: "answer-lost", Cause: "the admin session broke after the script went out and the module never posted its answer"})
			j.Result = string(r)
			err = s.finish(ctx, j, JobFailed, "answer lost", "system", "second-key.failed", nil)
		case j.ExpiresAt != nil && now.After(*j.ExpiresAt):
			err = s.finish(ctx, j, JobExpired, "expired before the module opened a session", "system", "job.expire", nil)
		default:
			p, perr := j.secondKey()
			if perr != nil {
				return nil, perr
			}
			d, derr := s.domainOf(ctx, p)
			if derr != nil {
				return nil, derr
			}
			if d.State != Assigned {
				err = s.finish(ctx, j, JobFailed, fmt.Sprintf("domain is %s, not ASSIGNED", d.State), "system", "second-key.failed", nil)
				break
			}
			del, derr := delivery(j, p, opts)
			if derr != nil {
				return nil, derr
			}
			from := j.State
			j.State = JobSent
			sent, _ := json.Marshal(ScriptResult{Session: a.ID})
			j.Result = string(sent)
			hook, herr := s.webhookURL(ctx, j.ProviderID)
			if herr != nil {
				return nil, herr
			}
			err = s.Store.Tx(ctx, func(tx Repo) error {
				if err := tx.UpdateJob(ctx, j, from, j.Attempts); err != nil {
					return err
				}
				return s.notify(ctx, tx, j, d.State, hook)
			})
			if err == nil {
				a.sent = j
				return del, nil
			}
		}
		if err != nil && !errors.Is(err, ErrConflict) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: module %s: jobs keep changing under the session", ErrUnavailable, a.EID)
}

func sentIn(j *Job, session string) bool {
	var r ScriptResult
	return json.Unmarshal([]byte(j.Result), &r) == nil && r.Session == session
}

func (s *Service) domainOf(ctx context.Context, p *SecondKeyPayload) (*Domain, error) {
	return s.Store.GetDomain(ctx, p.EID, p.AID)
}

func delivery(j *Job, p *SecondKeyPayload, opts gp.ScriptOptions) (*Delivery, error) {
	cmds, err := p.Commands()
	if err != nil {
		return nil, err
	}
	target, err := gp.TargetedApplication(p.AID.Bytes())
	if err != nil {
		return nil, fmt.Errorf("keyport: job %s: %w", j.Ref, err)
	}
	return &Delivery{Job: j, Script: gp.EncodeCommandScript(cmds, opts), Target: target}, nil
}

// PendingScript returns the script of job ref again, for a module that
// resumes (X-Admin-Resume) without having run it; nil if the job is no
// longer SENT (its answer was recorded, or it ended otherwise).
func (s *Service) PendingScript(ctx context.Context, a *AdminSession, ref string, opts gp.ScriptOptions) (*Delivery, error) {
	j, err := s.moduleJob(ctx, a, ref)
	if err != nil || j.State != JobSent {
		return nil, err
	}
	p, err := j.secondKey()
	if err != nil {
		return nil, err
	}
	return delivery(j, p, opts)
}

func (s *Service) moduleJob(ctx context.Context, a *AdminSession, ref string) (*Job, error) {
	j, err := s.Store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if j.ModuleID != a.ModuleID || j.Kind != JobSecondKey {
		return nil, ErrNotFound
	}
	return j, nil
}

// ScriptAnswered records the module's answer to job ref's script and judges
// it (SecondKeyPayload.Judge). Confirmed: the job is DONE, the domain moves
// ASSIGNED → PERSONALIZED with its new KVN, KCVs and a reset sequence counter
// (AmdD 6.2.2.1), an audit event is chained and the provider is told, in one
// transaction. Otherwise the job is FAILED with the cause and SW, the domain
// stays ASSIGNED, and the counter the card reported is kept. An answer to a
// job that is already final changes nothing (a resumed session posting it
// twice), so a job completes exactly once. A body that does not parse is an
// *InvalidError and changes nothing.
func (s *Service) ScriptAnswered(ctx context.Context, a *AdminSession, ref, status string, body []byte) (*Job, error) {
	j, _, err := s.answer(ctx, a, ref, status, body, false)
	return j, err
}

// AnswerScript is ScriptAnswered for a session that ends when the module has
// nothing more to run: if no other job of the module is pending, the
// session's lease is released in the transaction that records the answer,
// and ended is true (the dialog's 204 follows without NextScript).
// Otherwise, or when the answer changed nothing, ended is false and the
// session goes on as after ScriptAnswered.
func (s *Service) AnswerScript(ctx context.Context, a *AdminSession, ref, status string, body []byte) (j *Job, ended bool, err error) {
	return s.answer(ctx, a, ref, status, body, true)
}

func (s *Service) answer(ctx context.Context, a *AdminSession, ref, status string, body []byte, mayEnd bool) (*Job, bool, error) {
	var j *Job
	if a.sent != nil && a.sent.Ref == ref {
		// This session sent it: the conditional update below checks that
		// it is still so.
		c := *a.sent
		j = &c
	} else {
		var err error
		if j, err = s.moduleJob(ctx, a, ref); err != nil {
			return nil, false, err
		}
	}
	if j.State.Final() {
		return j, false, nil
	}
	if j.State != JobSent {
		return nil, false, fmt.Errorf("%w: job %s was never sent", ErrConflict, ref)
	}
	p, err := j.secondKey()
	if err != nil {
		return nil, false, err
	}
	res, err := p.Judge(status, body)
	if err != nil {
		return nil, false, err
	}
	rj, _ := json.Marshal(res)
	j.Result = string(rj)
	hook, err := s.webhookURL(ctx, j.ProviderID)
	if err != nil {
		return nil, false, err
	}
	// The job is final by the time release runs, in the same transaction:
	// the lease goes only if no other job of the module is pending then.
	end := false
	release := func(ctx context.Context, tx Repo) error {
		if !mayEnd {
			return nil
		}
		var err error
		end, err = tx.ReleaseIdleLease(ctx, a.ModuleID, a.ID)
		return err
	}
	if res.Confirmed {
		// The transition is conditional (ASSIGNED → PERSONALIZED): the
		// domain needs no read first.
		err = s.finishIn(ctx, a.group, hook, j, JobDone, "", "module:"+string(a.EID), "second-key.confirmed", func(ctx context.Context, tx Repo) (DomainState, error) {
			if err := tx.TransitionDomain(ctx, j.DomainID, From(EventSecondKeyConfirmed), Personalized, nil); err != nil {
				return "", err
			}
			if err := tx.SetDomainKeys(ctx, j.DomainID, p.Expect.KVN, p.Expect.KCV, 0); err != nil {
				return "", err
			}
			return Personalized, release(ctx, tx)
		})
	} else {
		// The domain keeps its KVN: read it before the transaction.
		d, derr := s.Store.GetDomain(ctx, p.EID, p.AID)
		if derr != nil {
			return nil, false, derr
		}
		err = s.finishIn(ctx, a.group, hook, j, JobFailed, res.Cause, "module:"+string(a.EID), "second-key.failed", func(ctx context.Context, tx Repo) (DomainState, error) {
			if res.SequenceCounter != nil {
				if err := tx.SetDomainKeys(ctx, d.ID, d.KVN, nil, *res.SequenceCounter); err != nil {
					return "", err
				}
			}
			return d.State, release(ctx, tx)
		})
	}
	if errors.Is(err, ErrConflict) {
		// Another request recorded the answer first: report what it did.
		j, err := s.moduleJob(ctx, a, ref)
		return j, false, err
	}
	if err != nil {
		return nil, false, err
	}
	a.sent = nil
	s.log().Info("second-key answer", "job", j.Ref, "state", j.State, "cause", res.Cause)
	return j, end, nil
}

// ---- The delivery worker's steps, called by cardlink's dispatcher ----

// WakeDue wakes the modules of due QUEUED second-key jobs (one wake per
// module) through the Trigger, and schedules each job's next wake-up with
// backoff, whether the trigger reached the module or not: a woken module
// that never calls is woken again later. It returns how many jobs it saw.
func (s *Service) WakeDue(ctx context.Context, limit int) (int, error) {
	now := s.now().UTC()
	jobs, err := s.Store.ListJobs(ctx, JobFilter{Kind: JobSecondKey, States: []JobState{JobQueued}, DueBefore: now, Limit: limit})
	if err != nil {
		return 0, err
	}
	woken := map[int64]error{}
	for i := range jobs {
		j := &jobs[i]
		if j.ExpiresAt != nil && now.After(*j.ExpiresAt) {
			if err := s.finish(ctx, j, JobExpired, "expired before the module opened a session", "system", "job.expire", nil); err != nil && !errors.Is(err, ErrConflict) {
				return i, err
			}
			continue
		}
		werr, done := woken[j.ModuleID]
		if !done {
			p, err := j.secondKey()
			if err != nil {
				return i, err
			}
			werr = ErrUnreachable
			if s.Trigger != nil {
				werr = s.Trigger.Wake(ctx, p.EID)
			}
			woken[j.ModuleID] = werr
		}
		from, attempts := j.State, j.Attempts
		j.Attempts++
		j.NextRunAt = now.Add(s.Delivery.BackoffAfter(j.Attempts, rand.Float64()))
		j.LastError = ""
		if werr != nil {
			j.LastError = "wake-up: " + werr.Error()
		}
		if err := s.Store.UpdateJob(ctx, j, from, attempts); err != nil && !errors.Is(err, ErrConflict) {
			return i, err
		}
	}
	return len(jobs), nil
}

// ExpireSent fails SENT jobs past their expiry whose module never came back
// to answer (no resume within the expiry).
func (s *Service) ExpireSent(ctx context.Context, limit int) (int, error) {
	now := s.now().UTC()
	jobs, err := s.Store.ListJobs(ctx, JobFilter{Kind: JobSecondKey, States: []JobState{JobSent}, ExpiresBefore: now, Limit: limit})
	if err != nil {
		return 0, err
	}
	for i := range jobs {
		if err := s.finish(ctx, &jobs[i], JobExpired, "the module never answered the script", "system", "job.expire", nil); err != nil && !errors.Is(err, ErrConflict) {
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
	jobs, err := s.Store.ListJobs(ctx, JobFilter{ModuleID: m.ID, Kind: JobSecondKey, States: []JobState{JobQueued, JobSent}, Limit: 1})
	return len(jobs) > 0, err
}
