package keyport

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/keyport/keyport/gp"
)

// JobIssuer is a card dialog keyport computes live with the module's ISD
// keys, which stay in the HSM (CardKeys.SCP03CMAC on ISDKey refs): each
// script of the admin session is built from the card's answers to the one
// before, so nothing can be precomputed.
//
//	script 1: SELECT target, INITIALIZE UPDATE (ISD KVN, fresh host challenge)
//	          → card cryptogram verified, sequence counter recorded
//	script 2: EXTERNAL AUTHENTICATE (host cryptogram, C-MAC + R-MAC at
//	          least), the operation's step 0, wrapped
//	script n: the operation's step n-2, wrapped in the same session
//
// Every answer after EXTERNAL AUTHENTICATE must carry a valid R-MAC; the
// session keys are derived again for each script and never stored. A
// dialog that breaks (a dropped connection, a new session, X-Admin-Resume)
// starts over from script 1: an operation is idempotent, or judged by a
// read-back, so running it twice changes the card once.
const JobIssuer JobKind = "issuer"

// IssuerOp names an issuer operation (IssuerOperation).
type IssuerOp string

// IssuerPayload is what a JobIssuer job carries: the operation and its
// parameters, as the operation's decoder reads them.
type IssuerPayload struct {
	Op  IssuerOp `json:"op"`
	EID EID      `json:"eid"`
	// AID is the domain the job is about (empty for a module-wide one).
	AID    AID             `json:"aid,omitempty"`
	Params json.RawMessage `json:"params,omitempty"`
}

// IssuerProgress is where an issuer job's dialog stands, kept in the job's
// result while it is SENT. Nothing in it is secret: the host challenge and
// the card's answers travel in clear, and the session keys are derived from
// them again inside the HSM.
type IssuerProgress struct {
	// Script is the last script sent: 1 (SELECT + INITIALIZE UPDATE), 2
	// (EXTERNAL AUTHENTICATE + operation step 0), n (operation step n-2).
	Script int `json:"script"`
	// Runs counts the dialogs started (restarts included).
	Runs          int    `json:"runs"`
	HostChallenge string `json:"host_challenge"`
	// InitUpdate is the card's INITIALIZE UPDATE answer data (hex).
	InitUpdate string `json:"init_update,omitempty"`
	// Steps holds the R-APDUs of each operation step as the card sent
	// them (R-MACs included), in hex.
	Steps [][]string `json:"steps,omitempty"`
	// LastAnswer is the SHA-256 of the last answer body recorded, so that
	// an answer posted twice (a resumed POST) is recorded once.
	LastAnswer string `json:"last_answer,omitempty"`
}

// MaxIssuerRuns bounds the restarts of one issuer job's dialog.
const MaxIssuerRuns = 8

// IssuerOutcome is an operation's judgement of the answers so far.
type IssuerOutcome string

// The outcomes.
const (
	IssuerContinue IssuerOutcome = "continue" // send the next step
	IssuerDone     IssuerOutcome = "done"     // the card confirmed
	IssuerFailed   IssuerOutcome = "failed"   // SW and Cause say why
)

// IssuerVerdict is an operation's (or the framework's) judgement.
type IssuerVerdict struct {
	Outcome IssuerOutcome
	// SW is the status word that failed the job, hex ("6A80"), if any.
	SW    string
	Cause string
}

// IssuerEnv is what an operation may use: the service (its store and
// custody), the job and the payload it was decoded from.
type IssuerEnv struct {
	Service *Service
	Job     *Job
	Payload *IssuerPayload
	// Module is the job's module, ISD keys included (as blobs).
	Module *Module
}

// ISDKey names the module's ISD key of usage u (for an operation that
// encrypts under the ISD DEK, CardKeys, PersoCustody.EncryptUnderKey).
func (e *IssuerEnv) ISDKey(u KeyUsage) KeyRef {
	return ISDKey(e.Module.EID, e.Module.ISDAID, u, e.Module.ISDKeys[u])
}

