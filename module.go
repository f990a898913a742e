package keyport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Module is one secure module (UICC/eSE) known by its EID.
type Module struct {
	ID        int64
	EID       EID
	BatchID   int64
	ISDAID    AID
	LastSeen  *time.Time
	CreatedAt time.Time
	Domains   []Domain
	// ISDKeys holds the ISD's keys as KWP blobs under the ISD KEK, for a
	// module keyport personalized; nil for an imported module, whose ISD
	// keys stay with the manufacturer.
	ISDKeys KeyBlobs
	// PSK is the module's TLS-PSK sealed by the HSM (SecretSealer, bound to
	// the EID): the one card secret whose clear value the TLS layer needs.
	PSK []byte
}

// Domain is one supplementary security domain on a module.
type Domain struct {
	ID       int64
	ModuleID int64
	// BatchID is the batch of the domain's module.
	BatchID int64
	EID     EID
	AID     AID
	KVN     int // key version number of the current key set
	State   DomainState
	// PriorState is the state before a lock, for unlock.
	PriorState DomainState
	OwnerID    string // provider ID; empty while UNASSIGNED
	KeySource  KeySource
	// Wrapped holds each first key as a KWP blob: under the batch KEK
	// (KeyGenerated) or, as the manufacturer delivered it, under the batch
	// transport key (KeyImported).
	Wrapped KeyBlobs
	// KCV holds the GP key check value (3 bytes, upper-case hex) of each first key.
	KCV map[KeyUsage]string
	// SeqCounter is the SCP03 sequence counter keyport believes the card has
	// for this key set; a precomputed script uses it.
	SeqCounter int
	// SeqUnverified: keyport lost track of the counter (an answer was
	// lost after the script went out) and reads it again in the module's
	// next admin session (resync.go); SeqCounter is stale meanwhile.
	SeqUnverified bool
	UpdatedAt     time.Time
	// Pending are the key sets the card may hold instead of KVN after a
	// key change whose outcome is unproven (PendingKeys): a rotation of a
	// PERSONALIZED domain, or the first key change of an ASSIGNED one.
	// Derived from the job history: Service.GetDomain fills it, the store
	// never does.
	Pending []PendingKeys
}

// is reports whether d is in state s or LOCKED from it: a lock keeps what
// the domain's scripts may be (the card refuses the locked SSD's SELECT).
func (d *Domain) is(s DomainState) bool {
	return d.State == s || d.State == Locked && d.PriorState == s
}

// ModuleView is what a provider may see of a module: the domains it can
// claim and the ones it owns, never another provider's; LastSeen only for
// admins and providers that own a domain on it.
type ModuleView struct {
	EID      EID
	ISDAID   AID
	LastSeen *time.Time
	Domains  []Domain
	// PendingJobs counts the card-link jobs (QUEUED or SENT) waiting for
	// the module: all of them for an admin, a provider's own for it.
	PendingJobs int
	// MSISDN is the module's E.164 number for SMS reach (ota.go), for
	// admins only; "" when it has none.
	MSISDN string
}

// LookupModule finds a module by EID for the caller.
func (s *Service) LookupModule(ctx context.Context, p Principal, eid EID) (*ModuleView, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	v := &ModuleView{EID: m.EID, ISDAID: m.ISDAID}
	if p.Admin {
		// When the card last had an admin session says something about a
		// customer's device: the issuer's business, not a provider's.
		v.LastSeen = m.LastSeen
		o, err := s.Store.GetModuleOTA(ctx, m.ID)
		if err != nil {
			return nil, err
		}
		v.MSISDN = o.MSISDN
	}
	for _, d := range m.Domains {
		if p.Admin || d.State == Unassigned || d.OwnerID == p.ProviderID {
			v.Domains = append(v.Domains, redactDomain(d))
		}
		if !p.Admin && d.OwnerID == p.ProviderID {
			// A provider with a domain here needs the module's
			// reachability (flow 4): whether its jobs can run soon.
			v.LastSeen = m.LastSeen
		}
	}
	jobs, err := s.Store.ListJobs(ctx, JobFilter{ModuleID: m.ID, Kinds: CardJobKinds, States: []JobState{JobQueued, JobSent}, Limit: 500})
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if p.Admin || j.ProviderID == p.ProviderID {
			v.PendingJobs++
		}
	}
	return v, nil
}

// redactDomain drops the stored wrapped keys from a domain shown to a caller;
// they are wrapped, but nobody outside the HSM has a use for them.
func redactDomain(d Domain) Domain {
	d.Wrapped = nil
	return d
}

// ListDomains returns the caller's domains.
func (s *Service) ListDomains(ctx context.Context, p Principal) ([]Domain, error) {
	if p.ProviderID == "" {
		return nil, ErrForbidden
	}
	ds, err := s.Store.ListDomains(ctx, p.ProviderID)
	for i := range ds {
		ds[i] = redactDomain(ds[i])
	}
	return ds, err
}

