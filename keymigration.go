package keyport

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// KeyMigration says what MigrateKeys did.
type KeyMigration struct {
	// Modules is how many modules had something moved; ISDKeySets, PSKs and
	// Domains count the key sets and PSKs wrapped or sealed anew.
	Modules, ISDKeySets, PSKs, Domains int
	// Batches lists the batches whose key source became KeyGenerated.
	Batches []string
	// Destroyed lists the labels of the old keys destroyed on the token.
	Destroyed []string
}

// migratePage is how many modules MigrateKeys reads at a time.
const migratePage = 200

// MigrateKeys moves a token made before card keys were wrapped at rest, and
// its database, to the key hierarchy of DESIGN.md (`keyport hsm init`): every
// module gets its sealed PSK (derived once from the old ISD master, so the
// card keeps the PSK it holds), every personalized module its ISD key blobs,
// every domain of a derived batch its first-key blobs under the new batch KEK
// (their KCVs checked against the stored ones), and every domain of an
// imported batch whose transport key has no unwrap template its blobs
// rewrapped under a batch KEK; then the old masters and transport keys are
// destroyed, so that no key on the token derives a card key or unwraps one
// into a readable object. Each module is committed on its own: a run that
// stops is finished by the next, and the old keys go only when every row is
// moved. A token with nothing old is left as it is.
func (s *Service) MigrateKeys(ctx context.Context, p Principal, m KeyMigrator) (*KeyMigration, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	legacy, err := m.LegacyKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := &KeyMigration{}
	if legacy.Empty() {
		return out, nil
	}
	if err := s.noImportUnderWay(ctx); err != nil {
		return nil, err
	}
	batches, err := s.Store.ListBatches(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[int64]*Batch{}
	oldTransport := map[string]bool{}
	for _, b := range legacy.Transport {
		oldTransport[b] = true
	}
	for i := range batches {
		byID[batches[i].ID] = &batches[i]
	}
	for after := int64(0); ; {
		page, err := s.Store.ModulesAfter(ctx, after, migratePage)
		if err != nil {
			return out, err
		}
		if len(page) == 0 {
			break
		}
		for i := range page {
			mod := &page[i]
			after = mod.ID
			b := byID[mod.BatchID]
			if b == nil {
				return out, fmt.Errorf("keyport: migrate keys: module %s: batch %d is unknown", mod.EID, mod.BatchID)
			}
			if err := s.migrateModule(ctx, p, m, b, mod, oldTransport[b.Name], out); err != nil {
				return out, fmt.Errorf("keyport: migrate keys of module %s: %w", mod.EID, err)
			}
		}
	}
	for _, b := range batches {
		if b.KeySource != KeyDerived && !(b.KeySource == KeyImported && oldTransport[b.Name]) {
			continue
		}
		if err := s.Custody.CreateBatchKEK(ctx, b.Name); err != nil && !errors.Is(err, ErrConflict) {
			return out, err
		}
		err := s.Store.Tx(ctx, func(tx Repo) error {
			if err := tx.SetBatchKeySource(ctx, b.ID, KeyGenerated); err != nil {
				return err
			}
			return s.audit(ctx, tx, p.Actor(), "hsm.migrate-batch", "batch:"+b.Name,
				map[string]any{"key_source": KeyGenerated, "was": b.KeySource})
		})
		if err != nil {
			return out, err
		}
		out.Batches = append(out.Batches, b.Name)
	}
	slices.Sort(out.Batches)
	// The old keys go only if no import began meanwhile: its hidden
	// modules were not migrated.
	if err := s.noImportUnderWay(ctx); err != nil {
		return out, err
	}
	if out.Destroyed, err = m.DestroyLegacyKeys(ctx); err != nil {
		return out, err
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		return s.audit(ctx, tx, p.Actor(), "hsm.migrate", "hsm", map[string]any{
			"modules": out.Modules, "isd_key_sets": out.ISDKeySets, "psks": out.PSKs, "domains": out.Domains,
			"batches": out.Batches, "destroyed": out.Destroyed})
	})
	return out, err
}

// migrateModule moves one module's keys and commits them.
func (s *Service) migrateModule(ctx context.Context, p Principal, m KeyMigrator, b *Batch, mod *Module, oldTransport bool, out *KeyMigration) error {
	var psk []byte
	var isd KeyBlobs
	var err error
	if len(mod.PSK) == 0 {
		if psk, err = m.LegacyPSK(ctx, mod.EID, mod.ISDAID); err != nil {
			return err
		}
	}
	if b.KeySource == KeyDerived && !mod.ISDKeys.Complete() {
		isd = KeyBlobs{}
		for _, u := range Usages {
			ref := KeyRef{EID: mod.EID, AID: mod.ISDAID, Usage: u, Source: KeyDerived}
			if isd[u], _, err = m.RewrapLegacy(ctx, ref); err != nil {
				return err
			}
		}
	}
	domains := map[int64]KeyBlobs{}
	for i := range mod.Domains {
		d := &mod.Domains[i]
		if d.KeySource != KeyDerived && !(d.KeySource == KeyImported && oldTransport) {
			continue
		}
		blobs := KeyBlobs{}
		for _, u := range Usages {
			ref := DomainKey(b.Name, d, u)
			blob, kcv, err := m.RewrapLegacy(ctx, ref)
			if err != nil {
				return err
			}
			if want, ok := d.KCV[u]; ok && want != kcv {
				return fmt.Errorf("%w: domain %s %s key: the stored KCV is %s, the old key's is %s; nothing was changed",
					ErrConflict, d.AID, u, want, kcv)
			}
			blobs[u] = blob
		}
		domains[d.ID] = blobs
	}
	if psk == nil && isd == nil && len(domains) == 0 {
		return nil
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetModuleKeys(ctx, mod.ID, isd, psk); err != nil {
			return err
		}
		for _, id := range slices.Sorted(maps.Keys(domains)) {
			if err := tx.SetDomainWrapped(ctx, id, KeyGenerated, domains[id]); err != nil {
				return err
			}
		}
		return s.audit(ctx, tx, p.Actor(), "hsm.migrate-module", "module:"+string(mod.EID), map[string]any{
			"psk": psk != nil, "isd_keys": isd != nil, "domains": len(domains)})
	})
	if err != nil {
		return err
	}
	out.Modules++
	out.Domains += len(domains)
	if psk != nil {
		out.PSKs++
	}
	if isd != nil {
		out.ISDKeySets++
	}
	return nil
}

// noImportUnderWay refuses (ErrConflict) while an import is unfinished: its
// modules are hidden from ModulesAfter until it is published.
func (s *Service) noImportUnderWay(ctx context.Context) error {
	imps, err := s.unfinishedImports(ctx, 1)
	if err != nil {
		return err
	}
	if len(imps) > 0 {
		return fmt.Errorf("keyport: migrate keys: an import into batch %d is under way (started %s): let it end, then run this again: %w",
			imps[0].BatchID, imps[0].StartedAt.Format(time.RFC3339), ErrConflict)
	}
	return nil
}
