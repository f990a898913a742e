package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/keyport/keyport"
)

// Portal accounts: users, sessions, one-time e-mail tokens (migration 2),
// and the listings the portal pages show. Secrets arrive hashed (sessions,
// tokens, passwords) or HSM-sealed (TOTP seeds) and are stored as given.

type userRow struct {
	ID                string         `gorm:"column:id;primaryKey"`
	ProviderID        sql.NullString `gorm:"column:provider_id"`
	Email             string         `gorm:"column:email"`
	Contact           string         `gorm:"column:contact"`
	PasswordHash      string         `gorm:"column:password_hash"`
	TOTPSecretWrapped []byte         `gorm:"column:totp_secret_wrapped"`
	FailedLogins      int            `gorm:"column:failed_logins"`
	LockedUntil       *time.Time     `gorm:"column:locked_until"`
	TOTPLastStep      int64          `gorm:"column:totp_last_step"`
	Admin             bool           `gorm:"column:admin"`
	VerifiedAt        *time.Time     `gorm:"column:verified_at"`
	CreatedAt         time.Time      `gorm:"column:created_at"`
	DisabledAt        *time.Time     `gorm:"column:disabled_at"`
	ChangePassword    bool           `gorm:"column:password_change_required"`
}

func (userRow) TableName() string { return "users" }

func (u userRow) model() *keyport.User {
	return &keyport.User{ID: u.ID, ProviderID: u.ProviderID.String, Email: u.Email, Contact: u.Contact,
		PasswordHash: u.PasswordHash, TOTPSealed: nonEmpty(u.TOTPSecretWrapped), FailedLogins: u.FailedLogins,
		LockedUntil: utcPtr(u.LockedUntil), TOTPLastStep: u.TOTPLastStep, Admin: u.Admin, VerifiedAt: utcPtr(u.VerifiedAt), CreatedAt: u.CreatedAt.UTC(),
		DisabledAt: utcPtr(u.DisabledAt), PasswordChangeRequired: u.ChangePassword}
}

func dbTimePtr(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	v := dbTime(*t)
	return &v
}

// CreateUser inserts u; ErrConflict on a taken e-mail address.
func (r *repo) CreateUser(ctx context.Context, u *keyport.User) error {
	row := userRow{ID: u.ID, ProviderID: sql.NullString{String: u.ProviderID, Valid: u.ProviderID != ""},
		Email: u.Email, Contact: u.Contact, PasswordHash: u.PasswordHash, TOTPSecretWrapped: u.TOTPSealed,
		FailedLogins: u.FailedLogins, LockedUntil: dbTimePtr(u.LockedUntil), Admin: u.Admin,
		VerifiedAt: dbTimePtr(u.VerifiedAt), CreatedAt: dbTime(u.CreatedAt), ChangePassword: u.PasswordChangeRequired}
	if row.ID == "" {
		row.ID = newID()
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create user", err)
	}
	u.ID, u.CreatedAt = row.ID, row.CreatedAt
	return nil
}

// GetUser returns the user with id; ErrNotFound if there is none.
func (r *repo) GetUser(ctx context.Context, id string) (*keyport.User, error) {
	var row userRow
	if err := r.r.WithContext(ctx).Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, wrap("get user", err)
	}
	return row.model(), nil
}

// GetUserByEmail returns the user with the (lower-case) address.
func (r *repo) GetUserByEmail(ctx context.Context, email string) (*keyport.User, error) {
	var row userRow
	if err := r.r.WithContext(ctx).Where("email = ?", email).Take(&row).Error; err != nil {
		return nil, wrap("get user by e-mail", err)
	}
	return row.model(), nil
}

