package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/keyport/keyport"
)

// Card-key blobs at rest: what a perso run generated before the module is
// registered, and the writes `keyport hsm init` makes when it moves a token
// made before keys were wrapped at rest.

type persoKeysRow struct {
	EID       string    `gorm:"column:eid;primaryKey"`
	BatchID   int64     `gorm:"column:batch_id"`
	ISDAID    string    `gorm:"column:isd_aid"`
	Keys      string    `gorm:"column:keys"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

func (persoKeysRow) TableName() string { return "perso_keys" }

// persoKeysJSON is the keys column: blobs in base64 (encoding/json's []byte).
type persoKeysJSON struct {
	ISD keyport.KeyBlobs                 `json:"isd,omitempty"`
	PSK []byte                           `json:"psk,omitempty"`
	SSD map[keyport.AID]keyport.KeyBlobs `json:"ssd,omitempty"`
	OTA keyport.KeyBlobs                 `json:"ota,omitempty"`
}

// GetPersoKeys returns the perso record of eid; ErrNotFound if none.
func (r *repo) GetPersoKeys(ctx context.Context, eid keyport.EID) (*keyport.PersoKeys, error) {
	var row persoKeysRow
	if err := r.r.WithContext(ctx).Where("eid = ?", string(eid)).Take(&row).Error; err != nil {
		return nil, wrap("get perso keys", err)
	}
	var j persoKeysJSON
	if err := json.Unmarshal([]byte(row.Keys), &j); err != nil {
		// Wrapped key material: name the module, not the value.
		return nil, fmt.Errorf("store: get perso keys of %s: the stored keys are not valid JSON", eid)
	}
	return &keyport.PersoKeys{EID: eid, BatchID: row.BatchID, ISDAID: keyport.AID(row.ISDAID),
		ISD: j.ISD, PSK: j.PSK, SSD: j.SSD, OTA: j.OTA, UpdatedAt: row.UpdatedAt.UTC()}, nil
}

// PutPersoKeys stores k, replacing the record of its EID.
func (r *repo) PutPersoKeys(ctx context.Context, k *keyport.PersoKeys) error {
	b, err := json.Marshal(persoKeysJSON{ISD: k.ISD, PSK: k.PSK, SSD: k.SSD, OTA: k.OTA})
	if err != nil {
		return fmt.Errorf("store: put perso keys: %w", err)
	}
	row := persoKeysRow{EID: string(k.EID), BatchID: k.BatchID, ISDAID: string(k.ISDAID), Keys: string(b),
		UpdatedAt: dbTime(k.UpdatedAt)}
	err = r.writeTx(ctx, "put perso keys", func(db *gorm.DB) error {
		return wrap("put perso keys", db.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "eid"}},
			DoUpdates: clause.AssignmentColumns([]string{"batch_id", "isd_aid", "keys", "updated_at"}),
		}).Create(&row).Error)
	})
	return err
}

// DeletePersoKeys deletes the perso record of eid, if any.
func (r *repo) DeletePersoKeys(ctx context.Context, eid keyport.EID) error {
	return wrap("delete perso keys", r.w.WithContext(ctx).Exec(`DELETE FROM perso_keys WHERE eid = ?`, string(eid)).Error)
}

// ModulesAfter returns up to limit modules with ID > afterID, in ID order,
// each with its domains.
func (r *repo) ModulesAfter(ctx context.Context, afterID int64, limit int) ([]keyport.Module, error) {
	var eids []string
	err := r.r.WithContext(ctx).Raw(`SELECT eid FROM modules WHERE id > ? ORDER BY id LIMIT ?`, afterID, limit).
		Scan(&eids).Error
	if err != nil {
		return nil, wrap("list modules", err)
	}
	out := make([]keyport.Module, 0, len(eids))
	for _, eid := range eids {
		m, err := r.GetModule(ctx, keyport.EID(eid))
		if errors.Is(err, keyport.ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *m)
	}
	return out, nil
}

// SetModuleKeys stores a module's ISD key blobs and sealed PSK (nil: unchanged).
func (r *repo) SetModuleKeys(ctx context.Context, moduleID int64, isd keyport.KeyBlobs, psk []byte) error {
	set := map[string]any{}
	if isd != nil {
		set["isd_keys"] = string(appendWrapped(nil, isd))
	}
	if psk != nil {
		set["psk_sealed"] = psk
	}
	if len(set) == 0 {
		return nil
	}
	return r.updateRow(ctx, "set module keys", "modules", moduleID, set)
}

// SetDomainWrapped stores a domain's first-key blobs and their source.
func (r *repo) SetDomainWrapped(ctx context.Context, domainID int64, source keyport.KeySource, wrapped keyport.KeyBlobs) error {
	return r.updateRow(ctx, "set domain wrapped keys", "domains", domainID, map[string]any{
		"key_source": string(source), "wrapped": string(appendWrapped(nil, wrapped)), "updated_at": now()})
}

// SetBatchKeySource changes a batch's key source.
func (r *repo) SetBatchKeySource(ctx context.Context, batchID int64, source keyport.KeySource) error {
	return r.updateRow(ctx, "set batch key source", "batches", batchID, map[string]any{"key_source": string(source)})
}
