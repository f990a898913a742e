package keyport

import (
	"context"
	"fmt"
)

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