// ReserveLoginAttempt reserves one sign-in attempt in a single conditional
// UPDATE, before the password is checked: the count goes up only while the
// user is not locked and under max, and the attempt that reaches max locks
// the user until lockUntil. A lock that has run out starts the count
// afresh. Parallel attempts are serialised by the row, so no more than max
// are ever evaluated. reserved is false when no attempt is left (the user
// is locked); u is the user after the UPDATE either way.
func (r *repo) ReserveLoginAttempt(ctx context.Context, id string, max int, now, lockUntil time.Time) (u *keyport.User, reserved bool, err error) {
	db := r.w.WithContext(ctx)
	n := dbTime(now)
	// The lock time goes in as a typed expression: PostgreSQL types a bare
	// parameter in a CASE as text.
	lockAt := "?"
	if r.dialect == dialectPostgres {
		lockAt = "CAST(? AS TIMESTAMPTZ)"
	}
	res := db.Exec(`UPDATE users SET
		failed_logins = CASE WHEN locked_until IS NOT NULL THEN 1 ELSE failed_logins + 1 END,
		locked_until = CASE WHEN (CASE WHEN locked_until IS NOT NULL THEN 1 ELSE failed_logins + 1 END) >= ?
			THEN `+lockAt+` ELSE NULL END
		WHERE id = ? AND ((locked_until IS NULL AND failed_logins < ?) OR locked_until <= ?)`,
		max, dbTime(lockUntil), id, max, n)
	if res.Error != nil {
		return nil, false, wrap("reserve login attempt", res.Error)
	}
	var row userRow
	if err := db.Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, false, wrap("reserve login attempt", err)
	}
	return row.model(), res.RowsAffected == 1, nil
}

// ResetFailedLogins clears the count of wrong passwords and any lock.
func (r *repo) ResetFailedLogins(ctx context.Context, id string) error {
	return r.updateUser(ctx, "reset failed logins", id, map[string]any{"failed_logins": 0, "locked_until": nil})
}

// SetUserVerified records when the user confirmed the e-mail address.
func (r *repo) SetUserVerified(ctx context.Context, id string, at time.Time) error {
	return r.updateUser(ctx, "set user verified", id, map[string]any{"verified_at": dbTime(at)})
}

// SetUserPassword replaces the password hash and clears
// PasswordChangeRequired: the user chose this one.
func (r *repo) SetUserPassword(ctx context.Context, id, hash string) error {
	return r.updateUser(ctx, "set user password", id, map[string]any{"password_hash": hash, "password_change_required": false})
}

// SetUserTOTP stores the HSM-sealed TOTP secret (nil turns TOTP off) and
// the time step of the code that confirmed it, which may not sign in.
func (r *repo) SetUserTOTP(ctx context.Context, id string, sealed []byte, step int64) error {
	return r.updateUser(ctx, "set user TOTP", id, map[string]any{"totp_secret_wrapped": sealed, "totp_last_step": step})
}