// IssuerOperation is one kind of issuer job. Its commands are plain: the
// framework wraps them in the SCP03 session it opened with the ISD keys and
// unwraps (R-MAC checked, R-ENC decrypted) the answers it hands back.
// Commands and Judge must be deterministic in their inputs: the framework
// calls them again to rebuild the session for the next script.
type IssuerOperation interface {
	// Target is the AID to SELECT before INITIALIZE UPDATE: the ISD (nil
	// means the module's ISD) or an application whose associated SD is
	// the ISD (ARA-M).
	Target() []byte
	// Commands returns operation step n (0-based) given the plain answers
	// of steps 0..n-1. A module stops a script at the first error status
	// word, so a command whose error is acceptable (DELETE of what is
	// gone) goes last in its step.
	Commands(ctx context.Context, env *IssuerEnv, n int, prev [][]gp.Response) ([]gp.Command, error)
	// Judge reads the plain answers of steps 0..n (step n may stop at an
	// error status word) and says: IssuerContinue, IssuerDone or
	// IssuerFailed (with SW and Cause). A read-back step decides Done.
	Judge(env *IssuerEnv, n int, answers [][]gp.Response) IssuerVerdict
	// Queued runs in the transaction that queues the job (or re-queues it,
	// RetryIssuerJob): the operation sets what is pending.
	Queued(ctx context.Context, tx Repo, env *IssuerEnv) error
	// Finish runs in the transaction that ends the job (DONE, FAILED,
	// EXPIRED, CANCELLED: v.Outcome is IssuerDone or IssuerFailed) and
	// records what is true; it returns the domain's state for the webhook.
	Finish(ctx context.Context, tx Repo, env *IssuerEnv, v IssuerVerdict) (DomainState, error)
}

// IssuerDecoder builds an operation from a stored payload.
type IssuerDecoder func(p *IssuerPayload) (IssuerOperation, error)

var issuerOps sync.Map // IssuerOp → IssuerDecoder

// RegisterIssuerOperation makes op known to the framework; call it from an
// init function of the operation's file. A second registration panics.
func RegisterIssuerOperation(op IssuerOp, decode IssuerDecoder) {
	if _, dup := issuerOps.LoadOrStore(op, decode); dup {
		panic("keyport: issuer operation " + string(op) + " registered twice")
	}
}

// Operation decodes the payload's operation.
func (p *IssuerPayload) Operation() (IssuerOperation, error) {
	d, ok := issuerOps.Load(p.Op)
	if !ok {
		return nil, fmt.Errorf("keyport: unknown issuer operation %q", p.Op)
	}
	return d.(IssuerDecoder)(p)
}

// FirstError is the verdict for the first answer of step whose status word
// is neither 9000 nor a warning, and ok=false when every answer passed.
// cmds name the commands in the cause.
func FirstError(cmds []gp.Command, step []gp.Response) (v IssuerVerdict, failed bool) {
	for i, r := range step {
		if r.SW != gp.SWOK && !r.SW.Warning() {
			name := "command"
			if i < len(cmds) {
				name = gp.INSName(cmds[i].INS)
			}
			return IssuerVerdict{Outcome: IssuerFailed, SW: fmt.Sprintf("%04X", uint16(r.SW)),
				Cause: fmt.Sprintf("%s answered %s", name, r.SW)}, true
		}
	}
	return IssuerVerdict{}, false
}

// ErrNoISDKeys: the module was imported, so keyport holds no ISD keys for
// it and cannot run an issuer job on it. It matches ErrConflict.
var ErrNoISDKeys = fmt.Errorf("%w: keyport holds no ISD keys for this module (it was imported, not personalized by keyport): issuer operations go through its manufacturer", ErrConflict)

// IssuerJobRequest is what QueueIssuerJob queues.
type IssuerJobRequest struct {
	EID EID
	// Domain is the domain the job is about, nil for a module-wide one;
	// its owner is told of every step.
	Domain *Domain
	Op     IssuerOp
	// Params are the operation's parameters, marshalled to JSON.
	Params any
	// Actor and Action name the audit event of the queueing.
	Actor, Action string
	// In runs in the queueing transaction before the job is created
	// (checks re-read there); nil for none.
	In func(ctx context.Context, tx Repo) error
}

