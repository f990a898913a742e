package keyport

import (
	"context"
	"fmt"
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
	// Imported holds, for KeyImported, each first key KWP-wrapped under the
	// batch transport key, as the manufacturer delivered it.
	Imported map[KeyUsage][]byte
	// KCV holds the GP key check value (3 bytes, upper-case hex) of each first key.
	KCV map[KeyUsage]string
	// SeqCounter is the SCP03 sequence counter keyport believes the card has
	// for this key set; a precomputed script uses it.
	SeqCounter int
	UpdatedAt  time.Time
}

// ModuleView is what a provider may see of a module: the domains it can
// claim and the ones it owns, never another provider's.
type ModuleView struct {
	EID      EID
	ISDAID   AID
	LastSeen *time.Time
	Domains  []Domain
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
	v := &ModuleView{EID: m.EID, ISDAID: m.ISDAID, LastSeen: m.LastSeen}
	for _, d := range m.Domains {
		if p.Admin || d.State == Unassigned || d.OwnerID == p.ProviderID {
			v.Domains = append(v.Domains, redactDomain(d))
		}
	}
	return v, nil
}

// redactDomain drops the stored wrapped keys from a domain shown to a caller;
// they are wrapped, but nobody outside the HSM has a use for them.
func redactDomain(d Domain) Domain {
	d.Imported = nil
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

// GetDomain returns one of the caller's domains (admins see all).
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
	return &r, nil
}

// ExportHandsetPSK returns module eid's TLS-PSK for the handset agent.
//
// A real UICC receives its PSK at personalization and runs the TLS itself
// (GP Amendment B: BIP carries the card's TLS through the phone), so in the
// field the PSK never leaves card and HSM. keyport's handset agent plays both
// the phone and the card's TLS stack, and so needs the PSK in a file
// (`keyport agent --psk-file`). This is the one, audited way to get it:
// issuer admins only, one audit event per export.
func (s *Service) ExportHandsetPSK(ctx context.Context, p Principal, eid EID) ([]byte, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	m, err := s.Store.GetModule(ctx, eid)
	if err != nil {
		return nil, err
	}
	if s.Link == nil {
		return nil, fmt.Errorf("%w: no link custody configured", ErrUnavailable)
	}
	psk, err := s.Link.ModulePSK(ctx, m.EID, m.ISDAID)
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