// AcceptTOTPStep records step as the user's last accepted TOTP time step,
// in one conditional UPDATE: a step at or before the last one is refused
// (ErrConflict), so a code works once even under parallel use.
func (r *repo) AcceptTOTPStep(ctx context.Context, id string, step int64) error {
	res := r.w.WithContext(ctx).Exec(`UPDATE users SET totp_last_step = ? WHERE id = ? AND totp_last_step < ?`, step, id, step)
	if res.Error != nil {
		return wrap("accept TOTP step", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: accept TOTP step: %w", keyport.ErrConflict)
	}
	return nil
}

func (r *repo) updateUser(ctx context.Context, op, id string, set map[string]any) error {
	res := r.w.WithContext(ctx).Model(&userRow{}).Where("id = ?", id).Updates(set)
	if res.Error != nil {
		return wrap(op, res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: %s: %w", op, keyport.ErrNotFound)
	}
	return nil
}

type userTokenRow struct {
	Hash      []byte    `gorm:"column:hash;primaryKey"`
	UserID    string    `gorm:"column:user_id"`
	Purpose   string    `gorm:"column:purpose"`
	CreatedAt time.Time `gorm:"column:created_at"`
	ExpiresAt time.Time `gorm:"column:expires_at"`
}

func (userTokenRow) TableName() string { return "user_tokens" }

// CreateUserToken stores a one-time token's hash.
func (r *repo) CreateUserToken(ctx context.Context, t *keyport.UserToken) error {
	row := userTokenRow{Hash: t.Hash, UserID: t.UserID, Purpose: string(t.Purpose), CreatedAt: dbTime(t.CreatedAt),
		ExpiresAt: dbTime(t.ExpiresAt)}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create user token", err)
	}
	return nil
}

// TakeUserToken deletes the token and returns it if it was unexpired and of
// the purpose: a token works once, even under concurrent use.
func (r *repo) TakeUserToken(ctx context.Context, purpose keyport.TokenPurpose, hash []byte, now time.Time) (*keyport.UserToken, error) {
	db := r.w.WithContext(ctx)
	var row userTokenRow
	if err := db.Where("hash = ? AND purpose = ?", hash, string(purpose)).Take(&row).Error; err != nil {
		return nil, wrap("take user token", err)
	}
	res := db.Exec(`DELETE FROM user_tokens WHERE hash = ?`, hash)
	if res.Error != nil {
		return nil, wrap("take user token", res.Error)
	}
	if res.RowsAffected == 0 || !now.Before(row.ExpiresAt) {
		return nil, fmt.Errorf("store: take user token: %w", keyport.ErrNotFound)
	}
	return &keyport.UserToken{Hash: row.Hash, UserID: row.UserID, Purpose: keyport.TokenPurpose(row.Purpose),
		CreatedAt: row.CreatedAt.UTC(), ExpiresAt: row.ExpiresAt.UTC()}, nil
}

// DeleteUserTokens deletes the user's tokens of the purpose.
func (r *repo) DeleteUserTokens(ctx context.Context, userID string, purpose keyport.TokenPurpose) error {
	return wrap("delete user tokens", r.w.WithContext(ctx).Exec(`DELETE FROM user_tokens WHERE user_id = ? AND purpose = ?`,
		userID, string(purpose)).Error)
}

type sessionRow struct {
	Hash      []byte     `gorm:"column:hash;primaryKey"`
	UserID    string     `gorm:"column:user_id"`
	CreatedAt time.Time  `gorm:"column:created_at"`
	ExpiresAt time.Time  `gorm:"column:expires_at"`
	LastSeen  *time.Time `gorm:"column:last_seen"`
}

func (sessionRow) TableName() string { return "sessions" }

// CreateSession stores a session by the hash of its cookie value.
func (r *repo) CreateSession(ctx context.Context, s *keyport.Session) error {
	row := sessionRow{Hash: s.Hash, UserID: s.UserID, CreatedAt: dbTime(s.CreatedAt), ExpiresAt: dbTime(s.ExpiresAt)}
	if !s.LastSeen.IsZero() {
		v := dbTime(s.LastSeen)
		row.LastSeen = &v
	}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create session", err)
	}
	return nil
}

// GetSession returns the unexpired session with the hash.
func (r *repo) GetSession(ctx context.Context, hash []byte, now time.Time) (*keyport.Session, error) {
	var row sessionRow
	if err := r.r.WithContext(ctx).Where("hash = ? AND expires_at > ?", hash, dbTime(now)).Take(&row).Error; err != nil {
		return nil, wrap("get session", err)
	}
	last := row.CreatedAt.UTC()
	if row.LastSeen != nil {
		last = row.LastSeen.UTC()
	}
	return &keyport.Session{Hash: row.Hash, UserID: row.UserID, CreatedAt: row.CreatedAt.UTC(), ExpiresAt: row.ExpiresAt.UTC(),
		LastSeen: last}, nil
}

// TouchSession records the session's last use.
func (r *repo) TouchSession(ctx context.Context, hash []byte, at time.Time) error {
	return wrap("touch session", r.w.WithContext(ctx).Exec(`UPDATE sessions SET last_seen = ? WHERE hash = ?`, dbTime(at), hash).Error)
}

// DeleteSession ends one session (no error if it is gone already).
func (r *repo) DeleteSession(ctx context.Context, hash []byte) error {
	return wrap("delete session", r.w.WithContext(ctx).Exec(`DELETE FROM sessions WHERE hash = ?`, hash).Error)
}

