package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/keyport/keyport"
)

type providerRow struct {
	ID         string    `gorm:"column:id;primaryKey"`
	Name       string    `gorm:"column:name"`
	Kind       string    `gorm:"column:kind"`
	Email      string    `gorm:"column:email"`
	Status     string    `gorm:"column:status"`
	WebhookURL string    `gorm:"column:webhook_url"`
	CreatedAt  time.Time `gorm:"column:created_at"`
}

func (providerRow) TableName() string { return "providers" }

// CreateProvider inserts p, choosing an ID if p has none; ErrConflict on a
// taken e-mail address (callers normalise its case).
func (r *repo) CreateProvider(ctx context.Context, p *keyport.Provider) error {
	row := providerRow{ID: p.ID, Name: p.Name, Kind: string(p.Kind), Email: p.Email, Status: string(p.Status),
		WebhookURL: p.WebhookURL, CreatedAt: dbTime(p.CreatedAt)}
	if row.ID == "" {
		row.ID = newID()
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create provider", err)
	}
	p.ID, p.CreatedAt = row.ID, row.CreatedAt
	return nil
}

// GetProvider returns the provider with id; ErrNotFound if there is none.
func (r *repo) GetProvider(ctx context.Context, id string) (*keyport.Provider, error) {
	var row providerRow
	if err := r.r.WithContext(ctx).Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, wrap("get provider", err)
	}
	return &keyport.Provider{ID: row.ID, Name: row.Name, Kind: keyport.ProviderKind(row.Kind), Email: row.Email,
		Status: keyport.ProviderStatus(row.Status), WebhookURL: row.WebhookURL, CreatedAt: row.CreatedAt.UTC()}, nil
}

type apiTokenRow struct {
	ID         string         `gorm:"column:id;primaryKey"`
	ProviderID sql.NullString `gorm:"column:provider_id"`
	Admin      bool           `gorm:"column:admin"`
	Name       string         `gorm:"column:name"`
	Hash       []byte         `gorm:"column:hash"`
	CreatedAt  time.Time      `gorm:"column:created_at"`
	RevokedAt  *time.Time     `gorm:"column:revoked_at"`
	// Migration 7.
	Owner       string         `gorm:"column:owner"`
	OwnerUserID sql.NullString `gorm:"column:owner_user_id"`
	ExpiresAt   *time.Time     `gorm:"column:expires_at"`
	LastUsedAt  *time.Time     `gorm:"column:last_used_at"`
}

func (apiTokenRow) TableName() string { return "api_tokens" }

func (row apiTokenRow) model() keyport.APIToken {
	return keyport.APIToken{ID: row.ID, ProviderID: row.ProviderID.String, Admin: row.Admin, Name: row.Name,
		Hash: row.Hash, CreatedAt: row.CreatedAt.UTC(), RevokedAt: utcPtr(row.RevokedAt), Owner: row.Owner,
		OwnerUserID: row.OwnerUserID.String, ExpiresAt: utcPtr(row.ExpiresAt), LastUsedAt: utcPtr(row.LastUsedAt)}
}

// CreateAPIToken inserts t (its hash only), choosing an ID if t has none.
func (r *repo) CreateAPIToken(ctx context.Context, t *keyport.APIToken) error {
	row := apiTokenRow{ID: t.ID, ProviderID: sql.NullString{String: t.ProviderID, Valid: t.ProviderID != ""},
		Admin: t.Admin, Name: t.Name, Hash: t.Hash, CreatedAt: dbTime(t.CreatedAt), RevokedAt: t.RevokedAt,
		Owner: t.Owner, OwnerUserID: sql.NullString{String: t.OwnerUserID, Valid: t.OwnerUserID != ""},
		ExpiresAt: dbTimePtr(t.ExpiresAt), LastUsedAt: dbTimePtr(t.LastUsedAt)}
	if row.ID == "" {
		row.ID = newID()
	}
	if row.RevokedAt != nil {
		at := dbTime(*row.RevokedAt)
		row.RevokedAt = &at
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create API token", err)
	}
	t.ID, t.CreatedAt, t.RevokedAt = row.ID, row.CreatedAt, row.RevokedAt
	return nil
}

// GetAPITokenByHash returns the unrevoked token with this SHA-256 hash;
// ErrNotFound for an unknown or revoked one.
func (r *repo) GetAPITokenByHash(ctx context.Context, hash []byte) (*keyport.APIToken, error) {
	// One query with the provider's status: authentication is on every request.
	rows, err := r.query(ctx, `SELECT t.id, t.provider_id, t.admin, t.name, t.hash, t.created_at,
		t.owner, t.owner_user_id, t.expires_at, t.last_used_at, p.status, u.disabled_at
		FROM api_tokens t LEFT JOIN providers p ON p.id = t.provider_id LEFT JOIN users u ON u.id = t.owner_user_id
		WHERE t.hash = ? AND t.revoked_at IS NULL`, hash)
	if err != nil {
		return nil, wrap("get API token", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, wrap("get API token", err)
		}
		return nil, wrap("get API token", keyport.ErrNotFound)
	}
	var row apiTokenRow
	var status sql.NullString
	var disabledAt sql.NullTime
	if err := rows.Scan(&row.ID, &row.ProviderID, &row.Admin, &row.Name, &row.Hash, &row.CreatedAt,
		&row.Owner, &row.OwnerUserID, &row.ExpiresAt, &row.LastUsedAt, &status, &disabledAt); err != nil {
		return nil, wrap("get API token", err)
	}
	t := row.model()
	t.ProviderStatus, t.OwnerDisabled = keyport.ProviderStatus(status.String), disabledAt.Valid
	return &t, nil
}

