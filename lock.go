package keyport

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// The lock and unlock operations of issuer jobs: SET STATUS of the SSD by
// the ISD (GPCS 11.10, PROTOCOLS.md §1.3: P1 40, P2 b8 = 1 locks, 0 returns
// the SSD to the state before the lock), confirmed by GET STATUS read-back.
const (
	OpLock   IssuerOp = "domain.lock"
	OpUnlock IssuerOp = "domain.unlock"
)

// lockParams are a lock job's parameters: the domain's AID, lock or
// unlock, and who asked ("admin" or "provider"; a provider may unlock only
// what it locked).
type lockParams struct {
	AID  AID    `json:"aid"`
	Lock bool   `json:"lock"`
	By   string `json:"by"`
}

// lockOp is the lock/unlock operation. Its dialog is idempotent: step 0
// reads the SSD's life cycle, step 1 sends SET STATUS only if the SSD is not
// already as wanted, and reads it back.
type lockOp struct{ p lockParams }

func init() {
	for _, op := range []IssuerOp{OpLock, OpUnlock} {
		RegisterIssuerOperation(op, func(pl *IssuerPayload) (IssuerOperation, error) {
			var p lockParams
			if err := json.Unmarshal(pl.Params, &p); err != nil || p.AID == "" {
				return nil, fmt.Errorf("keyport: %s job: bad parameters", pl.Op)
			}
			return lockOp{p}, nil
		})
	}
}

// LockCommands is step n of a lock (lock) or unlock (!lock) of SSD aid,
// given the plain answers of the steps before (the pure half of the
// operation): step 0 GET STATUS of the SSD; step 1 SET STATUS if the read
// state is not the wanted one, then GET STATUS again.
func LockCommands(aid AID, lock bool, n int, prev [][]gp.Response) []gp.Command {
	read := gp.GetStatus(gp.StatusApplications, false, aid.Bytes())
	if n == 0 {
		return []gp.Command{read}
	}
	if e, err := registryEntry(aid, prev[0]); err == nil && e.LifeCycle.Locked() == lock {
		return []gp.Command{read}
	}
	p2 := byte(0x00)
	if lock {
		p2 = gp.SetStatusLock
	}
	return []gp.Command{gp.SetStatus(gp.SetStatusApplication, p2, aid.Bytes()), read}
}

// JudgeLock judges the plain answers of LockCommands' steps 0..n: the job
// is done when the read-back of step 1 shows the SSD locked (lock) or not
// locked (!lock); any error status word fails it with that SW.
func JudgeLock(aid AID, lock bool, n int, answers [][]gp.Response) IssuerVerdict {
	if v, failed := FirstError(LockCommands(aid, lock, n, answers), answers[n]); failed {
		return v
	}
	step := answers[n]
	if len(step) == 0 {
		return IssuerVerdict{Outcome: IssuerFailed, Cause: "the module ran no command"}
	}
	e, err := registryEntry(aid, step[len(step)-1:])
	if err != nil {
		return IssuerVerdict{Outcome: IssuerFailed, Cause: err.Error()}
	}
	if n == 0 {
		return IssuerVerdict{Outcome: IssuerContinue}
	}
	if e.LifeCycle.Locked() != lock {
		return IssuerVerdict{Outcome: IssuerFailed, Cause: fmt.Sprintf("GET STATUS read-back shows the SSD %s", e.LifeCycle)}
	}
	return IssuerVerdict{Outcome: IssuerDone}
}

// registryEntry finds aid's entry in the GET STATUS answer among resps
// (the last one).
func registryEntry(aid AID, resps []gp.Response) (gp.RegistryEntry, error) {
	if len(resps) == 0 {
		return gp.RegistryEntry{}, fmt.Errorf("no GET STATUS answer")
	}
	es, err := gp.ParseGetStatus(resps[len(resps)-1].Data)
	if err != nil {
		return gp.RegistryEntry{}, fmt.Errorf("GET STATUS answer does not parse: %v", err)
	}
	for _, e := range es {
		if bytes.Equal(e.AID, aid.Bytes()) {
			return e, nil
		}
	}
	return gp.RegistryEntry{}, fmt.Errorf("GET STATUS does not list SSD %s", aid)
}

func (lockOp) Target() []byte { return nil }

func (o lockOp) Commands(_ context.Context, _ *IssuerEnv, n int, prev [][]gp.Response) ([]gp.Command, error) {
	if n > 1 {
		return nil, fmt.Errorf("keyport: lock job has no step %d", n)
	}
	return LockCommands(o.p.AID, o.p.Lock, n, prev), nil
}

func (o lockOp) Judge(_ *IssuerEnv, n int, answers [][]gp.Response) IssuerVerdict {
	return JudgeLock(o.p.AID, o.p.Lock, n, answers)
}

func (lockOp) Queued(context.Context, Repo, *IssuerEnv) error { return nil }

