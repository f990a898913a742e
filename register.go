package keyport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// ---- Registration of personalized modules (flow 1, issuer route) ----

// GetBatch returns the batch called name (admins only).
func (s *Service) GetBatch(ctx context.Context, p Principal, name string) (*Batch, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.GetBatch(ctx, name)
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

// RegisterModule stores a module personalized for the derived batch called
// batch, with its domains (key source derived), in one transaction with a
// chained "perso" audit event. The event's detail is detail (what the
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
	if b.KeySource != KeyDerived {
		return false, Invalid("batch", "batch %q is an imported batch: its modules come from an import file", batch)
	}
	if len(m.Domains) == 0 {
		return false, Invalid("domains", "module %s has no domain to register", m.EID)
	}
	aids := make([]AID, len(m.Domains))
	for i, d := range m.Domains {
		if d.KeySource != KeyDerived {
			return false, Invalid("domains", "domain %s/%s of a derived batch has key source %q", m.EID, d.AID, d.KeySource)
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
// keys are not derived, or KCVs that differ where both are known (sequence
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
		if d.KeySource != KeyDerived {
			return fmt.Errorf("%w: domain %s/%s is registered with key source %s", ErrConflict, m.EID, d.AID, d.KeySource)
		}
		for _, n := range m.Domains {
			if n.AID == d.AID && len(n.KCV) > 0 && len(d.KCV) > 0 && !maps.Equal(n.KCV, d.KCV) {
				return fmt.Errorf("%w: domain %s/%s is registered with KCVs %v, the HSM derives %v", ErrConflict, m.EID, d.AID, d.KCV, n.KCV)
			}
		}
	}
	return nil
}
