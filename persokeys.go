package keyport

import (
	"context"
	"slices"
	"time"
)

// PersoKeys is what a personalization run generated for one module before it
// wrote any of it to the card: the ISD key set, the module's PSK and each
// SSD's first key set, all as the HSM returned them (KWP blobs under the
// ISD and batch KEKs, the PSK sealed). Card keys are generated, not derived,
// so a key the card may hold must be stored before it is sent: a run that
// is interrupted after the card took a key finds it here, and the next run
// goes on with the same keys. RegisterModule moves the keys into the module
// and deletes the record.
type PersoKeys struct {
	EID     EID
	BatchID int64
	ISDAID  AID
	ISD     KeyBlobs
	PSK     []byte
	SSD     map[AID]KeyBlobs
	// OTA is the ISD's OTA (SCP80) key set at OTAKVN, under the ISD KEK.
	OTA KeyBlobs
	// UpdatedAt is when the record was last stored.
	UpdatedAt time.Time
}

// PersoKeys returns the keys an earlier personalization run generated for
// module eid; ErrNotFound if none is pending (admins only).
func (s *Service) PersoKeys(ctx context.Context, p Principal, eid EID) (*PersoKeys, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.GetPersoKeys(ctx, eid)
}

// SavePersoKeys stores what a personalization run generated for a module,
// before the run sends any of it to the card, with an audit event naming
// what is new (never a key). what says which keys were generated.
func (s *Service) SavePersoKeys(ctx context.Context, p Principal, k *PersoKeys, what []string) error {
	if !p.Admin {
		return ErrForbidden
	}
	if k.EID == "" || k.ISDAID == "" || k.BatchID == 0 {
		return Invalid("module", "a perso record needs the EID, the ISD AID and the batch")
	}
	k.UpdatedAt = s.now().UTC()
	return s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.PutPersoKeys(ctx, k); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "perso.keys-generated", "module:"+string(k.EID),
			map[string]any{"generated": slices.Clone(what), "isd_aid": k.ISDAID})
	})
}
