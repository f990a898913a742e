package keyport

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"time"
)

// Batch is a set of modules made together; it owns the HSM keys their first
// keys come from (a KEK that keeps the keys perso generates, or a transport
// key for imported ones).
type Batch struct {
	ID        int64
	Name      string
	KeySource KeySource
	// AIDPrefix is the SSD AID scheme for batches keyport personalizes: SSD n gets
	// AIDPrefix ‖ n (one byte). Empty for imported batches.
	AIDPrefix AID
	CreatedAt time.Time
}

// TransportKeyExport is what a manufacturer receives for an imported batch:
// the batch transport key RSA-AES-wrapped to its public key, with the KCV.
type TransportKeyExport struct {
	Batch    string   `json:"batch"`
	Wrapped  []byte   `json:"wrapped"`
	KCV      string   `json:"kcv"`
	OAEPHash OAEPHash `json:"oaep_hash"`
}

// CreateBatch creates a batch and its HSM key. For an imported batch
// (manufacturer != nil) the transport key is returned wrapped to the
// manufacturer; for a batch keyport personalizes (KeyGenerated), the KEK
// that keeps its generated first keys never leaves the HSM.
func (s *Service) CreateBatch(ctx context.Context, p Principal, name string, aidPrefix AID, manufacturer *rsa.PublicKey) (*Batch, *TransportKeyExport, error) {
	if !p.Admin {
		return nil, nil, ErrForbidden
	}
	if err := validBatchName(name); err != nil {
		return nil, nil, err
	}
	b := &Batch{Name: name, KeySource: KeyGenerated, AIDPrefix: aidPrefix, CreatedAt: s.now().UTC()}
	if manufacturer != nil {
		if err := CheckRSAKey("manufacturer_pem", manufacturer); err != nil {
			return nil, nil, err
		}
		// The transport key leaves the HSM (wrapped to the manufacturer):
		// dual control.
		if err := s.underDualControl(ctx, ActionTransportExport, name); err != nil {
			return nil, nil, err
		}
		b.KeySource = KeyImported
	}
	if _, err := s.Store.GetBatch(ctx, name); err == nil {
		return nil, nil, fmt.Errorf("%w: batch %q exists", ErrConflict, name)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, nil, err
	}
	var export *TransportKeyExport
	if manufacturer != nil {
		wrapped, kcv, err := s.Custody.CreateTransportKey(ctx, name, manufacturer)
		if err != nil {
			return nil, nil, fmt.Errorf("keyport: create transport key for batch %q: %w", name, err)
		}
		export = &TransportKeyExport{Batch: name, Wrapped: wrapped, KCV: kcv, OAEPHash: s.Custody.OAEPHash()}
	} else if err := s.Custody.CreateBatchKEK(ctx, name); err != nil {
		return nil, nil, fmt.Errorf("keyport: create key-encryption key for batch %q: %w", name, err)
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateBatch(ctx, b); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "batch.create", "batch:"+name, map[string]any{"key_source": b.KeySource})
	})
	if err != nil {
		return nil, nil, err
	}
	return b, export, nil
}

func validBatchName(name string) error {
	if name == "" || len(name) > 64 {
		return invalid("name", "a batch name is 1 to 64 characters")
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return invalid("name", "a batch name may hold letters, digits, '-', '_' and '.' only")
		}
	}
	return nil
}

// ListBatches returns every batch (admins only).
func (s *Service) ListBatches(ctx context.Context, p Principal) ([]Batch, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListBatches(ctx)
}

// batch returns a batch by ID. Batches never change once created, so they
// are cached for the life of the process.
func (s *Service) batch(ctx context.Context, id int64) (*Batch, error) {
	if b, ok := s.batches.Load(id); ok {
		return b.(*Batch), nil
	}
	b, err := s.Store.GetBatchByID(ctx, id)
	if err != nil {
		return nil, err
	}
	s.batches.Store(id, b)
	return b, nil
}

// GetBatch returns the batch called name (admins only).
func (s *Service) GetBatch(ctx context.Context, p Principal, name string) (*Batch, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.GetBatch(ctx, name)
}