type wrappingKeyRow struct {
	ID           string    `gorm:"column:id;primaryKey"`
	ProviderID   string    `gorm:"column:provider_id"`
	PublicKeyDER []byte    `gorm:"column:public_key_der"`
	SHA256       string    `gorm:"column:sha256"`
	Bits         int       `gorm:"column:bits"`
	CreatedAt    time.Time `gorm:"column:created_at"`
}

func (wrappingKeyRow) TableName() string { return "wrapping_keys" }

// CreateWrappingKey inserts k, choosing an ID if k has none.
func (r *repo) CreateWrappingKey(ctx context.Context, k *keyport.WrappingKey) error {
	row := wrappingKeyRow{ID: k.ID, ProviderID: k.ProviderID, PublicKeyDER: k.PublicKeyDER, SHA256: k.SHA256,
		Bits: k.Bits, CreatedAt: dbTime(k.CreatedAt)}
	if row.ID == "" {
		row.ID = newID()
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create wrapping key", err)
	}
	k.ID, k.CreatedAt = row.ID, row.CreatedAt
	return nil
}

// GetWrappingKey returns the provider's key with id; ErrNotFound if it does
// not exist or belongs to another provider.
func (r *repo) GetWrappingKey(ctx context.Context, providerID, id string) (*keyport.WrappingKey, error) {
	var row wrappingKeyRow
	if err := r.r.WithContext(ctx).Where("id = ? AND provider_id = ?", id, providerID).Take(&row).Error; err != nil {
		return nil, wrap("get wrapping key", err)
	}
	return &keyport.WrappingKey{ID: row.ID, ProviderID: row.ProviderID, PublicKeyDER: row.PublicKeyDER,
		SHA256: row.SHA256, Bits: row.Bits, CreatedAt: row.CreatedAt.UTC()}, nil
}

type claimRow struct {
	ID             string         `gorm:"column:id;primaryKey"`
	ProviderID     string         `gorm:"column:provider_id"`
	DomainID       int64          `gorm:"column:domain_id"`
	EID            string         `gorm:"column:eid"`
	AID            string         `gorm:"column:aid"`
	WrappingKeyID  string         `gorm:"column:wrapping_key_id"`
	IdempotencyKey sql.NullString `gorm:"column:idempotency_key"`
	RequestHash    string         `gorm:"column:request_hash"`
	Package        []byte         `gorm:"column:package"`
	CreatedAt      time.Time      `gorm:"column:created_at"`
}

func (claimRow) TableName() string { return "claims" }

func (c claimRow) model() *keyport.Claim {
	return &keyport.Claim{ID: c.ID, ProviderID: c.ProviderID, DomainID: c.DomainID, EID: keyport.EID(c.EID),
		AID: keyport.AID(c.AID), WrappingKeyID: c.WrappingKeyID, IdempotencyKey: c.IdempotencyKey.String,
		RequestHash: c.RequestHash, Package: c.Package, CreatedAt: c.CreatedAt.UTC()}
}

// CreateClaim inserts c, choosing an ID if c has none. ErrConflict if the
// provider already used c's idempotency key; a claim without one is stored
// with NULL, which the unique index does not compare.
func (r *repo) CreateClaim(ctx context.Context, c *keyport.Claim) error {
	row := claimRow{ID: c.ID, ProviderID: c.ProviderID, DomainID: c.DomainID, EID: string(c.EID),
		AID: string(c.AID), WrappingKeyID: c.WrappingKeyID,
		IdempotencyKey: sql.NullString{String: c.IdempotencyKey, Valid: c.IdempotencyKey != ""},
		RequestHash:    c.RequestHash, Package: c.Package, CreatedAt: dbTime(c.CreatedAt)}
	if row.ID == "" {
		row.ID = newID()
	}
	if _, err := r.exec(ctx, `INSERT INTO claims (id, provider_id, domain_id, eid, aid, wrapping_key_id, idempotency_key,
		request_hash, package, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, row.ID, row.ProviderID, row.DomainID, row.EID,
		row.AID, row.WrappingKeyID, row.IdempotencyKey, row.RequestHash, row.Package, row.CreatedAt); err != nil {
		return wrap("create claim", err)
	}
	c.ID, c.CreatedAt = row.ID, row.CreatedAt
	return nil
}

// GetClaimByIdempotencyKey returns the provider's claim made with key;
// ErrNotFound if none (an empty key never matches).
func (r *repo) GetClaimByIdempotencyKey(ctx context.Context, providerID, key string) (*keyport.Claim, error) {
	if key == "" {
		return nil, fmt.Errorf("store: get claim by idempotency key: empty key: %w", keyport.ErrNotFound)
	}
	var row claimRow
	err := r.r.WithContext(ctx).Where("provider_id = ? AND idempotency_key = ?", providerID, key).Take(&row).Error
	if err != nil {
		return nil, wrap("get claim by idempotency key", err)
	}
	return row.model(), nil
}

// GetClaimForDomain returns the provider's latest claim of the domain: a
// domain released and claimed again has several.
func (r *repo) GetClaimForDomain(ctx context.Context, providerID string, domainID int64) (*keyport.Claim, error) {
	var row claimRow
	err := r.r.WithContext(ctx).Where("domain_id = ? AND provider_id = ?", domainID, providerID).
		Order("created_at DESC").Order("id DESC").Take(&row).Error
	if err != nil {
		return nil, wrap("get claim for domain", err)
	}
	return row.model(), nil
}
