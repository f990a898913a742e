package keyport

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keyport/keyport/gp"
)

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
	// sentHook is where the provider's events went when this session
	// sent the job sentHook.ref (webhookURL, read then). The job's end
	// goes there too: a URL read before the answer's transaction, as
	// finish would read it.
	sentHook *sentHook
}

type sentHook struct{ ref, url string }

// AdminModule is what an admin session needs of a module. Imported modules
// never change, so the admin server may keep it across sessions.
type AdminModule struct {
	ID     int64
	EID    EID
	ISDAID AID
	// PSK is the module's sealed TLS-PSK (Module.PSK).
	PSK []byte
}

// LookupAdminModule returns the module a TLS-PSK identity (its EID) names;
// unknown and malformed identities are ErrNotFound.
func (s *Service) LookupAdminModule(ctx context.Context, identity string) (*AdminModule, error) {
	eid, err := ParseEID(identity)
	if err != nil {
		return nil, ErrNotFound
	}
	return s.Store.GetAdminModule(ctx, eid)
}

// AdminModulePSK returns the module's TLS-PSK, unsealed by the HSM, for the
// TLS layer's handshake only: callers must not keep it.
func (s *Service) AdminModulePSK(ctx context.Context, m *AdminModule) ([]byte, error) {
	return s.modulePSK(ctx, m.EID, m.PSK)
}

// NewDecoyPSK seals a fresh PSK for a module that does not exist, so that the
// admin server can spend on an unknown identity's handshake the HSM work a
// known one costs.
func (s *Service) NewDecoyPSK(ctx context.Context, eid EID) ([]byte, error) {
	link := s.link()
	if link == nil {
		return nil, fmt.Errorf("%w: no link custody configured", ErrUnavailable)
	}
	return link.NewModulePSK(ctx, eid)
}

// modulePSK unseals a module's PSK.
func (s *Service) modulePSK(ctx context.Context, eid EID, sealed []byte) ([]byte, error) {
	link := s.link()
	if link == nil {
		return nil, fmt.Errorf("%w: no link custody configured", ErrUnavailable)
	}
	if len(sealed) == 0 {
		return nil, fmt.Errorf("%w: module %s has no TLS-PSK: a module stored before keys were wrapped at rest gets one from `keyport hsm init`", ErrUnavailable, eid)
	}
	return link.ModulePSK(ctx, eid, sealed)
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
	err := s.commit(ctx, func(ctx context.Context, tx Repo) error {
		return s.takeLease(ctx, tx, m.ID, id, now, takeover)
	})
	if err != nil {
		return nil, err
	}
	return s.adminSession(m, id, now), nil
}

// takeLease is OpenAdminSession's part of a transaction: break the lease
// (takeover), take it for id (which records the module's visit).
func (s *Service) takeLease(ctx context.Context, tx Repo, moduleID int64, id string, now time.Time, takeover bool) error {
	if takeover {
		if err := tx.ReleaseLease(ctx, moduleID, ""); err != nil {
			return err
		}
	}
	return tx.AcquireLease(ctx, moduleID, id, now, now.Add(s.Delivery.lease()))
}

func (s *Service) adminSession(m *AdminModule, id string, now time.Time) *AdminSession {
	return &AdminSession{ID: id, EID: m.EID, ModuleID: m.ID, ISDAID: m.ISDAID, RenewAfter: now.Add(s.Delivery.lease() / 2)}
}

// StartAdminSession opens a new session for module m and returns its first
// script; the delivery is nil when the module has nothing to run. resume
// says the module resumes a dialog (X-Admin-Resume on its first POST): the
// session then takes the module over from a broken session's lease, and a
// job that broken session sent goes out again, since the module says it ran
// nothing (OpenAdminSession with takeover, then NextScript with resumed).
//
// When the module's oldest pending job is QUEUED, the lease is taken and
// the job marked SENT in one transaction: the job was read before it, and
// the conditional update (still QUEUED, same attempts) makes the
// transaction fail, and the general path decide, if anything moved it
// meanwhile. Jobs never become pending again, so a job still QUEUED then is
// still the module's oldest. ErrConflict: another session holds the module.
// With another error the session may be open (non-nil): its lease then
// expires or is released as usual.
func (s *Service) StartAdminSession(ctx context.Context, m *AdminModule, resume bool, opts gp.ScriptOptions) (*AdminSession, *Delivery, error) {
	id := NewID("ses")
	a, del, err := s.startQueued(ctx, m, id, resume, opts)
	if a != nil || err != nil {
		return a, del, err
	}
	if a, err = s.OpenAdminSession(ctx, m, id, resume); err != nil {
		return nil, nil, err
	}
	del, err = s.NextScript(ctx, a, opts, resume)
	return a, del, err
}

