package keyport

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
)

// The provider sandbox (README, "Provider sandbox"): virtual modules a
// provider claims and scripts like real ones, with faults chosen per module.
// Sandbox state lives in a second Service over its own store and HSM token
// (SandboxFaults set marks it): production rows are only read, to know who
// the provider is and its wrapping keys and webhook URL.

// FaultKind names a sandbox fault.
type FaultKind string

// Sandbox faults.
const (
	// FaultNone: the module behaves.
	FaultNone FaultKind = "none"
	// FaultOffline: the module's agent never connects; jobs wait and expire.
	FaultOffline FaultKind = "offline"
	// FaultDrop: the connection drops after command n of a script; the
	// card runs commands 1..n only, and the agent resumes with what ran.
	FaultDrop FaultKind = "drop"
	// FaultSW: the card answers SW to command n instead of running it.
	FaultSW FaultKind = "sw"
	// FaultSlow: every APDU is answered Delay late.
	FaultSlow FaultKind = "slow"
	// FaultDrift: the card's SCP03 sequence counter jumps by Drift before
	// the script's INITIALIZE UPDATE.
	FaultDrift FaultKind = "drift"
	// FaultLost: the card runs the script; its answer never reaches the
	// server.
	FaultLost FaultKind = "lost"
)

// Fault bounds.
const (
	MaxFaultCommand = 255
	MaxFaultDelay   = 30 * time.Second
	MaxFaultDrift   = 1000
	maxFaultJSON    = 1024
)

// Fault is one module's sandbox fault. Command counts the script's
// commands from 1, after the agent's SELECT of the targeted domain.
type Fault struct {
	Kind    FaultKind     `json:"fault"`
	Command int           `json:"command,omitempty"`
	SW      string        `json:"sw,omitempty"`
	Delay   time.Duration `json:"-"`
	Drift   int           `json:"drift,omitempty"`
}

// faultJSON is the fault's wire form: the delay in milliseconds.
type faultJSON struct {
	Kind    FaultKind `json:"fault"`
	Command int       `json:"command,omitempty"`
	SW      string    `json:"sw,omitempty"`
	DelayMS int64     `json:"delay_ms,omitempty"`
	Drift   int       `json:"drift,omitempty"`
}

// MarshalJSON writes the fault spec as ParseFault reads it, with its
// description.
func (f Fault) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		faultJSON
		Description string `json:"description"`
	}{faultJSON{Kind: f.kind(), Command: f.Command, SW: f.SW, DelayMS: f.Delay.Milliseconds(), Drift: f.Drift}, f.String()})
}

func (f Fault) kind() FaultKind {
	if f.Kind == "" {
		return FaultNone
	}
	return f.Kind
}

// Active reports whether the fault does anything.
func (f Fault) Active() bool { return f.kind() != FaultNone }

