package keyport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Issuer-admin API tokens and admin users: who made a token, until when it
// works, when it was last used; admin users that can be disabled.

// Admin token rules.
const (
	// DefaultAdminTokenTTL is how long a new issuer-admin token works.
	DefaultAdminTokenTTL = 90 * 24 * time.Hour
	// MaxAdminTokenTTL bounds what --ttl may ask for.
	MaxAdminTokenTTL = 400 * 24 * time.Hour
	// tokenTouchEvery bounds how often a token's last use is written: a
	// busy token costs one UPDATE a minute, not one a request.
	tokenTouchEvery = time.Minute
)

// ErrAccountDisabled is the sign-in answer for a disabled user whose
// password was right.
var ErrAccountDisabled = fmt.Errorf("%w: this account is disabled; ask another administrator to enable it", ErrForbidden)

// CreateAdminToken creates an issuer-admin API token owned by p's identity
// (an admin user or an operator, also when p is a token of theirs) that
// works for ttl (0: DefaultAdminTokenTTL), and
// returns it once with its row.
//
// It is under dual control (ActionAdminToken), except for the first token of
// an installation (CreateFirstAdminToken).
func (s *Service) CreateAdminToken(ctx context.Context, p Principal, name string, ttl time.Duration) (string, *APIToken, error) {
	if !p.Admin {
		return "", nil, ErrForbidden
	}
	owner, ownerUser := p.Identity(), p.UserID
	if p.Token {
		ownerUser = p.OwnerUserID
	}
	if owner == "" {
		// A new token stands for who made it; a token without an owner
		// stands for nobody, and could only make more such tokens.
		return "", nil, fmt.Errorf("%w: this token has no owner and cannot make tokens", ErrForbidden)
	}
	if err := s.underDualControl(ctx, ActionAdminToken, strings.TrimSpace(name)); err != nil {
		return "", nil, err
	}
	name = strings.TrimSpace(name)
	if n := len(name); n == 0 || n > 100 {
		return "", nil, invalid("name", "name the token (1 to 100 characters), e.g. the job that will use it")
	}
	if ttl == 0 {
		ttl = DefaultAdminTokenTTL
	}
	if ttl < time.Minute || ttl > MaxAdminTokenTTL {
		return "", nil, Invalid("ttl", "a token lives from one minute to %d days", int(MaxAdminTokenTTL/(24*time.Hour)))
	}
	now := s.now().UTC().Truncate(time.Microsecond) // as the store keeps it
	token, t := newAPIToken("", name, now)
	exp := now.Add(ttl)
	// A token made with a token stands for that token's owner: for dual
	// control, and when the owner is disabled.
	t.Owner, t.OwnerUserID, t.ExpiresAt = owner, ownerUser, &exp
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateAPIToken(ctx, t); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "admin-token.create", "token:"+t.ID,
			map[string]any{"name": name, "expires_at": exp.Format(time.RFC3339)})
	})
	if err != nil {
		return "", nil, fmt.Errorf("keyport: create admin token: %w", err)
	}
	return token, t, nil
}

// ListAdminTokens returns every issuer-admin token, revoked and expired
// ones too, newest first (hashes only).
func (s *Service) ListAdminTokens(ctx context.Context, p Principal) ([]APIToken, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListAdminTokens(ctx)
}

// RevokeAdminToken revokes an issuer-admin token; ErrNotFound for an
// unknown ID or a provider's token.
func (s *Service) RevokeAdminToken(ctx context.Context, p Principal, id string) error {
	if !p.Admin {
		return ErrForbidden
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.RevokeAdminToken(ctx, id, s.now().UTC()); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "admin-token.revoke", "token:"+id, map[string]any{})
	})
	if err != nil {
		return fmt.Errorf("keyport: revoke admin token: %w", err)
	}
	return nil
}

// liveToken refuses an expired token and one whose owner is disabled (as
// unknown: ErrUnauthenticated), and records the token's use at most once
// a minute.
func (s *Service) liveToken(ctx context.Context, t *APIToken) error {
	now := s.now().UTC()
	if t.ExpiresAt != nil && !now.Before(*t.ExpiresAt) {
		return fmt.Errorf("%w: the token expired", ErrUnauthenticated)
	}
	if t.OwnerDisabled {
		return fmt.Errorf("%w: the token's owner is disabled", ErrUnauthenticated)
	}
	if t.LastUsedAt == nil || now.Sub(*t.LastUsedAt) >= tokenTouchEvery {
		if err := s.Store.TouchAPIToken(ctx, t.ID, now); err != nil {
			return err
		}
	}
	return nil
}

// ListAdminUsers returns the issuer-admin users, by e-mail address.
func (s *Service) ListAdminUsers(ctx context.Context, p Principal) ([]User, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListAdminUsers(ctx)
}

// SetAdminUserDisabled disables (or enables again) the admin user with the
// e-mail address. A disabled admin cannot sign in, their sessions are
// deleted at once and the API tokens they own are refused. An admin cannot
// disable themselves, so that the console always keeps one.
func (s *Service) SetAdminUserDisabled(ctx context.Context, p Principal, email string, disabled bool) (*User, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	email = strings.ToLower(strings.TrimSpace(email))
	var u *User
	err := s.Store.Tx(ctx, func(tx Repo) error {
		var err error
		if u, err = tx.GetUserByEmail(ctx, email); errors.Is(err, ErrNotFound) || (err == nil && !u.Admin) {
			return Invalid("email", "there is no admin user %s", email)
		} else if err != nil {
			return err
		}
		if disabled && p.UserID != "" && p.UserID == u.ID {
			return invalid("email", "you cannot disable your own account")
		}
		var at *time.Time
		action := "admin-user.enable"
		if disabled {
			now := s.now().UTC()
			at, action = &now, "admin-user.disable"
		}
		if err := tx.SetUserDisabled(ctx, u.ID, at); err != nil {
			return err
		}
		if disabled {
			if err := tx.DeleteUserSessions(ctx, u.ID); err != nil {
				return err
			}
		}
		u.DisabledAt = at
		return s.audit(ctx, tx, p.Actor(), action, "user:"+u.ID, map[string]any{"email": u.Email})
	})
	if err != nil {
		return nil, fmt.Errorf("keyport: %s: %w", map[bool]string{true: "disable", false: "enable"}[disabled], err)
	}
	return u, nil
}

// AdminTokenState is how a token list shows t at now: "active", "revoked"
// or "expired".
func AdminTokenState(t APIToken, now time.Time) string {
	switch {
	case t.RevokedAt != nil:
		return "revoked"
	case t.ExpiresAt != nil && !now.Before(*t.ExpiresAt):
		return "expired"
	}
	return "active"
}

// CreateFirstAdminToken creates the first issuer-admin token of an
// installation that has none: dual control cannot apply while there is no
// second admin, so this one token is made without it (the audit event says
// "bootstrap"). Once any admin token exists it fails with ErrConflict.
func (s *Service) CreateFirstAdminToken(ctx context.Context, p Principal, name string) (string, *APIToken, error) {
	if !p.Admin {
		return "", nil, ErrForbidden
	}
	tokens, err := s.Store.ListAdminTokens(ctx)
	if err != nil {
		return "", nil, err
	}
	if len(tokens) > 0 {
		return "", nil, fmt.Errorf("%w: admin tokens exist already; a new one needs dual control", ErrConflict)
	}
	return s.CreateAdminToken(context.WithValue(ctx, bootstrapKey{}, true), p, name, 0)
}

// bootstrapKey marks the first admin token's creation.
type bootstrapKey struct{}