// startQueued is StartAdminSession's one-transaction path; all nil when it
// does not apply.
func (s *Service) startQueued(ctx context.Context, m *AdminModule, id string, takeover bool, opts gp.ScriptOptions) (*AdminSession, *Delivery, error) {
	// The job, its domain's state and the provider's webhook URL in one
	// read (NextScript reads them one by one).
	jobs, err := s.Store.PendingModuleJobs(ctx, m.ID, 1)
	if err != nil {
		return nil, nil, err
	}
	now := s.now().UTC()
	if len(jobs) == 0 || jobs[0].Kind == JobIssuer || jobs[0].State != JobQueued || jobs[0].expired(now) {
		return nil, nil, nil
	}
	j := &jobs[0].Job
	if _, _, _, needs, err := j.cardScript(); err != nil || jobs[0].DomainState != needs {
		return nil, nil, err
	}
	del, err := delivery(j, opts)
	if err != nil {
		return nil, nil, err
	}
	var leaseErr error
	sent, err := s.send(ctx, j, id, jobs[0].DomainState, jobs[0].WebhookURL, func(ctx context.Context, tx Repo) error {
		leaseErr = s.takeLease(ctx, tx, m.ID, id, now, takeover)
		return leaseErr
	})
	switch {
	case err == nil:
		a := s.adminSession(m, id, now)
		a.sent, a.sentHook, del.Job = sent, &sentHook{ref: sent.Ref, url: jobs[0].WebhookURL}, sent
		return a, del, nil
	case leaseErr != nil || !errors.Is(err, ErrConflict):
		return nil, nil, err
	}
	return nil, nil, nil // the job moved: the general path reads it again
}

// send marks j, which is QUEUED, as SENT in session id and queues its
// provider's webhook (hook, read before; see webhookURL), in one
// transaction with first, if not nil. The update is conditional (still
// QUEUED with the same attempts): ErrConflict when anything moved the job
// since it was read. It returns the job as sent.
func (s *Service) send(ctx context.Context, j *Job, session string, ds DomainState, hook string, first func(ctx context.Context, tx Repo) error) (*Job, error) {
	next := *j
	next.State = JobSent
	next.Result = &ScriptResult{Session: session}
	err := s.commit(ctx, func(ctx context.Context, tx Repo) error {
		if first != nil {
			if err := first(ctx, tx); err != nil {
				return err
			}
		}
		if err := tx.UpdateJob(ctx, &next, j.State, j.Attempts); err != nil {
			return err
		}
		return s.notify(ctx, tx, &next, ds, hook)
	})
	if err != nil {
		return nil, err
	}
	return &next, nil
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
		jobs, err := s.Store.ListJobs(ctx, JobFilter{ModuleID: a.ModuleID, Kinds: CardJobKinds, States: []JobState{JobQueued, JobSent}, Limit: 1})
		if err != nil || len(jobs) == 0 {
			return nil, err
		}
		j := &jobs[0]
		now := s.now().UTC()
		switch {
		case j.Kind == JobIssuer && j.State == JobSent && !resumed && j.sentIn(a.ID):
			// The dialog goes on: the script its progress says is next.
			a.sent = j
			return s.issuerDelivery(ctx, j, opts)
		case j.Kind == JobIssuer && j.expired(now):
			err = s.finish(ctx, j, jobEnd{to: JobExpired, cause: "expired before the module completed the dialog", actor: "system", action: "job.expire"})
		case j.Kind == JobIssuer:
			// Not started, or broken off in an earlier session or before
			// the resume: start over from INITIALIZE UPDATE.
			del, serr := s.startIssuer(ctx, a, j, opts)
			if serr == nil && del != nil {
				return del, nil
			}
			err = serr
		case j.State == JobSent && (resumed || j.sentIn(a.ID)):
			a.sent = j
			return delivery(j, opts)
		case j.State == JobSent:
			j.Result = &ScriptResult{ScriptStatus: "answer-lost", Cause: "the admin session broke after the script went out and the module never posted its answer"}
			err = s.finish(ctx, j, s.answerLost(j, jobEnd{to: JobFailed, cause: "answer lost", actor: "system", action: j.failedAction()}))
		case j.expired(now):
			err = s.finish(ctx, j, jobEnd{to: JobExpired, cause: "expired before the module opened a session", actor: "system", action: "job.expire"})
		default:
			eid, aid, _, needs, perr := j.cardScript()
			if perr != nil {
				return nil, perr
			}
			d, derr := s.Store.GetDomain(ctx, eid, aid)
			if derr != nil {
				return nil, derr
			}
			if !d.is(needs) {
				err = s.finish(ctx, j, jobEnd{to: JobFailed, cause: fmt.Sprintf("domain is %s, not %s", d.State, needs), actor: "system", action: j.failedAction()})
				break
			}
			del, derr := delivery(j, opts)
			if derr != nil {
				return nil, derr
			}
			hook, herr := s.webhookURL(ctx, j.ProviderID)
			if herr != nil {
				return nil, herr
			}
			sent, serr := s.send(ctx, j, a.ID, d.State, hook, nil)
			if serr == nil {
				a.sent, a.sentHook, del.Job = sent, &sentHook{ref: sent.Ref, url: hook}, sent
				return del, nil
			}
			err = serr
		}
		if err != nil && !errors.Is(err, ErrConflict) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%w: module %s: jobs keep changing under the session", ErrUnavailable, a.EID)
}