// ParseFault reads a fault spec: {"fault":"sw","command":3,"sw":"6A88"},
// {"fault":"drop","command":2}, {"fault":"slow","delay_ms":200},
// {"fault":"drift","drift":5}, {"fault":"offline"}, {"fault":"lost"},
// {"fault":"none"}. Unknown fields, fields the kind does not take and
// values out of bounds are refused.
func ParseFault(b []byte) (Fault, error) {
	if len(b) > maxFaultJSON {
		return Fault{}, Invalid("fault", "the fault spec is over %d bytes", maxFaultJSON)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var in faultJSON
	if err := dec.Decode(&in); err != nil {
		return Fault{}, Invalid("fault", "not a fault spec: %v", err)
	}
	if dec.More() {
		return Fault{}, Invalid("fault", "one JSON object only")
	}
	f := Fault{Kind: in.Kind, Command: in.Command, SW: strings.ToUpper(in.SW), Drift: in.Drift}
	takes := map[string]bool{}
	switch in.Kind {
	case FaultNone, FaultOffline, FaultLost:
	case FaultDrop:
		takes["command"] = true
	case FaultSW:
		takes["command"], takes["sw"] = true, true
		if len(f.SW) != 4 {
			return Fault{}, Invalid("sw", "4 hex digits, e.g. 6A88")
		}
		sw, err := hex.DecodeString(f.SW)
		if err != nil {
			return Fault{}, Invalid("sw", "4 hex digits, e.g. 6A88")
		}
		if sw[0] == 0x90 && sw[1] == 0 || sw[0] == 0x61 {
			return Fault{}, Invalid("sw", "%s is not an error status word", f.SW)
		}
	case FaultSlow:
		takes["delay_ms"] = true
		if in.DelayMS < 1 || in.DelayMS > MaxFaultDelay.Milliseconds() {
			return Fault{}, Invalid("delay_ms", "1 to %d milliseconds", MaxFaultDelay.Milliseconds())
		}
		f.Delay = time.Duration(in.DelayMS) * time.Millisecond
	case FaultDrift:
		takes["drift"] = true
		if in.Drift < 1 || in.Drift > MaxFaultDrift {
			return Fault{}, Invalid("drift", "1 to %d", MaxFaultDrift)
		}
	case "":
		return Fault{}, Invalid("fault", "missing: one of none, offline, drop, sw, slow, drift, lost")
	default:
		return Fault{}, Invalid("fault", "unknown fault %q: one of none, offline, drop, sw, slow, drift, lost", in.Kind)
	}
	if takes["command"] && (in.Command < 1 || in.Command > MaxFaultCommand) {
		return Fault{}, Invalid("command", "1 to %d: the script's command the fault hits", MaxFaultCommand)
	}
	for field, set := range map[string]bool{"command": in.Command != 0, "sw": in.SW != "", "delay_ms": in.DelayMS != 0, "drift": in.Drift != 0} {
		if set && !takes[field] {
			return Fault{}, Invalid(field, "the fault %q takes no %s", in.Kind, field)
		}
	}
	return f, nil
}

// String describes the fault in words.
func (f Fault) String() string {
	switch f.kind() {
	case FaultOffline:
		return "offline: the module's agent never connects"
	case FaultDrop:
		return fmt.Sprintf("connection dropped after command %d of the script", f.Command)
	case FaultSW:
		return fmt.Sprintf("the card answers %s to command %d of the script", f.SW, f.Command)
	case FaultSlow:
		return fmt.Sprintf("slow answers: %s per APDU", f.Delay)
	case FaultDrift:
		return fmt.Sprintf("counter drift: the card's sequence counter jumps by %d", f.Drift)
	case FaultLost:
		return "lost answer: the card runs the script, its answer never reaches keyport"
	}
	return "none"
}

// SandboxModule is a sandbox module as its users see it.
type SandboxModule struct {
	EID   EID   `json:"eid"`
	Fault Fault `json:"fault"`
	// Free counts its UNASSIGNED domains.
	Free int `json:"free_domains"`
	// Yours: the caller holds a domain of it, so it is the caller's to
	// test on (set its fault, claim its other domains). Taken: another
	// provider does (for an admin: any provider does).
	Yours   bool `json:"yours"`
	Taken   bool `json:"taken"`
	Sandbox bool `json:"sandbox"`
}

// Sandbox is the provider sandbox: Box is the sandbox Service (its own
// store and HSM token; Box.SandboxFaults set), Prod the production Service,
// which the sandbox only reads.
//
// The pool is shared, but a module is one provider's once it holds a domain
// of it: only that provider (or an admin) sets its fault, and other
// providers' claims of its domains are refused, so that no provider changes
// the module under another's test.
type Sandbox struct {
	Prod, Box *Service
	// Modules lists the sandbox modules' EIDs (the shared pool).
	Modules func() []EID
	// claimMu makes a claim's check that the module is free or the
	// caller's one with the claim (the sandbox's store is this process's).
	claimMu sync.Mutex
}

// Faults is the fault book of the sandbox.
func (sb *Sandbox) Faults() FaultBook { return sb.Box.SandboxFaults }

// enter copies what the sandbox needs of provider p from production: its
// row (name, kind, status, webhook URL) and its wrapping keys' public
// halves. Nothing secret (API tokens, users, passwords) is copied.
func (sb *Sandbox) enter(ctx context.Context, p Principal) error {
	if p.ProviderID == "" {
		return fmt.Errorf("%w: the sandbox is for providers", ErrForbidden)
	}
	prov, err := sb.Prod.Store.GetProvider(ctx, p.ProviderID)
	if err != nil {
		return err
	}
	if prov.Status != ProviderApproved {
		return fmt.Errorf("%w: the provider is %s, not approved", ErrForbidden, prov.Status)
	}
	keys, err := sb.Prod.Store.ListWrappingKeys(ctx, p.ProviderID)
	if err != nil {
		return err
	}
	return sb.Box.Store.Tx(ctx, func(tx Repo) error {
		have, err := tx.GetProvider(ctx, prov.ID)
		switch {
		case errors.Is(err, ErrNotFound):
			cp := *prov
			if err := tx.CreateProvider(ctx, &cp); err != nil {
				return err
			}
		case err != nil:
			return err
		default:
			if have.Status != prov.Status {
				if err := tx.SetProviderStatus(ctx, prov.ID, prov.Status); err != nil {
					return err
				}
			}
			if have.WebhookURL != prov.WebhookURL {
				if err := tx.SetWebhookURL(ctx, prov.ID, prov.WebhookURL); err != nil {
					return err
				}
			}
		}
		if prov.WebhookURL != "" && have == nil {
			if err := tx.SetWebhookURL(ctx, prov.ID, prov.WebhookURL); err != nil {
				return err
			}
		}
		for i := range keys {
			k := keys[i]
			if _, err := tx.GetWrappingKey(ctx, p.ProviderID, k.ID); err == nil {
				continue
			} else if !errors.Is(err, ErrNotFound) {
				return err
			}
			if err := tx.CreateWrappingKey(ctx, &WrappingKey{ID: k.ID, ProviderID: k.ProviderID, PublicKeyDER: k.PublicKeyDER,
				SHA256: k.SHA256, Bits: k.Bits, CreatedAt: k.CreatedAt}); err != nil {
				return err
			}
		}
		return nil
	})
}

// ListModules lists the sandbox modules with their faults and free domains.
func (sb *Sandbox) ListModules(ctx context.Context, p Principal) ([]SandboxModule, error) {
	if !p.Admin {
		if err := sb.enter(ctx, p); err != nil {
			return nil, err
		}
	}
	var out []SandboxModule
	for _, eid := range sb.Modules() {
		m, err := sb.Box.Store.GetModule(ctx, eid)
		if err != nil {
			return nil, err
		}
		sm := SandboxModule{EID: eid, Fault: sb.Faults().Fault(eid), Sandbox: true}
		for _, d := range m.Domains {
			if d.State == Unassigned {
				sm.Free++
			}
		}
		h := moduleHolders(m)
		sm.Yours = p.ProviderID != "" && h[p.ProviderID]
		delete(h, p.ProviderID)
		sm.Taken = len(h) > 0
		out = append(out, sm)
	}
	return out, nil
}

// module checks that eid is a sandbox module.
func (sb *Sandbox) module(eid EID) error {
	for _, e := range sb.Modules() {
		if e == eid {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is no sandbox module", ErrNotFound, eid)
}

// holders returns the providers holding a domain of module eid.
func (sb *Sandbox) holders(ctx context.Context, eid EID) (map[string]bool, error) {
	m, err := sb.Box.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	return moduleHolders(m), nil
}

// moduleHolders returns the providers holding a domain of m.
func moduleHolders(m *Module) map[string]bool {
	h := map[string]bool{}
	for _, d := range m.Domains {
		if d.OwnerID != "" {
			h[d.OwnerID] = true
		}
	}
	return h
}

// errOthersModule refuses a provider a module another provider tests on.
func errOthersModule(eid EID) error {
	return fmt.Errorf("%w: sandbox module %s is another provider's test module; pick one with free domains that no one else holds", ErrConflict, eid)
}

// SetFault sets module eid's fault (FaultNone clears it): an admin, or the
// provider whose test module it is (it holds a domain of it and no other
// provider does). Audited in the sandbox's trail.
func (sb *Sandbox) SetFault(ctx context.Context, p Principal, eid EID, f Fault) error {
	if !p.Admin {
		if err := sb.enter(ctx, p); err != nil {
			return err
		}
	}
	if err := sb.module(eid); err != nil {
		return err
	}
	if !p.Admin {
		h, err := sb.holders(ctx, eid)
		if err != nil {
			return err
		}
		switch {
		case len(h) > 1 || len(h) == 1 && !h[p.ProviderID]:
			return errOthersModule(eid)
		case !h[p.ProviderID]:
			return fmt.Errorf("%w: claim a domain of sandbox module %s first: a module's fault is set by the provider testing on it", ErrForbidden, eid)
		}
	}
	if err := sb.Faults().SetFault(eid, f); err != nil {
		return err
	}
	return sb.Box.Store.Tx(ctx, func(tx Repo) error {
		return sb.Box.audit(ctx, tx, p.Actor(), "sandbox.fault.set", "module:"+string(eid), map[string]any{"fault": f.kind(), "description": f.String()})
	})
}

// Claim claims a sandbox domain (Service.Claim on the sandbox).
func (sb *Sandbox) Claim(ctx context.Context, p Principal, req ClaimRequest) (*Claim, bool, error) {
	if err := sb.enter(ctx, p); err != nil {
		return nil, false, err
	}
	if err := sb.module(req.EID); err != nil {
		return nil, false, err
	}
	sb.claimMu.Lock()
	defer sb.claimMu.Unlock()
	h, err := sb.holders(ctx, req.EID)
	if err != nil {
		return nil, false, err
	}
	delete(h, p.ProviderID)
	if len(h) > 0 {
		return nil, false, errOthersModule(req.EID)
	}
	return sb.Box.Claim(ctx, p, req)
}

// KeyPackage returns a sandbox domain's key package.
func (sb *Sandbox) KeyPackage(ctx context.Context, p Principal, eid EID, aid AID) ([]byte, error) {
	if err := sb.enter(ctx, p); err != nil {
		return nil, err
	}
	return sb.Box.KeyPackage(ctx, p, eid, aid)
}

// Domains lists the provider's sandbox domains.
func (sb *Sandbox) Domains(ctx context.Context, p Principal) ([]Domain, error) {
	if err := sb.enter(ctx, p); err != nil {
		return nil, err
	}
	return sb.Box.ListDomains(ctx, p)
}

// SubmitScript queues a script for a sandbox domain.
func (sb *Sandbox) SubmitScript(ctx context.Context, p Principal, eid EID, aid AID, req ScriptRequest) (*Job, error) {
	if err := sb.enter(ctx, p); err != nil {
		return nil, err
	}
	return sb.Box.SubmitScript(ctx, p, eid, aid, req)
}

// ChangeDomain queues the release, lock or unlock (c) of one of the
// provider's sandbox domains (Service.ChangeDomain on the sandbox). A
// release puts fresh first keys on the virtual module and proves them, and
// the domain is UNASSIGNED again: a module whose domains are all released
// is free for any provider to test on.
func (sb *Sandbox) ChangeDomain(ctx context.Context, p Principal, eid EID, aid AID, c CardChange) (*Job, error) {
	if err := sb.enter(ctx, p); err != nil {
		return nil, err
	}
	if err := sb.module(eid); err != nil {
		return nil, err
	}
	return sb.Box.ChangeDomain(ctx, p, eid, aid, c)
}

// GetJob returns one of the provider's sandbox jobs.
func (sb *Sandbox) GetJob(ctx context.Context, p Principal, ref string) (*Job, error) {
	return sb.Box.GetJob(ctx, p, ref)
}

// sandboxJobsShown is how many of its newest jobs the sandbox lists.
const sandboxJobsShown = 200

// ListJobs lists the sandbox's newest card jobs, oldest first: a
// provider's own, or all for an admin.
func (sb *Sandbox) ListJobs(ctx context.Context, p Principal) ([]Job, error) {
	if p.Admin {
		return sb.Box.ListJobs(ctx, p, JobFilter{Limit: sandboxJobsShown, Newest: true})
	}
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	return sb.Box.Store.ListJobs(ctx, JobFilter{Kinds: CardJobKinds, ProviderID: p.ProviderID, Limit: sandboxJobsShown, Newest: true})
}

// sandboxNote is what the fault book says the sandbox did to module eid
// since it was last asked, for a job's cause ("" outside the sandbox).
func (s *Service) sandboxNote(j *Job) string {
	if s.SandboxFaults == nil || !j.isCardJob() {
		return ""
	}
	eid, err := j.eid()
	if err != nil {
		return ""
	}
	return s.SandboxFaults.TakeInjected(eid)
}

// withSandboxNote appends the sandbox's note to a job's cause.
func withSandboxNote(cause, note string) string {
	switch {
	case note == "":
		return cause
	case cause == "":
		return "sandbox fault: " + note
	}
	return cause + " (sandbox fault: " + note + ")"
}

// IsSandbox reports whether s is a sandbox service.
func (s *Service) IsSandbox() bool { return s.SandboxFaults != nil }