// QueueIssuerJob queues an issuer job: the job, the operation's Queued,
// the audit event and the provider's "job.queued" webhook in one
// transaction, then a wake-up. A module without ISD keys in keyport
// (imported) is refused with ErrNoISDKeys, and nothing is queued.
func (s *Service) QueueIssuerJob(ctx context.Context, req IssuerJobRequest) (*Job, error) {
	m, err := s.Store.GetModule(ctx, req.EID)
	if err != nil {
		return nil, err
	}
	if !m.ISDKeys.Complete() {
		return nil, ErrNoISDKeys
	}
	params, err := json.Marshal(req.Params)
	if err != nil {
		return nil, fmt.Errorf("keyport: issuer job params: %w", err)
	}
	p := &IssuerPayload{Op: req.Op, EID: req.EID, Params: params}
	j := &Job{Ref: NewID("job"), Kind: JobIssuer, ModuleID: m.ID, State: JobQueued, Issuer: p}
	if req.Domain != nil {
		p.AID, j.DomainID, j.ProviderID = req.Domain.AID, req.Domain.ID, req.Domain.OwnerID
	}
	op, err := p.Operation()
	if err != nil {
		return nil, err
	}
	if err := s.createIssuerJob(ctx, j, op, m, req.Actor, req.Action, req.In); err != nil {
		return nil, err
	}
	return j, nil
}

func (s *Service) createIssuerJob(ctx context.Context, j *Job, op IssuerOperation, m *Module, actor, action string, in func(ctx context.Context, tx Repo) error) error {
	now := s.now().UTC()
	exp := now.Add(s.Delivery.expiry())
	j.NextRunAt, j.ExpiresAt = now, &exp
	hook, err := s.issuerHook(ctx, j)
	if err != nil {
		return err
	}
	env := &IssuerEnv{Service: s, Job: j, Payload: j.Issuer, Module: m}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if in != nil {
			if err := in(ctx, tx); err != nil {
				return err
			}
		}
		if err := tx.CreateJob(ctx, j); err != nil {
			return err
		}
		if err := runQueueHook(ctx, tx, j); err != nil { // a campaign's target (campaignrun.go)
			return err
		}
		if err := op.Queued(ctx, tx, env); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, actor, action, issuerObject(j), map[string]any{"job": j.Ref, "op": j.Issuer.Op}); err != nil {
			return err
		}
		return s.notify(ctx, tx, j, "", hook)
	})
	if err != nil {
		return err
	}
	s.log().Info("issuer job queued", "job", j.Ref, "op", j.Issuer.Op, "eid", j.Issuer.EID)
	if s.Trigger != nil {
		_ = s.Trigger.Wake(ctx, j.Issuer.EID) // the worker wakes it again with backoff
	}
	return nil
}

// RetryIssuerJob queues a FAILED or EXPIRED issuer job again, as a new job
// with the same operation (the admin's retry). The operation's Queued runs
// again, so its state says pending once more.
func (s *Service) RetryIssuerJob(ctx context.Context, p Principal, ref string) (*Job, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	old, err := s.Store.GetJob(ctx, ref)
	if err != nil {
		return nil, err
	}
	if old.Kind != JobIssuer || old.Issuer == nil {
		return nil, fmt.Errorf("%w: job %s is a %s job; only issuer jobs are retried (a failed second-key job is followed by a new script)", ErrConflict, old.Ref, old.Kind)
	}
	if old.State != JobFailed && old.State != JobExpired {
		return nil, fmt.Errorf("%w: job is %s; only a FAILED or EXPIRED issuer job is retried", ErrConflict, old.State)
	}
	m, err := s.Store.GetModule(ctx, old.Issuer.EID)
	if err != nil {
		return nil, err
	}
	if !m.ISDKeys.Complete() {
		return nil, ErrNoISDKeys
	}
	pl := *old.Issuer
	op, err := pl.Operation()
	if err != nil {
		return nil, err
	}
	j := &Job{Ref: NewID("job"), Kind: JobIssuer, DomainID: old.DomainID, ModuleID: old.ModuleID, ProviderID: old.ProviderID,
		State: JobQueued, Issuer: &pl}
	if err := s.createIssuerJob(ctx, j, op, m, p.Actor(), "issuer.retry", nil); err != nil {
		return nil, err
	}
	return j, nil
}

func issuerObject(j *Job) string {
	if p := j.Issuer; p != nil {
		if p.AID != "" {
			return domainObject(p.EID, p.AID)
		}
		return "module:" + string(p.EID)
	}
	return "job:" + j.Ref
}

