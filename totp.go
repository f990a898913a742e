package keyport

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// TOTPCode is the RFC 6238 code (HMAC-SHA1, 30 s steps, 6 digits) of secret
// at t.
func TOTPCode(secret []byte, t time.Time) string {
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], uint64(t.Unix()/30))
	m := hmac.New(sha1.New, secret)
	m.Write(msg[:])
	sum := m.Sum(nil)
	// RFC 4226 §5.3: dynamic truncation.
	off := sum[len(sum)-1] & 0x0f
	v := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	return fmt.Sprintf("%06d", v%1_000_000)
}

// totpMatches accepts the code of the current step or of one step either
// side (clock drift).
func totpMatches(secret []byte, code string, now time.Time) bool {
	code = strings.ReplaceAll(strings.TrimSpace(code), " ", "")
	ok := 0
	for _, d := range []time.Duration{-30 * time.Second, 0, 30 * time.Second} {
		ok |= subtle.ConstantTimeCompare([]byte(TOTPCode(secret, now.Add(d))), []byte(code))
	}
	return ok == 1
}

func (s *Service) checkTOTP(ctx context.Context, u *User, code string) (bool, error) {
	if s.Sealer == nil {
		return false, fmt.Errorf("keyport: %w: the account has TOTP but no HSM sealer is configured", ErrUnavailable)
	}
	secret, err := s.Sealer.Unseal(ctx, u.TOTPSealed)
	if err != nil {
		return false, fmt.Errorf("keyport: unseal TOTP secret: %w", err)
	}
	return totpMatches(secret, code, s.now()), nil
}

// TOTPEnrolment is a new TOTP secret offered to a user, not yet active.
type TOTPEnrolment struct {
	// Secret is base32, for typing into an authenticator app.
	Secret string
	// URI is the otpauth:// URI an app can import.
	URI string
	// Sealed is the secret sealed by the HSM; the page carries it in a
	// hidden field until the user confirms a code, so it is never stored
	// unconfirmed and never in clear.
	Sealed []byte
}

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// BeginTOTP makes a fresh TOTP secret for the user.
func (s *Service) BeginTOTP(ctx context.Context, u *User) (*TOTPEnrolment, error) {
	if s.Sealer == nil {
		return nil, fmt.Errorf("%w: no HSM sealer is configured for TOTP", ErrUnavailable)
	}
	secret := randomBytes(20)
	sealed, err := s.Sealer.Seal(ctx, secret)
	if err != nil {
		return nil, fmt.Errorf("keyport: seal TOTP secret: %w", err)
	}
	enc := b32.EncodeToString(secret)
	uri := "otpauth://totp/" + url.PathEscape("keyport:"+u.Email) + "?secret=" + enc + "&issuer=keyport"
	return &TOTPEnrolment{Secret: enc, URI: uri, Sealed: sealed}, nil
}

// ConfirmTOTP activates a sealed secret from BeginTOTP once the user has
// typed a code it generates.
func (s *Service) ConfirmTOTP(ctx context.Context, u *User, sealed []byte, code string) error {
	if s.Sealer == nil {
		return fmt.Errorf("%w: no HSM sealer is configured for TOTP", ErrUnavailable)
	}
	secret, err := s.Sealer.Unseal(ctx, sealed)
	if err != nil {
		return invalid("code", "the enrolment expired or was altered: start again")
	}
	if !totpMatches(secret, code, s.now()) {
		return invalid("code", "that code does not match: check the clock of your phone and type the current code")
	}
	return s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetUserTOTP(ctx, u.ID, sealed); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.totp-enable", "user:"+u.ID, map[string]any{})
	})
}
