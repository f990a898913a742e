package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// Passkeys (migration 6): users' WebAuthn credentials and the challenges of
// ceremonies under way. Ceremony tokens arrive hashed and are stored as
// given; a challenge is taken (deleted) by the one request that answers it.

type passkeyRow struct {
	ID           string     `gorm:"column:id;primaryKey"`
	UserID       string     `gorm:"column:user_id"`
	Name         string     `gorm:"column:name"`
	CredentialID []byte     `gorm:"column:credential_id"`
	PublicKey    []byte     `gorm:"column:public_key"`
	SignCount    int64      `gorm:"column:sign_count"`
	AAGUID       []byte     `gorm:"column:aaguid"`
	Transports   string     `gorm:"column:transports"`
	Flags        int        `gorm:"column:flags"`
	CreatedAt    time.Time  `gorm:"column:created_at"`
	LastUsedAt   *time.Time `gorm:"column:last_used_at"`
}

func (passkeyRow) TableName() string { return "passkeys" }

func (p passkeyRow) model() keyport.Passkey {
	var ts []string
	if p.Transports != "" {
		ts = strings.Split(p.Transports, ",")
	}
	return keyport.Passkey{ID: p.ID, UserID: p.UserID, Name: p.Name, CredentialID: p.CredentialID, PublicKey: p.PublicKey,
		SignCount: uint32(p.SignCount), AAGUID: nonEmpty(p.AAGUID), Transports: ts, Flags: byte(p.Flags),
		CreatedAt: p.CreatedAt.UTC(), LastUsedAt: utcPtr(p.LastUsedAt)}
}

// CreatePasskey stores a new credential; ErrConflict if its credential ID
// is registered already.
func (r *repo) CreatePasskey(ctx context.Context, p *keyport.Passkey) error {
	for _, t := range p.Transports {
		if strings.Contains(t, ",") {
			return fmt.Errorf("store: create passkey: %w", keyport.Invalid("transports", "a transport name holds a comma"))
		}
	}
	row := passkeyRow{ID: p.ID, UserID: p.UserID, Name: p.Name, CredentialID: p.CredentialID, PublicKey: p.PublicKey,
		SignCount: int64(p.SignCount), AAGUID: p.AAGUID, Transports: strings.Join(p.Transports, ","), Flags: int(p.Flags),
		CreatedAt: dbTime(p.CreatedAt), LastUsedAt: dbTimePtr(p.LastUsedAt)}
	if row.ID == "" {
		row.ID = newID()
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create passkey", err)
	}
	p.ID, p.CreatedAt = row.ID, row.CreatedAt
	return nil
}

// ListPasskeys returns the user's passkeys, oldest first.
func (r *repo) ListPasskeys(ctx context.Context, userID string) ([]keyport.Passkey, error) {
	var rows []passkeyRow
	if err := r.r.WithContext(ctx).Where("user_id = ?", userID).Order("created_at").Order("id").Find(&rows).Error; err != nil {
		return nil, wrap("list passkeys", err)
	}
	out := make([]keyport.Passkey, len(rows))
	for i, row := range rows {
		out[i] = row.model()
	}
	return out, nil
}

// DeletePasskey removes the user's passkey id; ErrNotFound for another's.
func (r *repo) DeletePasskey(ctx context.Context, userID, id string) error {
	res := r.w.WithContext(ctx).Exec(`DELETE FROM passkeys WHERE id = ? AND user_id = ?`, id, userID)
	if res.Error != nil {
		return wrap("delete passkey", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: delete passkey: %w", keyport.ErrNotFound)
	}
	return nil
}

// UsePasskey records an accepted assertion in one conditional UPDATE: the
// counter only goes up (or stays 0 for an authenticator without one), so
// a replayed or cloned counter value is refused even under parallel use.
func (r *repo) UsePasskey(ctx context.Context, id string, signCount uint32, flags byte, at time.Time) error {
	n := int64(signCount)
	res := r.w.WithContext(ctx).Exec(`UPDATE passkeys SET sign_count = ?, flags = ?, last_used_at = ?
		WHERE id = ? AND (sign_count < ? OR (sign_count = 0 AND ? = 0))`, n, int(flags), dbTime(at), id, n, n)
	if res.Error != nil {
		return wrap("use passkey", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: use passkey: %w", keyport.ErrConflict)
	}
	return nil
}

type passkeyCeremonyRow struct {
	Hash        []byte    `gorm:"column:hash;primaryKey"`
	UserID      string    `gorm:"column:user_id"`
	Purpose     string    `gorm:"column:purpose"`
	SessionHash []byte    `gorm:"column:session_hash"`
	Data        string    `gorm:"column:data"`
	CreatedAt   time.Time `gorm:"column:created_at"`
	ExpiresAt   time.Time `gorm:"column:expires_at"`
}

func (passkeyCeremonyRow) TableName() string { return "passkey_ceremonies" }

// CreatePasskeyCeremony stores a challenge by its token's hash. The user's
// ceremonies that have expired go at the same time.
func (r *repo) CreatePasskeyCeremony(ctx context.Context, c *keyport.PasskeyCeremony) error {
	db := r.w.WithContext(ctx)
	if err := db.Exec(`DELETE FROM passkey_ceremonies WHERE user_id = ? AND expires_at <= ?`, c.UserID, dbTime(c.CreatedAt)).Error; err != nil {
		return wrap("create passkey ceremony", err)
	}
	row := passkeyCeremonyRow{Hash: c.Hash, UserID: c.UserID, Purpose: string(c.Purpose), SessionHash: c.SessionHash,
		Data: c.Data, CreatedAt: dbTime(c.CreatedAt), ExpiresAt: dbTime(c.ExpiresAt)}
	if err := db.Create(&row).Error; err != nil {
		return wrap("create passkey ceremony", err)
	}
	return nil
}

// TakePasskeyCeremony deletes the ceremony and returns it if it was
// unexpired and of the purpose: a challenge is answered once, even under
// concurrent use.
func (r *repo) TakePasskeyCeremony(ctx context.Context, purpose keyport.PasskeyPurpose, hash []byte, now time.Time) (*keyport.PasskeyCeremony, error) {
	db := r.w.WithContext(ctx)
	var row passkeyCeremonyRow
	if err := db.Where("hash = ? AND purpose = ?", hash, string(purpose)).Take(&row).Error; err != nil {
		return nil, wrap("take passkey ceremony", err)
	}
	res := db.Exec(`DELETE FROM passkey_ceremonies WHERE hash = ?`, hash)
	if res.Error != nil {
		return nil, wrap("take passkey ceremony", res.Error)
	}
	if res.RowsAffected == 0 || !now.Before(row.ExpiresAt) {
		return nil, fmt.Errorf("store: take passkey ceremony: %w", keyport.ErrNotFound)
	}
	return &keyport.PasskeyCeremony{Hash: row.Hash, UserID: row.UserID, Purpose: keyport.PasskeyPurpose(row.Purpose),
		SessionHash: nonEmpty(row.SessionHash), Data: row.Data, CreatedAt: row.CreatedAt.UTC(), ExpiresAt: row.ExpiresAt.UTC()}, nil
}