// DeleteUserSessions ends every session of a user.
func (r *repo) DeleteUserSessions(ctx context.Context, userID string) error {
	return wrap("delete user sessions", r.w.WithContext(ctx).Exec(`DELETE FROM sessions WHERE user_id = ?`, userID).Error)
}

// ListProviders returns every provider, newest first.
func (r *repo) ListProviders(ctx context.Context) ([]keyport.Provider, error) {
	var rows []providerRow
	if err := r.r.WithContext(ctx).Order("created_at DESC").Order("id").Find(&rows).Error; err != nil {
		return nil, wrap("list providers", err)
	}
	out := make([]keyport.Provider, len(rows))
	for i, row := range rows {
		out[i] = keyport.Provider{ID: row.ID, Name: row.Name, Kind: keyport.ProviderKind(row.Kind), Email: row.Email,
			Status: keyport.ProviderStatus(row.Status), WebhookURL: row.WebhookURL, CreatedAt: row.CreatedAt.UTC()}
	}
	return out, nil
}

// SetProviderStatus changes a provider's status; ErrNotFound if unknown.
func (r *repo) SetProviderStatus(ctx context.Context, id string, status keyport.ProviderStatus) error {
	res := r.w.WithContext(ctx).Exec(`UPDATE providers SET status = ? WHERE id = ?`, string(status), id)
	if res.Error != nil {
		return wrap("set provider status", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: set provider status: %w", keyport.ErrNotFound)
	}
	return nil
}

// SetWebhookURL sets the provider's webhook URL.
func (r *repo) SetWebhookURL(ctx context.Context, providerID, webhookURL string) error {
	res := r.w.WithContext(ctx).Exec(`UPDATE providers SET webhook_url = ? WHERE id = ?`, webhookURL, providerID)
	if res.Error != nil {
		return wrap("set webhook URL", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: set webhook URL: %w", keyport.ErrNotFound)
	}
	return nil
}

// ListAPITokens returns the provider's tokens, newest first.
func (r *repo) ListAPITokens(ctx context.Context, providerID string) ([]keyport.APIToken, error) {
	var rows []apiTokenRow
	err := r.r.WithContext(ctx).Where("provider_id = ?", providerID).Order("created_at DESC").Order("id").Find(&rows).Error
	if err != nil {
		return nil, wrap("list API tokens", err)
	}
	out := make([]keyport.APIToken, len(rows))
	for i, row := range rows {
		out[i] = keyport.APIToken{ID: row.ID, ProviderID: row.ProviderID.String, Admin: row.Admin, Name: row.Name,
			Hash: row.Hash, CreatedAt: row.CreatedAt.UTC(), RevokedAt: utcPtr(row.RevokedAt)}
	}
	return out, nil
}

// RevokeAPIToken revokes the provider's token id (again: no change);
// ErrNotFound for another provider's.
func (r *repo) RevokeAPIToken(ctx context.Context, providerID, id string, at time.Time) error {
	res := r.w.WithContext(ctx).Exec(`UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND provider_id = ?`,
		dbTime(at), id, providerID)
	if res.Error != nil {
		return wrap("revoke API token", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: revoke API token: %w", keyport.ErrNotFound)
	}
	return nil
}

// ListWrappingKeys returns the provider's wrapping keys, newest first.
func (r *repo) ListWrappingKeys(ctx context.Context, providerID string) ([]keyport.WrappingKey, error) {
	var rows []wrappingKeyRow
	err := r.r.WithContext(ctx).Where("provider_id = ?", providerID).Order("created_at DESC").Order("id").Find(&rows).Error
	if err != nil {
		return nil, wrap("list wrapping keys", err)
	}
	out := make([]keyport.WrappingKey, len(rows))
	for i, row := range rows {
		out[i] = keyport.WrappingKey{ID: row.ID, ProviderID: row.ProviderID, PublicKeyDER: row.PublicKeyDER,
			SHA256: row.SHA256, Bits: row.Bits, CreatedAt: row.CreatedAt.UTC()}
	}
	return out, nil
}

func auditModels(rows []auditRow) []keyport.AuditEvent {
	out := make([]keyport.AuditEvent, len(rows))
	for i, row := range rows {
		out[i] = keyport.AuditEvent{Seq: row.Seq, At: row.At.UTC(), Actor: row.Actor, Action: row.Action,
			Object: row.Object, Detail: row.Detail, PrevHash: nonEmpty(row.PrevHash), Hash: row.Hash}
	}
	return out
}

// ProviderAudit returns the newest events done by the provider or about it.
// The audit table has no index on actor: a provider's trail is read rarely
// and is bounded by limit, scanning from the newest row.
func (r *repo) ProviderAudit(ctx context.Context, providerID string, limit int) ([]keyport.AuditEvent, error) {
	var rows []auditRow
	err := r.r.WithContext(ctx).Where("actor = ? OR object = ?", "provider:"+providerID, "provider:"+providerID).
		Order("seq DESC").Limit(limit).Find(&rows).Error
	if err != nil {
		return nil, wrap("provider audit", err)
	}
	return auditModels(rows), nil
}

// RecentAudit returns the newest limit events.
func (r *repo) RecentAudit(ctx context.Context, limit int) ([]keyport.AuditEvent, error) {
	var rows []auditRow
	if err := r.r.WithContext(ctx).Order("seq DESC").Limit(limit).Find(&rows).Error; err != nil {
		return nil, wrap("recent audit", err)
	}
	return auditModels(rows), nil
}

// ListOutbox returns the newest limit messages of topic ("" = every topic).
func (r *repo) ListOutbox(ctx context.Context, topic string, limit int) ([]keyport.OutboxMessage, error) {
	var rows []outboxRow
	q := r.r.WithContext(ctx).Order("id DESC").Limit(limit)
	if topic != "" {
		q = q.Where("topic = ?", topic)
	}
	if err := q.Find(&rows).Error; err != nil {
		return nil, wrap("list outbox", err)
	}
	out := make([]keyport.OutboxMessage, len(rows))
	for i, row := range rows {
		out[i] = keyport.OutboxMessage{ID: row.ID, Topic: row.Topic, Payload: row.Payload, CreatedAt: row.CreatedAt.UTC(),
			SentAt: utcPtr(row.SentAt)}
	}
	return out, nil
}

// MarkOutboxSent records that a message went out.
func (r *repo) MarkOutboxSent(ctx context.Context, id int64, at time.Time) error {
	return wrap("mark outbox sent", r.w.WithContext(ctx).Exec(`UPDATE outbox SET sent_at = ? WHERE id = ?`, dbTime(at), id).Error)
}

// ListBatches returns every batch, newest first.
func (r *repo) ListBatches(ctx context.Context) ([]keyport.Batch, error) {
	var rows []batchRow
	if err := r.r.WithContext(ctx).Order("id DESC").Find(&rows).Error; err != nil {
		return nil, wrap("list batches", err)
	}
	out := make([]keyport.Batch, len(rows))
	for i, row := range rows {
		out[i] = *row.model()
	}
	return out, nil
}

// PortalStats counts modules, domains by state, claims per day since since
// and jobs by state.
func (r *repo) PortalStats(ctx context.Context, since time.Time) (*keyport.PortalStats, error) {
	db := r.r.WithContext(ctx)
	st := &keyport.PortalStats{DomainsByState: map[keyport.DomainState]int64{}, JobsByState: map[string]int64{}}
	// What unpublished imports stored is counted apart (the partial index
	// on import_id holds only their modules) and left out of the rest.
	if err := db.Raw(`SELECT COUNT(*) FROM modules WHERE import_id IS NOT NULL`).Scan(&st.ModulesImporting).Error; err != nil {
		return nil, wrap("stats: modules", err)
	}
	if err := db.Raw(`SELECT COUNT(*) FROM modules`).Scan(&st.Modules).Error; err != nil {
		return nil, wrap("stats: modules", err)
	}
	st.Modules -= st.ModulesImporting
	var states, hidden []struct {
		State string
		N     int64
	}
	if err := db.Raw(`SELECT state, COUNT(*) AS n FROM domains GROUP BY state`).Scan(&states).Error; err != nil {
		return nil, wrap("stats: domains", err)
	}
	if st.ModulesImporting > 0 {
		if err := db.Raw(`SELECT state, COUNT(*) AS n FROM domains WHERE eid IN
			(SELECT eid FROM modules WHERE import_id IS NOT NULL) GROUP BY state`).Scan(&hidden).Error; err != nil {
			return nil, wrap("stats: domains", err)
		}
	}
	for _, s := range states {
		st.DomainsByState[keyport.DomainState(s.State)] = s.N
	}
	for _, s := range hidden {
		st.DomainsByState[keyport.DomainState(s.State)] -= s.N
		if st.DomainsByState[keyport.DomainState(s.State)] == 0 {
			delete(st.DomainsByState, keyport.DomainState(s.State))
		}
	}
	// Day buckets are computed in Go: the two databases spell date
	// truncation differently, and a month of claims is few rows.
	var at []time.Time
	if err := db.Raw(`SELECT created_at FROM claims WHERE created_at >= ?`, dbTime(since)).Scan(&at).Error; err != nil {
		return nil, wrap("stats: claims", err)
	}
	byDay := map[time.Time]int64{}
	for _, t := range at {
		byDay[t.UTC().Truncate(24*time.Hour)]++
	}
	for d, n := range byDay {
		st.ClaimsPerDay = append(st.ClaimsPerDay, keyport.DayCount{Day: d, Count: n})
	}
	var jobs []struct {
		State string
		N     int64
	}
	if err := db.Raw(`SELECT state, COUNT(*) AS n FROM jobs GROUP BY state`).Scan(&jobs).Error; err != nil {
		return nil, wrap("stats: jobs", err)
	}
	for _, j := range jobs {
		st.JobsByState[j.State] = j.N
	}
	return st, nil
}

// ListAdminUsers returns the issuer-admin users by e-mail address.
func (r *repo) ListAdminUsers(ctx context.Context) ([]keyport.User, error) {
	var rows []userRow
	if err := r.r.WithContext(ctx).Where("admin = ?", true).Order("email").Find(&rows).Error; err != nil {
		return nil, wrap("list admin users", err)
	}
	out := make([]keyport.User, len(rows))
	for i, row := range rows {
		out[i] = *row.model()
	}
	return out, nil
}

// SetUserDisabled disables the user from at; nil enables again.
func (r *repo) SetUserDisabled(ctx context.Context, id string, at *time.Time) error {
	return r.updateUser(ctx, "set user disabled", id, map[string]any{"disabled_at": dbTimePtr(at)})
}

// ListAdminTokens returns the issuer-admin tokens, newest first.
func (r *repo) ListAdminTokens(ctx context.Context) ([]keyport.APIToken, error) {
	var rows []apiTokenRow
	err := r.r.WithContext(ctx).Where("provider_id IS NULL").Order("created_at DESC").Order("id").Find(&rows).Error
	if err != nil {
		return nil, wrap("list admin tokens", err)
	}
	out := make([]keyport.APIToken, len(rows))
	for i, row := range rows {
		out[i] = row.model()
	}
	return out, nil
}

// RevokeAdminToken revokes the issuer-admin token id (again: no change);
// ErrNotFound for an unknown ID or a provider's token.
func (r *repo) RevokeAdminToken(ctx context.Context, id string, at time.Time) error {
	res := r.w.WithContext(ctx).Exec(`UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ? AND provider_id IS NULL`,
		dbTime(at), id)
	if res.Error != nil {
		return wrap("revoke admin token", res.Error)
	}
	if res.RowsAffected == 0 {
		return fmt.Errorf("store: revoke admin token: %w", keyport.ErrNotFound)
	}
	return nil
}

// TouchAPIToken records the token's last use.
func (r *repo) TouchAPIToken(ctx context.Context, id string, at time.Time) error {
	return wrap("touch API token", r.w.WithContext(ctx).Exec(`UPDATE api_tokens SET last_used_at = ? WHERE id = ?`, dbTime(at), id).Error)
}