// issuerHook is the webhook URL of the job's provider, "" for none.
func (s *Service) issuerHook(ctx context.Context, j *Job) (string, error) {
	if j.ProviderID == "" {
		return "", nil
	}
	return s.webhookURL(ctx, j.ProviderID)
}

// issuer is the payload of an issuer job; an error for another kind.
func (j *Job) issuer() (*IssuerPayload, error) {
	if j.Kind != JobIssuer || j.Issuer == nil {
		return nil, fmt.Errorf("keyport: job %s (%s) carries no issuer operation", j.Ref, j.Kind)
	}
	return j.Issuer, nil
}

func (j *Job) progress() *IssuerProgress {
	if j.Result == nil || j.Result.Issuer == nil {
		return &IssuerProgress{}
	}
	return j.Result.Issuer
}

// issuerRun is one issuer job's operation with its environment and keys.
type issuerRun struct {
	s   *Service
	j   *Job
	op  IssuerOperation
	env *IssuerEnv
	ks  gp.KeySet
}

func (s *Service) issuerRun(ctx context.Context, j *Job) (*issuerRun, error) {
	p, err := j.issuer()
	if err != nil {
		return nil, err
	}
	op, err := p.Operation()
	if err != nil {
		return nil, err
	}
	m, err := s.Store.GetModule(ctx, p.EID)
	if err != nil {
		return nil, err
	}
	if !m.ISDKeys.Complete() {
		return nil, ErrNoISDKeys
	}
	r := &issuerRun{s: s, j: j, op: op, env: &IssuerEnv{Service: s, Job: j, Payload: p, Module: m}}
	r.ks = gp.KeySet{KVN: PersoISDKVN, ENC: StaticKey(ctx, s.Custody, r.env.ISDKey(UsageENC)),
		MAC: StaticKey(ctx, s.Custody, r.env.ISDKey(UsageMAC))}
	return r, nil
}

func (r *issuerRun) target() []byte {
	if t := r.op.Target(); t != nil {
		return t
	}
	return r.env.Module.ISDAID.Bytes()
}

// session rebuilds the SCP03 session from the recorded host challenge and
// INITIALIZE UPDATE answer, then replays operation steps 0..upto-1 (wrap
// each command, unwrap each recorded answer), and returns it with
// EXTERNAL AUTHENTICATE and the plain answers of those steps. A recorded
// answer that fails its R-MAC is an error wrapping gp.ErrMAC.
func (r *issuerRun) session(ctx context.Context, prog *IssuerProgress, upto int) (*gp.HostSession, gp.Command, [][]gp.Response, error) {
	hc, err := hex.DecodeString(prog.HostChallenge)
	if err != nil {
		return nil, gp.Command{}, nil, fmt.Errorf("keyport: job %s: host challenge: %w", r.j.Ref, err)
	}
	iu, err := hex.DecodeString(prog.InitUpdate)
	if err != nil {
		return nil, gp.Command{}, nil, fmt.Errorf("keyport: job %s: INITIALIZE UPDATE answer: %w", r.j.Ref, err)
	}
	hs, err := gp.NewHostSession(r.ks, hc)
	if err != nil {
		return nil, gp.Command{}, nil, err
	}
	if err := hs.OnInitUpdateResponse(gp.Response{Data: iu, SW: gp.SWOK}); err != nil {
		return nil, gp.Command{}, nil, err
	}
	ea, err := hs.ExternalAuthenticate(gp.StrongestLevel(hs.Card().I))
	if err != nil {
		return nil, gp.Command{}, nil, err
	}
	var plain [][]gp.Response
	for n := 0; n < upto; n++ {
		cmds, err := r.op.Commands(ctx, r.env, n, plain)
		if err != nil {
			return nil, gp.Command{}, nil, err
		}
		if n >= len(prog.Steps) {
			return nil, gp.Command{}, nil, fmt.Errorf("keyport: job %s: no answer recorded for step %d", r.j.Ref, n)
		}
		raw := prog.Steps[n]
		if n == 0 {
			raw = raw[1:] // EXTERNAL AUTHENTICATE's answer carries no R-MAC
		}
		if len(raw) > len(cmds) {
			return nil, gp.Command{}, nil, fmt.Errorf("keyport: job %s: step %d has %d answers to %d commands", r.j.Ref, n, len(raw), len(cmds))
		}
		var out []gp.Response
		for i, c := range cmds {
			if _, err := hs.Wrap(c); err != nil {
				return nil, gp.Command{}, nil, err
			}
			if i >= len(raw) {
				continue // the module stopped before it: only the counter moves
			}
			b, err := hex.DecodeString(raw[i])
			if err != nil {
				return nil, gp.Command{}, nil, err
			}
			resp, err := gp.ParseResponse(b)
			if err != nil {
				return nil, gp.Command{}, nil, err
			}
			u, err := hs.Unwrap(resp)
			if err != nil {
				return nil, gp.Command{}, nil, fmt.Errorf("step %d answer %d (%s): %w", n, i+1, gp.INSName(c.INS), err)
			}
			out = append(out, u)
		}
		plain = append(plain, out)
	}
	return hs, ea, plain, nil
}