// delivery encodes j's script for an admin session.
func delivery(j *Job, opts gp.ScriptOptions) (*Delivery, error) {
	_, aid, apdus, _, err := j.cardScript()
	if err != nil {
		return nil, err
	}
	cmds, err := decodeCommands(apdus)
	if err != nil {
		return nil, err
	}
	target, err := gp.TargetedApplication(aid.Bytes())
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
	if j.Kind == JobIssuer {
		// The module did not get the next script: the dialog starts over
		// (NextScript then sends script 1).
		return s.NextScript(ctx, a, opts, true)
	}
	return delivery(j, opts)
}

func (s *Service) moduleJob(ctx context.Context, a *AdminSession, ref string) (*Job, error) {
	j, err := s.Store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if j.ModuleID != a.ModuleID || !j.isCardJob() {
		return nil, ErrNotFound
	}
	return j, nil
}

// AnswerScript records the module's answer to job ref's script and judges
// it under the domain's current keys, which the HSM keeps
// (SecondKeyPayload.Judge: only the card's own answer, proven by its card
// cryptogram and R-MACs, confirms). Confirmed: the job is DONE, the domain moves
// ASSIGNED → PERSONALIZED with its new KVN, KCVs and a reset sequence counter
// (AmdD 6.2.2.1), an audit event is chained and the provider is told, in one
// transaction; so does a confirmed rotation of an ASSIGNED domain (from the
// pending KVN of a first key change whose outcome was unproven: the card's
// R-MAC under those keys proves they were on it). Otherwise the job is
// FAILED with the cause and SW, the domain stays ASSIGNED, and the counter
// the card reported is kept; after a key change (second key or rotation)
// whose outcome the answer leaves unproven (keyChangeUnproven) the counter
// is read again instead, by a counter probe queued in the same transaction
// (resync.go), and the new KVN becomes a pending key set of the domain
// (pendingKeys). An answer to a job that is already
// final changes nothing (a resumed session posting it twice), so a job
// completes exactly once. A body that does not parse is an *InvalidError
// and changes nothing.
//
// The session ends when the module has nothing more to run: if no other job
// of the module is pending, the session's lease is released in the
// transaction that records the answer, and ended is true (the dialog's 204
// follows without NextScript). Otherwise, or when the answer changed
// nothing, ended is false and the session goes on.
func (s *Service) AnswerScript(ctx context.Context, a *AdminSession, ref, status string, body []byte) (j *Job, ended bool, err error) {
	var hook *string
	if a.sent != nil && a.sent.Ref == ref {
		// This session sent it: the conditional update below checks that
		// it is still so.
		c := *a.sent
		j = &c
		if h := a.sentHook; h != nil && h.ref == ref {
			hook = &h.url
		}
	} else if j, err = s.moduleJob(ctx, a, ref); err != nil {
		return nil, false, err
	}
	if j.State.Final() {
		return j, false, nil
	}
	if j.State != JobSent {
		return nil, false, fmt.Errorf("%w: job %s was never sent", ErrConflict, ref)
	}
	if j.Kind == JobData {
		return s.answerData(ctx, a, j, status, body)
	}
	if j.Kind == JobIssuer {
		// The dialog goes on in NextScript (the next script, or the
		// module's next job, or the end).
		j, err = s.answerIssuer(ctx, a, j, status, body)
		if errors.Is(err, ErrConflict) {
			j, err = s.moduleJob(ctx, a, ref)
			return j, false, err
		}
		if err != nil {
			return nil, false, err
		}
		a.sent = nil
		if j.State == JobSent {
			a.sent = j
		}
		return j, false, nil
	}
	p, err := j.secondKey()
	if err != nil {
		return nil, false, err
	}
	// The domain's current keys check the card's proof (a rotation's
	// proof is the R-MAC its provider declared); on failure the domain
	// keeps its KVN. It is read only for a judgement that needs its keys:
	// an answer the expected digest confirms, and a rotation's, are judged
	// without it, and the transaction that records them moves the domain
	// conditionally.
	domainKeys := func(fn func(gp.KeySet) error) error {
		d, err := s.Store.GetDomain(ctx, p.EID, p.AID)
		if err != nil {
			return err
		}
		return s.withDomainKeys(ctx, d, fn)
	}
	var res ScriptResult
	switch {
	case p.Rotate:
		res, err = p.JudgeRotation(status, body)
	case p.Verify:
		// The judgement's CMACs under one HSM session, each key unwrapped
		// once; the database is read only after it.
		var d *Domain
		if d, err = s.Store.GetDomain(ctx, p.EID, p.AID); err != nil {
			return nil, false, err
		}
		err = s.withDomainKeys(ctx, d, func(keys gp.KeySet) (jerr error) {
			res, jerr = p.JudgeVerify(status, body, keys)
			return jerr
		})
		if err == nil && res.Confirmed {
			why, rerr := releaseRulesRemoved(ctx, s.Store, d)
			if rerr != nil {
				return nil, false, rerr
			}
			if why != "" {
				res.Confirmed, res.Cause = false, why
			}
		}
	default:
		// The answer computed at submission, when it is that one
		// (expectedanswer.go); any other the long way, as above.
		var ok bool
		if res, ok, err = p.judgeExpected(status, body); !ok && err == nil {
			err = domainKeys(func(keys gp.KeySet) (jerr error) {
				res, jerr = p.Judge(status, body, keys)
				return jerr
			})
		}
	}
	if err != nil {
		return nil, false, err
	}
	j.Result = &res
	// The job is final by the time release runs, in the same transaction:
	// the lease goes only if no other job of the module is pending then.
	release := func(ctx context.Context, tx Repo) (err error) {
		ended, err = tx.ReleaseIdleLease(ctx, a.ModuleID, a.ID)
		return err
	}
	end := jobEnd{actor: "module:" + string(a.EID), hook: hook}
	if res.Confirmed {
		// The transition is conditional (ASSIGNED → PERSONALIZED).
		end.to, end.action = JobDone, p.action("confirmed")
		from, to, owner, seq := From(EventSecondKeyConfirmed), Personalized, (*string)(nil), 0
		switch {
		case p.Rotate && p.Assigned:
			// The first key change recovered: the card proved it holds
			// the pending key set this rotation started from, and now
			// the next one. The domain moves as a confirmed second key
			// moves it, to the rotation's KVN and KCVs with counter 0
			// (audit ActionSecondKeyRecovered). The rotation sends no SET
			// STATUS: if the second-key script's never ran, the SSD's
			// card life cycle is still SELECTABLE (README).
		case p.Rotate:
			// The domain stays PERSONALIZED, conditionally.
			from = []DomainState{Personalized}
		case p.Verify:
			// The release is proven: the domain is free again, with the
			// new first keys and the counter the card reported.
			none := ""
			from, to, owner = From(EventReleaseConfirmed), Unassigned, &none
			if res.SequenceCounter != nil {
				seq = *res.SequenceCounter
			}
		}
		end.in = func(ctx context.Context, tx Repo) (DomainState, error) {
			if err := tx.MoveDomainKeys(ctx, j.DomainID, from, to, owner, p.Expect.KVN, p.Expect.KCV, seq); err != nil {
				return "", err
			}
			return to, release(ctx, tx)
		}
	} else {
		end.to, end.cause, end.action = JobFailed, res.Cause, p.action("failed")
		// A key change whose answer leaves its outcome unproven (a
		// cryptogram or R-MAC that does not verify, a missing PUT KEY
		// answer, a SET STATUS refused after a PUT KEY 9000…:
		// keyChangeUnproven) may have put the new key set on the card,
		// with its own counter: the counter of its INITIALIZE UPDATE
		// answer may be the card's no more, so it is read again like
		// after a lost answer.
		unproven := keyChangeUnproven(p, JobFailed, &res)
		end.in = func(ctx context.Context, tx Repo) (DomainState, error) {
			// The domain as it is now: it keeps its KVN.
			cur, err := tx.GetDomain(ctx, p.EID, p.AID)
			if err != nil {
				return "", err
			}
			switch {
			case unproven:
				if err := s.queueCounterProbe(ctx, tx, p.EID, cur, j.ProviderID); err != nil {
					return "", err
				}
			case res.SequenceCounter != nil:
				if err := tx.SetDomainKeys(ctx, cur.ID, cur.KVN, nil, *res.SequenceCounter); err != nil {
					return "", err
				}
			}
			return cur.State, release(ctx, tx)
		}
	}
	err = s.finish(ctx, j, end)
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
	return j, ended, nil
}

