package keyport

import (
	"context"
	"crypto/subtle"
	"encoding/base32"
	"fmt"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// totpOpts is RFC 6238 as authenticator apps take it: HMAC-SHA1, 30 s
// steps, 6 digits; a code of one step either side of now is accepted too
// (clock drift). The library compares codes in constant time.
var totpOpts = totp.ValidateOpts{Period: 30, Skew: 1, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// totpIssuer names keyport in the otpauth:// URI and so in the app.
const totpIssuer = "keyport"

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// TOTPCode is the RFC 6238 code (HMAC-SHA1, 30 s steps, 6 digits) of secret
// at t.
func TOTPCode(secret []byte, t time.Time) string {
	code, err := totp.GenerateCodeCustom(b32.EncodeToString(secret), t, totpOpts)
	if err != nil {
		// It fails only on a secret that is not base32, and b32 made it.
		panic("keyport: TOTP code: " + err.Error())
	}
	return code
}

// totpMatch accepts the code of the current step or of one step either
// side and returns the time step it belongs to; spaces (as in "123 456")
// are ignored. Codes are compared in constant time.
func totpMatch(secret []byte, code string, now time.Time) (step int64, ok bool) {
	code = strings.ReplaceAll(strings.TrimSpace(code), " ", "")
	if len(code) != int(totpOpts.Digits) {
		return 0, false
	}
	cur := now.Unix() / int64(totpOpts.Period)
	for st := cur - int64(totpOpts.Skew); st <= cur+int64(totpOpts.Skew); st++ {
		want := TOTPCode(secret, time.Unix(st*int64(totpOpts.Period), 0))
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			step, ok = st, true
		}
	}
	return step, ok
}

// checkTOTP unseals the user's secret and matches code against it; the
// caller records step with AcceptTOTPStep so that the code works once.
func (s *Service) checkTOTP(ctx context.Context, u *User, code string) (step int64, ok bool, err error) {
	if s.Sealer == nil {
		return 0, false, fmt.Errorf("keyport: %w: the account has TOTP but no HSM sealer is configured", ErrUnavailable)
	}
	secret, err := s.Sealer.Unseal(ctx, u.TOTPSealed)
	if err != nil {
		return 0, false, fmt.Errorf("keyport: unseal TOTP secret: %w", err)
	}
	step, ok = totpMatch(secret, code, s.now())
	return step, ok, nil
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
	key, err := totp.Generate(totp.GenerateOpts{Issuer: totpIssuer, AccountName: u.Email, Secret: secret,
		Period: totpOpts.Period, Digits: totpOpts.Digits, Algorithm: totpOpts.Algorithm})
	if err != nil {
		return nil, fmt.Errorf("keyport: TOTP key URI: %w", err)
	}
	return &TOTPEnrolment{Secret: key.Secret(), URI: key.URL(), Sealed: sealed}, nil
}

// ConfirmTOTP activates a sealed secret from BeginTOTP once the user has
// typed a code it generates and, in the same request, the current password
// (and the current code of a secret it replaces): see reauthenticate.
func (s *Service) ConfirmTOTP(ctx context.Context, u *User, r Reauth, sealed []byte, code string) error {
	if s.Sealer == nil {
		return fmt.Errorf("%w: no HSM sealer is configured for TOTP", ErrUnavailable)
	}
	secret, err := s.Sealer.Unseal(ctx, sealed)
	if err != nil {
		return invalid("code", "the enrolment expired or was altered: start again")
	}
	step, ok := totpMatch(secret, code, s.now())
	if !ok {
		return invalid("code", "that code does not match: check the clock of your phone and type the current code")
	}
	if u, err = s.reauthenticate(ctx, u.ID, "totp-enable", r); err != nil {
		return err
	}
	return s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetUserTOTP(ctx, u.ID, sealed, step); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.totp-enable", "user:"+u.ID, map[string]any{})
	})
}