// Finish changes the domain's state only when the card confirmed: LOCKED
// (the store keeps the state before it), or back to that state.
func (o lockOp) Finish(ctx context.Context, tx Repo, env *IssuerEnv, v IssuerVerdict) (DomainState, error) {
	d, err := tx.GetDomain(ctx, env.Payload.EID, o.p.AID)
	if err != nil {
		return "", err
	}
	if v.Outcome != IssuerDone {
		return d.State, nil
	}
	if o.p.Lock {
		if err := tx.TransitionDomain(ctx, d.ID, From(EventLock), Locked, nil); err != nil {
			return "", err
		}
		return Locked, nil
	}
	to, err := Next(d.State, EventUnlock, d.PriorState)
	if err != nil {
		return "", err
	}
	if err := tx.TransitionDomain(ctx, d.ID, []DomainState{Locked}, to, nil); err != nil {
		return "", err
	}
	return to, nil
}

// LockDomain queues the issuer job that locks (lock) or unlocks SSD aid
// of module eid. The issuer's admins may lock and unlock any domain, a
// provider its own (others' are ErrNotFound), and unlock only a lock it set
// itself. The domain's state changes when the card confirms (lockOp.Finish);
// until then it is as it was. ErrConflict: the domain is in a state the
// event cannot start from (RELEASING, FAILED, already LOCKED, …) or another
// issuer job for it is pending; nothing is stored then.
func (s *Service) LockDomain(ctx context.Context, p Principal, eid EID, aid AID, lock bool) (*Job, error) {
	d, by, err := s.domainForCardChange(ctx, p, eid, aid)
	if err != nil {
		return nil, err
	}
	op, ev, action := OpLock, EventLock, "domain.lock.request"
	if !lock {
		op, ev, action = OpUnlock, EventUnlock, "domain.unlock.request"
	}
	if _, err := Next(d.State, ev, d.PriorState); err != nil {
		return nil, err
	}
	check := func(ctx context.Context, tx Repo) error {
		d, err := tx.GetDomain(ctx, eid, aid)
		if err != nil {
			return err
		}
		if _, err := Next(d.State, ev, d.PriorState); err != nil {
			return err
		}
		if !p.Admin && d.OwnerID != p.ProviderID {
			return ErrNotFound
		}
		if err := noPendingIssuerJob(ctx, tx, d); err != nil {
			return err
		}
		if !lock && !p.Admin {
			who, err := lockedBy(ctx, tx, d)
			if err != nil {
				return err
			}
			if who != "provider" {
				return fmt.Errorf("%w: the issuer locked this domain; only the issuer unlocks it", ErrForbidden)
			}
		}
		return nil
	}
	return s.QueueIssuerJob(ctx, IssuerJobRequest{EID: eid, Domain: d, Op: op, Params: lockParams{AID: aid, Lock: lock, By: by},
		Actor: p.Actor(), Action: action, In: check})
}

// noPendingIssuerJob fails with ErrConflict while an issuer job for d is
// QUEUED or SENT: one card-side change of a domain at a time.
func noPendingIssuerJob(ctx context.Context, tx Repo, d *Domain) error {
	jobs, err := tx.ListJobs(ctx, JobFilter{DomainID: d.ID, Kind: JobIssuer, States: []JobState{JobQueued, JobSent}, Limit: 1})
	if err != nil {
		return err
	}
	if len(jobs) > 0 {
		return fmt.Errorf("%w: issuer job %s (%s) for this domain is still %s", ErrConflict, jobs[0].Ref, jobs[0].Issuer.Op, jobs[0].State)
	}
	return nil
}

// lockedBy says who set the lock of locked domain d: the "by" of its last
// confirmed lock job.
func lockedBy(ctx context.Context, tx Repo, d *Domain) (string, error) {
	jobs, err := issuerJobs(ctx, tx, d.ID, JobDone)
	if err != nil {
		return "", err
	}
	for i := len(jobs) - 1; i >= 0; i-- {
		if pl := jobs[i].Issuer; pl != nil && pl.Op == OpLock {
			var lp lockParams
			if err := json.Unmarshal(pl.Params, &lp); err != nil {
				return "", err
			}
			return lp.By, nil
		}
	}
	return "admin", nil
}

// CardChange names a card-side change of a domain that an issuer job
// makes: its release (flow 10), lock or unlock.
type CardChange string

const (
	ChangeRelease CardChange = "release"
	ChangeLock    CardChange = "lock"
	ChangeUnlock  CardChange = "unlock"
)

// ChangeDomain queues change c of domain eid/aid: RequestRelease or
// LockDomain, whose errors and job it returns. An unknown change is
// ErrInvalid.
func (s *Service) ChangeDomain(ctx context.Context, p Principal, eid EID, aid AID, c CardChange) (*Job, error) {
	switch c {
	case ChangeRelease:
		return s.RequestRelease(ctx, p, eid, aid)
	case ChangeLock, ChangeUnlock:
		return s.LockDomain(ctx, p, eid, aid, c == ChangeLock)
	}
	return nil, Invalid("change", "release, lock or unlock, not %q", c)
}

// domainForCardChange is the domain an issuer job of p's changes, and who
// asks ("admin" or "provider"): an admin's any domain, a provider's only
// its own (another's is ErrNotFound).
func (s *Service) domainForCardChange(ctx context.Context, p Principal, eid EID, aid AID) (*Domain, string, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, "", ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, "", err
	}
	if p.Admin {
		return d, "admin", nil
	}
	if d.OwnerID != p.ProviderID {
		return nil, "", ErrNotFound
	}
	return d, "provider", nil
}