// script builds the script prog.Script says goes out next.
func (r *issuerRun) script(ctx context.Context, prog *IssuerProgress) ([]gp.Command, error) {
	if prog.Script <= 1 {
		hc, err := hex.DecodeString(prog.HostChallenge)
		if err != nil {
			return nil, err
		}
		return []gp.Command{gp.Select(r.target()), gp.InitializeUpdate(r.ks.KVN, hc)}, nil
	}
	n := prog.Script - 2
	hs, ea, plain, err := r.session(ctx, prog, n)
	if err != nil {
		return nil, err
	}
	cmds, err := r.op.Commands(ctx, r.env, n, plain)
	if err != nil {
		return nil, err
	}
	var out []gp.Command
	if n == 0 {
		out = append(out, ea)
	}
	for _, c := range cmds {
		w, err := hs.Wrap(c)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, nil
}

// issuerDelivery encodes the script of issuer job j that its progress says
// goes out (script 1 for a job not started).
func (s *Service) issuerDelivery(ctx context.Context, j *Job, opts gp.ScriptOptions) (*Delivery, error) {
	r, err := s.issuerRun(ctx, j)
	if err != nil {
		return nil, err
	}
	cmds, err := r.script(ctx, j.progress())
	if err != nil {
		return nil, fmt.Errorf("keyport: issuer job %s: %w", j.Ref, err)
	}
	// No targeted application: the script SELECTs itself on the basic
	// channel, and the session it opens carries over to the next script.
	return &Delivery{Job: j, Script: gp.EncodeCommandScript(cmds, opts)}, nil
}

// startIssuer (re)starts issuer job j's dialog in admin session a: script 1
// with a fresh host challenge, marked SENT in one conditional update with
// its audit event and webhook. ErrConflict when the job moved meanwhile.
// After MaxIssuerRuns dialogs the job fails instead.
func (s *Service) startIssuer(ctx context.Context, a *AdminSession, j *Job, opts gp.ScriptOptions) (*Delivery, error) {
	prog := *j.progress()
	if prog.Runs >= MaxIssuerRuns {
		return nil, s.endIssuer(ctx, j, nil, IssuerVerdict{Outcome: IssuerFailed,
			Cause: fmt.Sprintf("the dialog broke off %d times", prog.Runs)}, "system")
	}
	hc := make([]byte, 8)
	if _, err := rand.Read(hc); err != nil {
		return nil, err
	}
	next := *j
	next.State = JobSent
	next.Attempts++
	next.Result = &ScriptResult{Session: a.ID, Issuer: &IssuerProgress{Script: 1, Runs: prog.Runs + 1,
		HostChallenge: strings.ToUpper(hex.EncodeToString(hc))}}
	del, err := s.issuerDelivery(ctx, &next, opts)
	if err != nil {
		return nil, err
	}
	if err := s.issuerStep(ctx, j, &next, "issuer.start", "module:"+string(a.EID)); err != nil {
		return nil, err
	}
	a.sent, del.Job = &next, &next
	return del, nil
}

// issuerStep writes next over j (conditionally: same state and attempts)
// with an audit event and a "job.step" webhook, in one transaction.
func (s *Service) issuerStep(ctx context.Context, j, next *Job, action, actor string) error {
	hook, err := s.issuerHook(ctx, j)
	if err != nil {
		return err
	}
	prog := next.progress()
	err = s.commit(ctx, func(ctx context.Context, tx Repo) error {
		if err := tx.UpdateJob(ctx, next, j.State, j.Attempts); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, actor, action, issuerObject(next), map[string]any{"job": next.Ref, "op": next.Issuer.Op,
			"script": prog.Script, "run": prog.Runs}); err != nil {
			return err
		}
		return s.notifyType(ctx, tx, next, "job.step", "", hook)
	})
	if err != nil {
		return err
	}
	s.log().Info("issuer step", "job", next.Ref, "op", next.Issuer.Op, "script", prog.Script, "run", prog.Runs)
	return nil
}