// GetDomain returns one of the caller's domains (admins see all), with
// its pending key sets (pendingKeys).
func (s *Service) GetDomain(ctx context.Context, p Principal, eid EID, aid AID) (*Domain, error) {
	if !p.Admin && p.ProviderID == "" {
		// An unassigned domain has no owner: a caller with no provider must
		// not match it.
		return nil, ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if !p.Admin && d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	r := redactDomain(*d)
	if r.Pending, err = pendingKeys(ctx, s.Store, d); err != nil {
		return nil, err
	}
	return &r, nil
}

// ExportHandsetPSK returns module eid's TLS-PSK for the handset agent.
//
// A real UICC receives its PSK at personalization and runs the TLS itself
// (GP Amendment B: BIP carries the card's TLS through the phone), so in the
// field the PSK never leaves card and HSM. keyport's handset agent plays both
// the phone and the card's TLS stack, and so needs the PSK in a file
// (`keyport agent --psk-file`). This is the one, audited way to get it:
// issuer admins only, under dual control (ActionPSKExport), one audit event
// per export.
func (s *Service) ExportHandsetPSK(ctx context.Context, p Principal, eid EID) ([]byte, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	if err := s.underDualControl(ctx, ActionPSKExport, string(eid)); err != nil {
		return nil, err
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	psk, err := s.modulePSK(ctx, m.EID, m.PSK)
	if err != nil {
		return nil, fmt.Errorf("keyport: PSK of module %s: %w", eid, err)
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		return s.audit(ctx, tx, p.Actor(), "module.psk-export", "module:"+string(eid),
			map[string]any{"identity": string(eid), "reason": "handset agent"})
	})
	if err != nil {
		return nil, err
	}
	return psk, nil
}

// GetModule returns the stored module eid with its domains, their KCVs and
// sequence counters (admins only); ErrNotFound if the store has no such
// module.
func (s *Service) GetModule(ctx context.Context, p Principal, eid EID) (*Module, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.GetModule(ctx, eid)
}

// RegisterModule stores a module personalized for the batch called batch,
// with its ISD keys, its sealed PSK and its domains (key source generated),
// in one transaction with a chained "perso" audit event, and drops the
// run's PersoKeys record. The event's detail is detail (what the
// station did, e.g. whether it replaced the ISD keys) with the batch, the
// ISD AID and the domains' AIDs.
//
// A module the store has already, stored by a concurrent or an earlier run,
// is accepted when it is the same registration (SameRegistration): nothing
// is written and already is true. Any other difference is ErrConflict.
func (s *Service) RegisterModule(ctx context.Context, p Principal, batch string, m *ModuleImport, detail map[string]any) (already bool, err error) {
	if !p.Admin {
		return false, ErrForbidden
	}
	b, err := s.Store.GetBatch(ctx, batch)
	if err != nil {
		return false, fmt.Errorf("keyport: register module %s: batch %s: %w", m.EID, batch, err)
	}
	if b.KeySource != KeyGenerated {
		return false, Invalid("batch", "batch %q has key source %s: only a batch whose keys keyport generates is personalized", batch, b.KeySource)
	}
	if len(m.Domains) == 0 {
		return false, Invalid("domains", "module %s has no domain to register", m.EID)
	}
	if !m.ISDKeys.Complete() || len(m.PSK) == 0 {
		return false, Invalid("module", "module %s is registered with its ISD keys and PSK", m.EID)
	}
	aids := make([]AID, len(m.Domains))
	for i, d := range m.Domains {
		if d.KeySource != KeyGenerated || !d.Wrapped.Complete() {
			return false, Invalid("domains", "domain %s/%s needs generated, wrapped first keys (key source %q)", m.EID, d.AID, d.KeySource)
		}
		aids[i] = d.AID
	}
	d := maps.Clone(detail)
	if d == nil {
		d = map[string]any{}
	}
	d["batch"], d["isd_aid"], d["domains"] = b.Name, m.ISDAID, aids
	err = s.Store.Tx(ctx, func(tx Repo) error {
		n, err := tx.ImportModules(ctx, b.ID, oneModule(m))
		if err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("store imported %d modules, want 1", n)
		}
		if err := tx.DeletePersoKeys(ctx, m.EID); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "perso", "module:"+string(m.EID), d)
	})
	if errors.Is(err, ErrConflict) {
		stored, gerr := s.Store.GetModule(ctx, m.EID)
		if gerr != nil {
			return false, err
		}
		if derr := SameRegistration(stored, b, m); derr != nil {
			return false, derr
		}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, nil
}

func oneModule(m *ModuleImport) func() (*ModuleImport, error) {
	done := false
	return func() (*ModuleImport, error) {
		if done {
			return nil, nil
		}
		done = true
		return m, nil
	}
}

// SameRegistration reports how the stored module differs from registering
// m in batch b: another batch, another ISD, other domains, a domain whose
// keys keyport did not generate, or KCVs that differ where both are known (sequence
// counters aside: they move with every authentication). The error wraps
// ErrConflict; nil means m is registered already.
func SameRegistration(stored *Module, b *Batch, m *ModuleImport) error {
	if stored.BatchID != b.ID {
		return fmt.Errorf("%w: module %s is registered in another batch (id %d), not %s", ErrConflict, m.EID, stored.BatchID, b.Name)
	}
	if stored.ISDAID != m.ISDAID {
		return fmt.Errorf("%w: module %s is registered with ISD %s, the card has %s", ErrConflict, m.EID, stored.ISDAID, m.ISDAID)
	}
	var have, want []string
	for _, d := range stored.Domains {
		have = append(have, string(d.AID))
	}
	for _, d := range m.Domains {
		want = append(want, string(d.AID))
	}
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		return fmt.Errorf("%w: module %s is registered with domains %v, perso would register %v", ErrConflict, m.EID, have, want)
	}
	for _, d := range stored.Domains {
		if d.KeySource != KeyGenerated {
			return fmt.Errorf("%w: domain %s/%s is registered with key source %s", ErrConflict, m.EID, d.AID, d.KeySource)
		}
		for _, n := range m.Domains {
			if n.AID == d.AID && len(n.KCV) > 0 && len(d.KCV) > 0 && !maps.Equal(n.KCV, d.KCV) {
				return fmt.Errorf("%w: domain %s/%s is registered with KCVs %v, perso loaded %v", ErrConflict, m.EID, d.AID, d.KCV, n.KCV)
			}
		}
	}
	return nil
}