// withDomainKeys runs fn with domain d's current key set, the first keys
// (KVN 30) while it is ASSIGNED, as static keys that stay in the HSM
// (withStaticKeys: one HSM session for all of fn's CMACs, when the custody
// offers it). fn may run twice and must not keep the keys.
func (s *Service) withDomainKeys(ctx context.Context, d *Domain, fn func(gp.KeySet) error) error {
	b, err := s.batch(ctx, d.BatchID)
	if err != nil {
		return err
	}
	refs := []KeyRef{DomainKey(b.Name, d, UsageENC), DomainKey(b.Name, d, UsageMAC)}
	return withStaticKeys(ctx, s.Custody, refs, func(ks []gp.StaticKey) error {
		return fn(gp.KeySet{KVN: byte(d.KVN), ENC: ks[0], MAC: ks[1]})
	})
}

// answerData is AnswerScript for a data job: JudgeData, then the job DONE
// or FAILED with the answer kept as the card sent it, and the counter the
// card reported recorded for the provider's next script, in one
// transaction.
func (s *Service) answerData(ctx context.Context, a *AdminSession, j *Job, status string, body []byte) (*Job, bool, error) {
	res, err := j.Data.JudgeData(status, body)
	if err != nil {
		return nil, false, err
	}
	d, err := s.Store.GetDomain(ctx, j.Data.EID, j.Data.AID)
	if err != nil {
		return nil, false, err
	}
	j.Result = &res
	var ended bool
	end := jobEnd{actor: "module:" + string(a.EID), to: JobDone, action: "data.done"}
	probe := j.Data.Probe
	if probe {
		// keyport's own counter probe (resync.go): done when the card
		// told the counter of the domain's key set or of a pending one.
		end.action = ActionCounterResync
		if res.SequenceCounter != nil {
			why, err := s.probeKeySet(ctx, d, res.CardKVN)
			if err != nil {
				return nil, false, err
			}
			if why != "" {
				res.SequenceCounter, res.Cause = nil, why
			}
		}
		if res.SequenceCounter == nil {
			res.Confirmed = false
			if res.Cause == "" {
				res.Cause = "the INITIALIZE UPDATE answer holds no sequence counter"
			}
		}
	}
	if !res.Confirmed {
		end.to, end.cause, end.action = JobFailed, res.Cause, j.failedAction()
	}
	end.in = func(ctx context.Context, tx Repo) (DomainState, error) {
		if res.SequenceCounter != nil {
			if err := tx.SetDomainKeys(ctx, d.ID, d.KVN, nil, *res.SequenceCounter); err != nil {
				return "", err
			}
		} else if probe {
			// Nothing better to report than the last counter known.
			if err := tx.SetCounterUnverified(ctx, d.ID, false); err != nil {
				return "", err
			}
		}
		var err error
		ended, err = tx.ReleaseIdleLease(ctx, a.ModuleID, a.ID)
		return d.State, err
	}
	err = s.finish(ctx, j, end)
	if errors.Is(err, ErrConflict) {
		j, err := s.moduleJob(ctx, a, j.Ref)
		return j, false, err
	}
	if err != nil {
		return nil, false, err
	}
	a.sent = nil
	s.log().Info("data answer", "job", j.Ref, "state", j.State, "cause", res.Cause)
	return j, ended, nil
}