// notifyType is notify with an event type of its own ("job.step"): the
// job's state stays what it is (SENT) in the event.
func (s *Service) notifyType(ctx context.Context, tx Repo, j *Job, typ string, ds DomainState, hook string) error {
	if hook == "" {
		return nil
	}
	now := s.now().UTC()
	b, err := json.Marshal(WebhookEvent{ID: NewID("evt"), Type: typ, At: now, Job: j.View(), DomainState: ds})
	if err != nil {
		return err
	}
	exp := now.Add(72 * time.Hour)
	return tx.CreateJob(ctx, &Job{Ref: NewID("job"), Kind: JobWebhook, ProviderID: j.ProviderID, State: JobQueued,
		NextRunAt: now, ExpiresAt: &exp, Event: b})
}

// endIssuer ends issuer job j as v says (DONE or FAILED), with the
// operation's Finish, the audit event and the webhook in one transaction.
// res, if not nil, is the job's final result.
func (s *Service) endIssuer(ctx context.Context, j *Job, res *ScriptResult, v IssuerVerdict, actor string) error {
	if res == nil {
		res = &ScriptResult{}
		if j.Result != nil {
			c := *j.Result
			res = &c
		}
	}
	res.Session, res.SW, res.Cause = "", v.SW, v.Cause
	res.Confirmed = v.Outcome == IssuerDone
	if res.ScriptStatus == "" {
		res.ScriptStatus = "ok"
	}
	j.Result = res
	e := jobEnd{to: JobFailed, cause: v.Cause, actor: actor, action: string(j.Issuer.Op) + ".failed", verdict: &v}
	if v.Outcome == IssuerDone {
		e.to, e.cause, e.action = JobDone, "", string(j.Issuer.Op)+".done"
	}
	return s.finish(ctx, j, e)
}

// issuerFinish is the operation's Finish for finish: it runs in the
// transaction that ends an issuer job, whatever ends it.
func (s *Service) issuerFinish(ctx context.Context, tx Repo, j *Job, v IssuerVerdict) (DomainState, error) {
	p, err := j.issuer()
	if err != nil {
		return "", err
	}
	op, err := p.Operation()
	if err != nil {
		return "", err
	}
	m, err := tx.GetModule(ctx, p.EID)
	if err != nil {
		return "", err
	}
	return op.Finish(ctx, tx, &IssuerEnv{Service: s, Job: j, Payload: p, Module: m}, v)
}

