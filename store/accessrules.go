package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/keyport/keyport"
)

// accessRuleRow is a row of access_rules (migration 10): a provider's ARA-M
// rule by certificate hash, nothing secret.
type accessRuleRow struct {
	ID                string        `gorm:"column:id;primaryKey"`
	DomainID          int64         `gorm:"column:domain_id"`
	ProviderID        string        `gorm:"column:provider_id"`
	EID               string        `gorm:"column:eid"`
	AID               string        `gorm:"column:aid"`
	HashAlg           string        `gorm:"column:hash_alg"`
	Hash              string        `gorm:"column:hash"`
	Package           string        `gorm:"column:package"`
	APDU              string        `gorm:"column:apdu"`
	NFC               sql.NullInt64 `gorm:"column:nfc"`
	CarrierPrivileges bool          `gorm:"column:carrier_privileges"`
	State             string        `gorm:"column:state"`
	Cause             string        `gorm:"column:cause"`
	SW                string        `gorm:"column:sw"`
	JobRef            string        `gorm:"column:job_ref"`
	CreatedAt         time.Time     `gorm:"column:created_at"`
	UpdatedAt         time.Time     `gorm:"column:updated_at"`
}

func (accessRuleRow) TableName() string { return "access_rules" }

func (r accessRuleRow) model() keyport.AccessRule {
	m := keyport.AccessRule{ID: r.ID, DomainID: r.DomainID, ProviderID: r.ProviderID, EID: keyport.EID(r.EID),
		AID: keyport.AID(r.AID), HashAlg: r.HashAlg, Hash: r.Hash, Package: r.Package, APDU: r.APDU,
		CarrierPrivileges: r.CarrierPrivileges, State: keyport.AccessRuleState(r.State), Cause: r.Cause, SW: r.SW,
		JobRef: r.JobRef, CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC()}
	if r.NFC.Valid {
		v := r.NFC.Int64 == 1
		m.NFC = &v
	}
	return m
}

// CreateAccessRule inserts r; a second live rule of the domain for the
// same app (hash and package) is ErrConflict (access_rules_app).
func (r *repo) CreateAccessRule(ctx context.Context, a *keyport.AccessRule) error {
	if a.ID == "" {
		return fmt.Errorf("store: create access rule: no ID: %w", keyport.ErrInvalid)
	}
	t := now()
	row := accessRuleRow{ID: a.ID, DomainID: a.DomainID, ProviderID: a.ProviderID, EID: string(a.EID), AID: string(a.AID),
		HashAlg: a.HashAlg, Hash: a.Hash, Package: a.Package, APDU: a.APDU, CarrierPrivileges: a.CarrierPrivileges,
		State: string(a.State), Cause: a.Cause, SW: a.SW, JobRef: a.JobRef, CreatedAt: t, UpdatedAt: t}
	if a.NFC != nil {
		row.NFC = sql.NullInt64{Valid: true}
		if *a.NFC {
			row.NFC.Int64 = 1
		}
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create access rule", err)
	}
	a.CreatedAt, a.UpdatedAt = t, t
	return nil
}

// GetAccessRule returns the rule with the ID.
func (r *repo) GetAccessRule(ctx context.Context, id string) (*keyport.AccessRule, error) {
	var row accessRuleRow
	if err := r.r.WithContext(ctx).Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, wrap("get access rule", err)
	}
	m := row.model()
	return &m, nil
}

// ListAccessRules returns the domain's rules that are not REMOVED.
func (r *repo) ListAccessRules(ctx context.Context, domainID int64) ([]keyport.AccessRule, error) {
	var rows []accessRuleRow
	if err := r.r.WithContext(ctx).Where("domain_id = ? AND state <> ?", domainID, string(keyport.RuleRemoved)).
		Order("created_at, id").Find(&rows).Error; err != nil {
		return nil, wrap("list access rules", err)
	}
	out := make([]keyport.AccessRule, len(rows))
	for i, row := range rows {
		out[i] = row.model()
	}
	return out, nil
}

// SetAccessRuleState moves a rule that is not REMOVED (and, with onlyJob,
// whose job is onlyJob) in one conditional UPDATE.
func (r *repo) SetAccessRuleState(ctx context.Context, id, onlyJob string, to keyport.AccessRuleState, job, cause, sw string) (bool, error) {
	res := r.w.WithContext(ctx).Exec(`UPDATE access_rules SET state = ?, job_ref = ?, cause = ?, sw = ?, updated_at = ?
		WHERE id = ? AND state <> ? AND (? = '' OR job_ref = ?)`,
		string(to), job, cause, sw, now(), id, string(keyport.RuleRemoved), onlyJob, onlyJob)
	if res.Error != nil {
		return false, wrap("set access rule state", res.Error)
	}
	return res.RowsAffected == 1, nil
}