// answerIssuer records the module's answer to the script issuer job j's
// progress says went out, and sends the dialog on: the next script
// (ended=false), or the job's end. The answer is checked by the framework
// first — script 1: SELECT and INITIALIZE UPDATE 9000 and the card
// cryptogram under the ISD keys; later scripts: EXTERNAL AUTHENTICATE 9000
// and every R-MAC — then judged by the operation. An answer posted twice
// changes nothing the second time.
func (s *Service) answerIssuer(ctx context.Context, a *AdminSession, j *Job, status string, body []byte) (*Job, error) {
	prog := *j.progress()
	sum := sha256.Sum256(append([]byte(status+"\n"), body...))
	digest := hex.EncodeToString(sum[:])
	if prog.LastAnswer == digest {
		return j, nil
	}
	actor := "module:" + string(a.EID)
	fail := func(v IssuerVerdict, res *ScriptResult) (*Job, error) {
		v.Outcome = IssuerFailed
		if err := s.endIssuer(ctx, j, res, v, actor); err != nil {
			return nil, err
		}
		return j, nil
	}
	res := &ScriptResult{ScriptStatus: status}
	if j.Result != nil {
		res.SequenceCounter = j.Result.SequenceCounter
	}
	if status != "ok" {
		return fail(IssuerVerdict{Cause: fmt.Sprintf("the module reported script status %q", status)}, res)
	}
	rs, err := gp.ParseResponseScript(body)
	if err != nil {
		return nil, Invalid("body", "not a TS 102 226 response script: %v", err)
	}
	var raw []string
	for _, x := range rs.Responses {
		raw = append(raw, strings.ToUpper(hex.EncodeToString(x.Bytes())))
	}
	res.Responses = raw
	r, err := s.issuerRun(ctx, j)
	if err != nil {
		return nil, err
	}
	cmds, err := r.script(ctx, &prog)
	if err != nil {
		return nil, err
	}
	if len(rs.Responses) > len(cmds) {
		return nil, Invalid("body", "%d R-APDUs answer %d C-APDUs", len(rs.Responses), len(cmds))
	}
	if v, failed := FirstError(cmds, rs.Responses); failed && prog.Script <= 2 && (prog.Script == 1 || len(rs.Responses) == 1) {
		// SELECT, INITIALIZE UPDATE or EXTERNAL AUTHENTICATE refused.
		return fail(v, res)
	}
	next := *j
	np := prog
	np.LastAnswer = digest
	next.Result = &ScriptResult{Session: a.ID, Issuer: &np, SequenceCounter: res.SequenceCounter}
	next.Attempts++
	if prog.Script <= 1 {
		if len(rs.Responses) < 2 {
			return fail(IssuerVerdict{Cause: fmt.Sprintf("the module ran %d of 2 commands", len(rs.Responses))}, res)
		}
		iu := rs.Responses[1]
		hc, _ := hex.DecodeString(prog.HostChallenge)
		hs, err := gp.NewHostSession(r.ks, hc)
		if err != nil {
			return nil, err
		}
		if err := hs.OnInitUpdateResponse(iu); err != nil {
			return fail(IssuerVerdict{Cause: fmt.Sprintf("the INITIALIZE UPDATE answer did not come from a card holding the ISD keys: %v", err)}, res)
		}
		card := hs.Card()
		if card.HasSequenceCounter {
			n := int(card.SequenceCounter)
			res.SequenceCounter, next.Result.SequenceCounter = &n, &n
		}
		if l := gp.StrongestLevel(card.I); l&gp.LevelRMAC == 0 {
			return fail(IssuerVerdict{Cause: fmt.Sprintf("the ISD offers no R-MAC (i=%02X): its answers would prove nothing", card.I)}, res)
		}
		np.InitUpdate = strings.ToUpper(hex.EncodeToString(iu.Data))
		np.Script = 2
		np.Steps = nil
		if err := s.issuerStep(ctx, j, &next, "issuer.authenticated", actor); err != nil {
			return nil, err
		}
		return &next, nil
	}
	n := prog.Script - 2
	np.Steps = append(append([][]string{}, prog.Steps[:n]...), raw)
	_, _, plain, err := r.session(ctx, &np, n+1)
	if errors.Is(err, gp.ErrMAC) || errors.Is(err, gp.ErrState) {
		return fail(IssuerVerdict{Cause: fmt.Sprintf("an answer did not come from the card's secure channel: %v", err)}, res)
	}
	if err != nil {
		return nil, err
	}
	v := r.op.Judge(r.env, n, plain)
	switch v.Outcome {
	case IssuerContinue:
		if len(rs.Responses) < len(cmds) {
			return fail(IssuerVerdict{Cause: fmt.Sprintf("the module ran %d of %d commands", len(rs.Responses), len(cmds))}, res)
		}
		np.Script++
		if err := s.issuerStep(ctx, j, &next, "issuer.step", actor); err != nil {
			return nil, err
		}
		return &next, nil
	case IssuerDone:
		res.Issuer = &np
		if err := s.endIssuer(ctx, j, res, v, actor); err != nil {
			return nil, err
		}
		return j, nil
	}
	res.Issuer = &np
	return fail(v, res)
}
