package keyport

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// User is a person who signs in to the portal: a provider's staff member
// (ProviderID set) or an issuer admin (Admin). Only an argon2id hash of the
// password is kept; a TOTP secret is kept sealed by the HSM.
type User struct {
	ID           string
	ProviderID   string
	Email        string
	Contact      string // the person's name, as given at sign-up
	PasswordHash string // PHC string: $argon2id$v=19$m=…,t=…,p=…$salt$hash
	TOTPSealed   []byte // nil: no second factor
	FailedLogins int
	LockedUntil  *time.Time
	TOTPLastStep int64 // the time step of the last TOTP code accepted
	Admin        bool
	VerifiedAt   *time.Time
	CreatedAt    time.Time
	DisabledAt   *time.Time // set: the user may not sign in (admin users, DisableAdminUser)
	// PasswordChangeRequired: the password was made for the user (keyport
	// admin user add), so someone else saw it; the user must choose their
	// own before acting. Setting a password clears it.
	PasswordChangeRequired bool
}

// UserToken is a one-time token sent by e-mail (verify an address, reset a
// password). Only its SHA-256 is stored.
type UserToken struct {
	Hash      []byte
	UserID    string
	Purpose   TokenPurpose
	CreatedAt time.Time
	ExpiresAt time.Time
}

// TokenPurpose says what a UserToken may be used for.
type TokenPurpose string

// Token purposes.
const (
	PurposeVerify TokenPurpose = "verify"
	PurposeReset  TokenPurpose = "reset"
)

// Session is a signed-in browser. Only the SHA-256 of the cookie value is
// stored, so a copy of the database signs nobody in.
type Session struct {
	Hash      []byte
	UserID    string
	CreatedAt time.Time
	ExpiresAt time.Time // CreatedAt + SessionLifetime: the absolute limit
	LastSeen  time.Time // last use, at most sessionTouchEvery old
}

// Account rules.
const (
	// MaxFailedLogins sign-in attempts in a row that do not succeed lock
	// an account for LockFor.
	MaxFailedLogins = 5
	LockFor         = 15 * time.Minute
	// SessionLifetime is the longest a browser stays signed in.
	SessionLifetime = 12 * time.Hour
	// SessionIdle ends a session not used for this long.
	SessionIdle = 30 * time.Minute
	// sessionTouchEvery bounds how often a session's last use is written.
	sessionTouchEvery = time.Minute
	// MinPasswordLength follows NIST SP 800-63B for user-chosen passwords.
	MinPasswordLength = 10
	verifyLifetime    = 48 * time.Hour
	resetLifetime     = time.Hour
	// SessionPrefix starts every session cookie value.
	SessionPrefix = "kps_"
)

// argon2id parameters: RFC 9106's second recommended option scaled to the
// OWASP minimum (19 MiB, 2 passes), so a login costs a few tens of ms.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024
	argonThreads = 1
	argonKeyLen  = 32
)

// HashPassword returns the argon2id PHC string of password with a fresh salt.
func HashPassword(password string) string {
	salt := randomBytes(16)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key))
}

// CheckPassword reports whether password matches a PHC string made by
// HashPassword (with whatever parameters it records).
func CheckPassword(phc, password string) bool {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || t == 0 || p == 0 {
		return false
	}
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1
}

// dummyHash is checked against when the e-mail is unknown, so that a login
// takes as long whether or not the account exists.
var dummyHash = HashPassword("keyport-no-such-user")

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("keyport: no randomness: " + err.Error())
	}
	return b
}

func randomToken(prefix string) string {
	return prefix + base64.RawURLEncoding.EncodeToString(randomBytes(32))
}

// HashSecret is how session and e-mail tokens are stored: SHA-256 of the
// whole value (they hold 256 random bits; no dictionary to attack).
func HashSecret(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// LockedError says an account is locked after too many wrong passwords
// (the sign-in form shows ErrWrongLogin's words instead).
type LockedError struct{ Until time.Time }

func (e *LockedError) Error() string {
	return fmt.Sprintf("this account is locked after %d wrong passwords; try again after %s UTC, or reset the password",
		MaxFailedLogins, e.Until.UTC().Format("15:04"))
}

// Is makes a LockedError match ErrForbidden.
func (e *LockedError) Is(target error) bool { return target == ErrForbidden }

// ErrNotVerified: the user has not confirmed the e-mail address yet.
var ErrNotVerified = fmt.Errorf("%w: confirm your e-mail address first: follow the link in the message we sent", ErrForbidden)

// ErrTOTPRequired: the password was right and the account needs a TOTP code.
var ErrTOTPRequired = fmt.Errorf("%w: enter the 6-digit code from your authenticator app", ErrUnauthenticated)

// ---- Sign-up and e-mail verification (flow 2) ----

// SignUp is what a provider's sign-up form holds.
type SignUp struct {
	Organisation string
	Kind         ProviderKind
	Contact      string
	Email        string
	Password     string
}

// normaliseEmail lower-cases and checks an e-mail address.
func normaliseEmail(email string) (string, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	if at := strings.IndexByte(email, '@'); at < 1 || at == len(email)-1 || len(email) > 254 ||
		strings.ContainsAny(email, " <>,;\"\r\n") || !strings.Contains(email[at:], ".") {
		return "", invalid("email", "enter an e-mail address such as name@example.com")
	}
	return email, nil
}

func checkPasswordRules(field, password, email string) error {
	switch n := utf8.RuneCountInString(password); {
	case n < MinPasswordLength:
		return Invalid(field, "use at least %d characters", MinPasswordLength)
	case len(password) > 256:
		return invalid(field, "use at most 256 characters")
	case strings.EqualFold(password, email):
		return invalid(field, "the password may not be your e-mail address")
	}
	return nil
}

// Validate checks the form field by field and returns every fault.
func (f SignUp) Validate() []*InvalidError {
	var errs []*InvalidError
	add := func(err error) {
		var ie *InvalidError
		if errors.As(err, &ie) {
			errs = append(errs, ie)
		}
	}
	if n := utf8.RuneCountInString(strings.TrimSpace(f.Organisation)); n == 0 || n > 200 {
		add(invalid("organisation", "enter your organisation's name (at most 200 characters)"))
	}
	if !f.Kind.Valid() {
		add(invalid("kind", "choose bank, retailer, transit or other"))
	}
	if n := utf8.RuneCountInString(strings.TrimSpace(f.Contact)); n == 0 || n > 200 {
		add(invalid("contact", "enter the name of a contact person (at most 200 characters)"))
	}
	email, err := normaliseEmail(f.Email)
	add(err)
	add(checkPasswordRules("password", f.Password, email))
	return errs
}

// ErrAddressTaken is SignUpProvider's answer for an address that has an
// account: nothing is created, and the address is sent a message saying so,
// with the links to sign in and to reset the password. A sign-up form
// answers it exactly as a sign-up ("check your e-mail"), so that it does
// not tell a stranger who has an account; the owner learns it from the
// message.
var ErrAddressTaken = errors.New("keyport: sign up: the e-mail address has an account")

// errTaken ends the sign-up's transaction when the address has an account.
var errTaken = errors.New("address taken")

// SignUpProvider creates a pending provider and its first user, and sends
// the address-verification message (flow 2). linkBase is the portal's public
// URL, which the message links to. An address that has an account gets
// ErrAddressTaken, and a message instead.
func (s *Service) SignUpProvider(ctx context.Context, f SignUp, linkBase string) (*Provider, error) {
	if errs := f.Validate(); len(errs) > 0 {
		return nil, errs[0]
	}
	email, _ := normaliseEmail(f.Email)
	now := s.now().UTC()
	prov := &Provider{ID: NewID("prv"), Name: strings.TrimSpace(f.Organisation), Kind: f.Kind, Email: email,
		Status: ProviderPending, CreatedAt: now}
	u := &User{ID: NewID("usr"), ProviderID: prov.ID, Email: email, Contact: strings.TrimSpace(f.Contact),
		PasswordHash: HashPassword(f.Password), CreatedAt: now}
	var mail *mail
	err := s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateProvider(ctx, prov); err != nil {
			if errors.Is(err, ErrConflict) {
				return errTaken
			}
			return err
		}
		if err := tx.CreateUser(ctx, u); err != nil {
			if errors.Is(err, ErrConflict) {
				return errTaken
			}
			return err
		}
		var err error
		mail, err = s.mailToken(ctx, tx, u, PurposeVerify, verifyLifetime, linkBase+"/verify",
			"Confirm your e-mail address for keyport",
			"Hello %s,\n\nplease confirm your e-mail address for %s by opening this link (valid 48 hours):\n\n%s\n\n"+
				"After that, the issuer reviews your sign-up; you can sign in meanwhile.\n", u.Contact, prov.Name)
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, "provider:"+prov.ID, "provider.signup", "provider:"+prov.ID,
			map[string]any{"name": prov.Name, "kind": prov.Kind, "email": email})
	})
	if errors.Is(err, errTaken) {
		return nil, s.tellAddressTaken(ctx, email, linkBase)
	}
	if err != nil {
		return nil, fmt.Errorf("keyport: sign up: %w", err)
	}
	s.deliver(ctx, mail)
	return prov, nil
}

// tellAddressTaken sends email, which has an account, the message that a
// sign-up was tried with it, and returns ErrAddressTaken. The message says
// nothing the form was given (the organisation's name is a stranger's text).
func (s *Service) tellAddressTaken(ctx context.Context, email, linkBase string) error {
	m, err := s.notice(ctx, EmailMessage{To: email, Subject: "Sign-up for keyport with your e-mail address",
		Body: "Hello,\n\nsomeone, perhaps you, tried to sign up for keyport with this e-mail address, which has an " +
			"account already. Nothing was changed.\n\nTo use your account, sign in at " + linkBase + "/login, or " +
			"choose a new password at " + linkBase + "/reset.\n\nIf it was not you, you need not do anything.\n"},
		"system", "provider.signup-refused", "email:"+email, map[string]any{"reason": "address has an account"})
	if err != nil {
		return fmt.Errorf("keyport: sign up: %w", err)
	}
	// Sent before answering, as a new sign-up's verification message is.
	s.deliver(ctx, m)
	return ErrAddressTaken
}

// notice queues the e-mail em (it holds no secret: the outbox keeps it
// whole) with an audit event in one transaction, for deliver.
func (s *Service) notice(ctx context.Context, em EmailMessage, actor, action, object string, detail map[string]any) (*mail, error) {
	var m *mail
	err := s.Store.Tx(ctx, func(tx Repo) (err error) {
		if m, err = s.queueMail(ctx, tx, em, em); err != nil {
			return err
		}
		return s.audit(ctx, tx, actor, action, object, detail)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// mailToken creates a one-time token and queues, in tx, a message with a
// link to page?token=…. The outbox row keeps a redacted body (LinkWithheld
// in place of the link) and the database the token's hash: the live link
// exists only in the returned mail, which deliver hands to the Mailer.
func (s *Service) mailToken(ctx context.Context, tx Repo, u *User, purpose TokenPurpose, life time.Duration, page,
	subject, format string, args ...any) (*mail, error) {
	token := randomToken("")
	now := s.now().UTC()
	if err := tx.CreateUserToken(ctx, &UserToken{Hash: HashSecret(token), UserID: u.ID, Purpose: purpose,
		CreatedAt: now, ExpiresAt: now.Add(life)}); err != nil {
		return nil, err
	}
	link := page + "?token=" + url.QueryEscape(token)
	live := EmailMessage{To: u.Email, Subject: subject, Body: fmt.Sprintf(format, append(args, link)...)}
	redacted := live
	redacted.Body = fmt.Sprintf(format, append(args, LinkWithheld)...)
	return s.queueMail(ctx, tx, live, redacted)
}

// queueMail adds, in tx, the outbox row of the e-mail live, which keeps
// stored (live itself when it holds no link, else with LinkWithheld), and
// returns the mail for deliver.
func (s *Service) queueMail(ctx context.Context, tx Repo, live, stored EmailMessage) (*mail, error) {
	body, _ := json.Marshal(stored)
	m := &OutboxMessage{Topic: "email", Payload: string(body), CreatedAt: s.now().UTC()}
	if err := tx.AddOutbox(ctx, m); err != nil {
		return nil, err
	}
	return &mail{row: m, live: live}, nil
}

// VerifyEmail confirms the address a verification token was sent to.
func (s *Service) VerifyEmail(ctx context.Context, token string) (*User, error) {
	var u *User
	err := s.Store.Tx(ctx, func(tx Repo) error {
		t, err := tx.TakeUserToken(ctx, PurposeVerify, HashSecret(token), s.now().UTC())
		if errors.Is(err, ErrNotFound) {
			return invalid("token", "this link is unknown, used or expired: sign in to have a new one sent")
		}
		if err != nil {
			return err
		}
		if u, err = tx.GetUser(ctx, t.UserID); err != nil {
			return err
		}
		now := s.now().UTC()
		if err := tx.SetUserVerified(ctx, u.ID, now); err != nil {
			return err
		}
		u.VerifiedAt = &now
		return s.audit(ctx, tx, userActor(u), "user.verify", "user:"+u.ID, map[string]any{"email": u.Email})
	})
	if err != nil {
		return nil, fmt.Errorf("keyport: verify e-mail: %w", err)
	}
	return u, nil
}

func userActor(u *User) string {
	if u.Admin {
		return "admin:" + u.Email
	}
	return "provider:" + u.ProviderID
}

// ---- Sign-in ----

// LoginResult is a new session.
type LoginResult struct {
	// Token is the session cookie value; shown to the browser once.
	Token string
	User  *User
}

// ErrWrongLogin is the one answer to an unknown e-mail address and a wrong
// password: it says nothing about the account, not even attempts left. A
// sign-in form gives it for a *LockedError too (the owner is told by
// e-mail); a signed-in user's re-authentication says "locked".
var ErrWrongLogin = fmt.Errorf("%w: wrong e-mail address or password", ErrUnauthenticated)

// errWrongTOTP follows a right password (ErrTOTPRequired has said so).
var errWrongTOTP = fmt.Errorf("%w: the authenticator code is wrong, expired or used before", ErrUnauthenticated)

// checkPasswordHook, if set (tests), runs before each password hash is
// computed for a known account.
var checkPasswordHook func()

// Login checks a password (and a TOTP code when the account has one) and
// opens a session; an account with passkeys gets a *PasskeyRequiredError
// instead, unless it gives its TOTP code. Each attempt on an account is reserved in the store
// before the password hash is computed: MaxFailedLogins attempts that do
// not succeed lock the account for LockFor (*LockedError), however many
// arrive in parallel; only a complete sign-in resets the count. Unknown
// e-mail, wrong password and wrong code give the same ErrUnauthenticated.
func (s *Service) Login(ctx context.Context, email, password, totpCode string) (*LoginResult, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	u, err := s.Store.GetUserByEmail(ctx, email)
	if errors.Is(err, ErrNotFound) {
		CheckPassword(dummyHash, password)
		s.auditLogin("system", "user.login-failed", "email:"+email, map[string]any{"reason": "unknown address"})
		return nil, ErrWrongLogin
	}
	if err != nil {
		return nil, fmt.Errorf("keyport: login: %w", err)
	}
	now := s.now().UTC()
	u, reserved, err := s.Store.ReserveLoginAttempt(ctx, u.ID, MaxFailedLogins, now, now.Add(LockFor))
	if err != nil {
		return nil, fmt.Errorf("keyport: login: %w", err)
	}
	if !reserved {
		// As long as for an unknown address: the time does not tell a
		// locked account from none.
		CheckPassword(dummyHash, password)
		s.auditLogin(userActor(u), "user.login-failed", "user:"+u.ID, map[string]any{"reason": "locked"})
		until := now.Add(LockFor)
		if u.LockedUntil != nil {
			until = *u.LockedUntil
		}
		return nil, &LockedError{Until: until}
	}
	// fail ends an attempt that did not sign in; the reservation stays
	// counted. The attempt that took the last one has locked the account.
	fail := func(reason string, err error) (*LoginResult, error) {
		s.log().Info("sign-in failed", "user", u.ID, "reason", reason, "attempts", u.FailedLogins)
		s.auditLogin(userActor(u), "user.login-failed", "user:"+u.ID, map[string]any{"reason": reason, "attempts": u.FailedLogins})
		if u.LockedUntil != nil {
			s.lockedNow(u)
			return nil, &LockedError{Until: *u.LockedUntil}
		}
		return nil, err
	}
	if checkPasswordHook != nil {
		checkPasswordHook()
	}
	if !CheckPassword(u.PasswordHash, password) {
		return fail("wrong password", ErrWrongLogin)
	}
	if u.DisabledAt != nil {
		return fail("disabled", ErrAccountDisabled)
	}
	// An account with passkeys signs in with one (passkey.go); a TOTP
	// code, if the account has TOTP, is the fallback.
	passkeys, err := s.Store.ListPasskeys(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("keyport: login: %w", err)
	}
	if len(passkeys) > 0 && (totpCode == "" || u.TOTPSealed == nil) {
		return s.passkeyStep(ctx, u, passkeys)
	}
	if u.TOTPSealed != nil {
		// A right password without a code counts too: otherwise it would
		// clear the count between guesses of the code.
		if totpCode == "" {
			return fail("no authenticator code", ErrTOTPRequired)
		}
		step, ok, err := s.checkTOTP(ctx, u, totpCode)
		if err != nil {
			return nil, err
		}
		if !ok {
			return fail("wrong authenticator code", errWrongTOTP)
		}
		if err := s.Store.AcceptTOTPStep(ctx, u.ID, step); errors.Is(err, ErrConflict) {
			return fail("authenticator code used before", errWrongTOTP)
		} else if err != nil {
			return nil, fmt.Errorf("keyport: login: %w", err)
		}
	}
	if u.VerifiedAt == nil {
		if err := s.Store.ResetFailedLogins(ctx, u.ID); err != nil {
			return nil, fmt.Errorf("keyport: login: %w", err)
		}
		return nil, ErrNotVerified
	}
	token := randomToken(SessionPrefix)
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.ResetFailedLogins(ctx, u.ID); err != nil {
			return err
		}
		if err := tx.CreateSession(ctx, &Session{Hash: HashSecret(token), UserID: u.ID, CreatedAt: now,
			ExpiresAt: now.Add(SessionLifetime), LastSeen: now}); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.login", "user:"+u.ID, map[string]any{"totp": u.TOTPSealed != nil, "passkey_fallback": len(passkeys) > 0})
	})
	if err != nil {
		return nil, fmt.Errorf("keyport: login: %w", err)
	}
	u.FailedLogins, u.LockedUntil = 0, nil
	return &LoginResult{Token: token, User: u}, nil
}

// lockedNow records that the attempt just ended locked u's account, and
// tells its owner by e-mail: the sign-in page says no more than "wrong
// e-mail address or password" to a locked account, as to an unknown
// address, so that it does not tell a stranger who has an account.
func (s *Service) lockedNow(u *User) {
	until := u.LockedUntil.UTC().Format("2006-01-02 15:04")
	ctx := context.Background()
	m, err := s.notice(ctx, EmailMessage{To: u.Email, Subject: "Your keyport account is locked",
		Body: fmt.Sprintf("Hello,\n\nyour keyport account was locked after %d sign-in attempts with a wrong password or "+
			"code, until %s UTC. Signing in works again after that time, or at once after you choose a new "+
			"password (\"Forgot your password?\" on the sign-in page).\n\nIf these attempts were not yours, "+
			"someone may be guessing your password: choose a new one.\n", u.FailedLogins, until)},
		"system", "user.lock", "user:"+u.ID, map[string]any{"failed": u.FailedLogins})
	if err != nil {
		s.log().Warn("account lock not audited, its owner not told", "user", u.ID, "err", err)
		return
	}
	// Sent after the answer: the attempt that locks an account takes no
	// longer than one on an unknown address, which sends nothing.
	s.later(func(ctx context.Context) { s.deliver(ctx, m) })
}

// auditLogin records a sign-in event that has no transaction of its own;
// a failure to record it is logged, not shown to the user.
func (s *Service) auditLogin(actor, action, object string, detail map[string]any) {
	ctx := context.Background()
	if err := s.Store.Tx(ctx, func(tx Repo) error { return s.audit(ctx, tx, actor, action, object, detail) }); err != nil {
		s.log().Warn("sign-in event not audited", "action", action, "err", err)
	}
}

// SessionUser is who a session belongs to.
type SessionUser struct {
	User     *User
	Provider *Provider // nil for an admin
	// Principal is what the user may act as: a provider principal only
	// when the provider is approved, an admin principal for admins; none
	// while MustChangePassword.
	Principal Principal
	// MustChangePassword: the user's password was made for them; they may
	// only change it (ChangePassword) or sign out until they have.
	MustChangePassword bool
}

// ResolveSession returns the user of a live session; ErrUnauthenticated for
// an unknown or expired one.
func (s *Service) ResolveSession(ctx context.Context, token string) (*SessionUser, error) {
	if !strings.HasPrefix(token, SessionPrefix) {
		return nil, ErrUnauthenticated
	}
	now := s.now().UTC()
	sess, err := s.Store.GetSession(ctx, HashSecret(token), now)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrUnauthenticated
	}
	if err != nil {
		return nil, err
	}
	if now.Sub(sess.LastSeen) >= SessionIdle {
		if err := s.Store.DeleteSession(ctx, sess.Hash); err != nil {
			return nil, err
		}
		return nil, ErrUnauthenticated
	}
	if now.Sub(sess.LastSeen) >= sessionTouchEvery {
		if err := s.Store.TouchSession(ctx, sess.Hash, now); err != nil {
			return nil, err
		}
	}
	u, err := s.Store.GetUser(ctx, sess.UserID)
	if err != nil {
		return nil, err
	}
	if u.DisabledAt != nil {
		// Disabling deletes the sessions; this covers one opened meanwhile.
		if err := s.Store.DeleteSession(ctx, sess.Hash); err != nil {
			return nil, err
		}
		return nil, ErrUnauthenticated
	}
	su := &SessionUser{User: u}
	if u.PasswordChangeRequired {
		su.MustChangePassword = true
		return su, nil
	}
	if u.Admin {
		su.Principal = Principal{Admin: true, Name: u.Email, UserID: u.ID}
		return su, nil
	}
	if su.Provider, err = s.Store.GetProvider(ctx, u.ProviderID); err != nil {
		return nil, err
	}
	if su.Provider.Status == ProviderApproved {
		su.Principal = Principal{ProviderID: u.ProviderID, Name: u.Email, UserID: u.ID}
	}
	return su, nil
}

// Logout ends a session.
func (s *Service) Logout(ctx context.Context, token string) error {
	now := s.now().UTC()
	sess, err := s.Store.GetSession(ctx, HashSecret(token), now)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.DeleteSession(ctx, sess.Hash); err != nil {
			return err
		}
		u, err := tx.GetUser(ctx, sess.UserID)
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.logout", "user:"+u.ID, map[string]any{})
	})
}

// RequestPasswordReset mails a reset link if the address has an account.
// It says nothing either way, and answers before it looks, so that it
// cannot be used to find accounts (Drain waits for the message).
func (s *Service) RequestPasswordReset(ctx context.Context, email, linkBase string) error {
	email, err := normaliseEmail(email)
	if err != nil {
		return err
	}
	// The address is looked up, and its message sent, after the answer:
	// the answer comes as soon for an address with an account as for one
	// without.
	s.later(func(ctx context.Context) { s.mailReset(ctx, email, linkBase) })
	return nil
}

// mailReset is RequestPasswordReset's lookup and message; it logs what
// fails, as nobody waits for it.
func (s *Service) mailReset(ctx context.Context, email, linkBase string) {
	u, err := s.Store.GetUserByEmail(ctx, email)
	if errors.Is(err, ErrNotFound) {
		s.log().Info("password reset for an unknown address")
		return
	}
	if err != nil {
		s.log().Warn("password reset not sent", "err", err)
		return
	}
	var mail *mail
	err = s.Store.Tx(ctx, func(tx Repo) error {
		var err error
		mail, err = s.mailToken(ctx, tx, u, PurposeReset, resetLifetime, linkBase+"/reset/confirm",
			"Reset your keyport password",
			"Hello,\n\nsomeone asked to reset the keyport password of this address. If it was you, open this link "+
				"within an hour:\n\n%s\n\nIf not, ignore this message: nothing changes.\n")
		return err
	})
	if err != nil {
		s.log().Warn("password reset not sent", "user", u.ID, "err", err)
		return
	}
	s.deliver(ctx, mail)
}

// ResetPassword sets a new password with a reset token, unlocks the account
// and ends every session of the user.
func (s *Service) ResetPassword(ctx context.Context, token, password string) error {
	err := s.Store.Tx(ctx, func(tx Repo) error {
		t, err := tx.TakeUserToken(ctx, PurposeReset, HashSecret(token), s.now().UTC())
		if errors.Is(err, ErrNotFound) {
			return invalid("token", "this reset link is unknown, used or expired: ask for a new one")
		}
		if err != nil {
			return err
		}
		u, err := tx.GetUser(ctx, t.UserID)
		if err != nil {
			return err
		}
		if err := checkPasswordRules("password", password, u.Email); err != nil {
			return err
		}
		if err := tx.SetUserPassword(ctx, u.ID, HashPassword(password)); err != nil {
			return err
		}
		if err := tx.ResetFailedLogins(ctx, u.ID); err != nil {
			return err
		}
		if u.VerifiedAt == nil {
			// The link reached the mailbox: that verifies it too.
			if err := tx.SetUserVerified(ctx, u.ID, s.now().UTC()); err != nil {
				return err
			}
		}
		// Every other reset link of the user dies with this one.
		if err := tx.DeleteUserTokens(ctx, u.ID, PurposeReset); err != nil {
			return err
		}
		if err := tx.DeleteUserSessions(ctx, u.ID); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.password-reset", "user:"+u.ID, map[string]any{})
	})
	if err != nil {
		return fmt.Errorf("keyport: reset password: %w", err)
	}
	return nil
}

// AddAdminUser creates a verified issuer-admin user with a random password,
// returned once for the operator p to pass on (the command line route). The
// operator has seen it, so the user must choose their own at the first
// sign-in before acting as an admin (PasswordChangeRequired).
func (s *Service) AddAdminUser(ctx context.Context, p Principal, email string) (password string, err error) {
	if !p.Admin {
		return "", ErrForbidden
	}
	email, err = normaliseEmail(email)
	if err != nil {
		return "", err
	}
	password = base64.RawURLEncoding.EncodeToString(randomBytes(15))
	now := s.now().UTC()
	u := &User{ID: NewID("usr"), Email: email, Admin: true, PasswordHash: HashPassword(password), VerifiedAt: &now, CreatedAt: now,
		PasswordChangeRequired: true}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreateUser(ctx, u); err != nil {
			if errors.Is(err, ErrConflict) {
				return Invalid("email", "a user with e-mail %s exists", email)
			}
			return err
		}
		return s.audit(ctx, tx, p.Actor(), "admin-user.add", "user:"+u.ID, map[string]any{"email": email})
	})
	if err != nil {
		return "", fmt.Errorf("keyport: add admin user: %w", err)
	}
	return password, nil
}

// ---- Re-authentication for changes to sign-in settings ----

// Reauth is what a change to a signed-in user's sign-in settings (password,
// TOTP) or webhook URL, or a new API token, carries in the same request:
// the current password, and the current TOTP code when the account has one.
type Reauth struct {
	Password string
	Code     string
}

// reauthenticate checks r against user id like a sign-in attempt: it is
// reserved first (ReserveLoginAttempt), so wrong passwords and codes here
// count towards MaxFailedLogins and lock the account as at sign-in; a
// locked account is refused (*LockedError). A wrong password or code is an
// *InvalidError on current_password or current_code. Success clears the
// count, as a sign-in does.
func (s *Service) reauthenticate(ctx context.Context, id, what string, r Reauth) (*User, error) {
	now := s.now().UTC()
	u, reserved, err := s.Store.ReserveLoginAttempt(ctx, id, MaxFailedLogins, now, now.Add(LockFor))
	if err != nil {
		return nil, err
	}
	if !reserved {
		s.auditLogin(userActor(u), "user.reauth-failed", "user:"+u.ID, map[string]any{"for": what, "reason": "locked"})
		until := now.Add(LockFor)
		if u.LockedUntil != nil {
			until = *u.LockedUntil
		}
		return nil, &LockedError{Until: until}
	}
	fail := func(reason string, err error) (*User, error) {
		s.auditLogin(userActor(u), "user.reauth-failed", "user:"+u.ID, map[string]any{"for": what, "reason": reason, "attempts": u.FailedLogins})
		if u.LockedUntil != nil {
			s.lockedNow(u)
			return nil, &LockedError{Until: *u.LockedUntil}
		}
		return nil, err
	}
	if !CheckPassword(u.PasswordHash, r.Password) {
		return fail("wrong password", invalid("current_password", "the current password is wrong: nothing was changed"))
	}
	if u.TOTPSealed != nil {
		if strings.TrimSpace(r.Code) == "" {
			return fail("no authenticator code", invalid("current_code", "enter the current code from your authenticator app"))
		}
		step, ok, err := s.checkTOTP(ctx, u, r.Code)
		if err != nil {
			return nil, err
		}
		if !ok {
			return fail("wrong authenticator code", invalid("current_code", "the authenticator code is wrong, expired or used before: nothing was changed"))
		}
		if err := s.Store.AcceptTOTPStep(ctx, u.ID, step); errors.Is(err, ErrConflict) {
			return fail("authenticator code used before", invalid("current_code", "the authenticator code is wrong, expired or used before: nothing was changed"))
		} else if err != nil {
			return nil, err
		}
	}
	if err := s.Store.ResetFailedLogins(ctx, u.ID); err != nil {
		return nil, err
	}
	return u, nil
}

// ChangePassword sets a new password for a signed-in user who gives the
// current one (and the current TOTP code, if enrolled). Every pending reset
// link of the user dies with the old password.
func (s *Service) ChangePassword(ctx context.Context, userID, session string, r Reauth, password string) error {
	u, err := s.Store.GetUser(ctx, userID)
	if err != nil {
		return fmt.Errorf("keyport: change password: %w", err)
	}
	if err := checkPasswordRules("password", password, u.Email); err != nil {
		return err
	}
	if u, err = s.reauthenticate(ctx, userID, "password", r); err != nil {
		return fmt.Errorf("keyport: change password: %w", err)
	}
	if u.PasswordChangeRequired && CheckPassword(u.PasswordHash, password) {
		return Invalid("password", "choose a password of your own, not the one you were given")
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetUserPassword(ctx, u.ID, HashPassword(password)); err != nil {
			return err
		}
		if err := tx.DeleteUserTokens(ctx, u.ID, PurposeReset); err != nil {
			return err
		}
		// Every other session ends (someone who knew the old password may
		// hold one); the one the change was made in goes on, as it was.
		var keep *Session
		if session != "" {
			if keep, err = tx.GetSession(ctx, HashSecret(session), s.now().UTC()); errors.Is(err, ErrNotFound) {
				keep = nil
			} else if err != nil {
				return err
			}
		}
		if err := tx.DeleteUserSessions(ctx, u.ID); err != nil {
			return err
		}
		if keep != nil && keep.UserID == u.ID {
			if err := tx.CreateSession(ctx, keep); err != nil {
				return err
			}
		}
		return s.audit(ctx, tx, userActor(u), "user.password-change", "user:"+u.ID, map[string]any{"other_sessions_ended": true})
	})
	if err != nil {
		return fmt.Errorf("keyport: change password: %w", err)
	}
	return nil
}

// DisableTOTP turns the second factor off for a user who gives the current
// password and TOTP code.
func (s *Service) DisableTOTP(ctx context.Context, userID string, r Reauth) error {
	u, err := s.reauthenticate(ctx, userID, "totp-disable", r)
	if err != nil {
		return fmt.Errorf("keyport: turn TOTP off: %w", err)
	}
	if u.TOTPSealed == nil {
		return nil
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetUserTOTP(ctx, u.ID, nil, u.TOTPLastStep); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.totp-disable", "user:"+u.ID, map[string]any{})
	})
	if err != nil {
		return fmt.Errorf("keyport: turn TOTP off: %w", err)
	}
	return nil
}

// SetWebhookReauth is SetWebhook for a signed-in portal user, who gives the
// current password (and TOTP code) in the same request. The URL is checked
// first, so that a typing mistake costs no sign-in attempt.
func (s *Service) SetWebhookReauth(ctx context.Context, su *SessionUser, r Reauth, raw string) (string, error) {
	if su.Principal.ProviderID == "" {
		return "", ErrForbidden
	}
	if _, err := CheckWebhookURL(raw, s.Delivery.DevLoopbackWebhooks); err != nil {
		return "", err
	}
	if _, err := s.reauthenticate(ctx, su.User.ID, "webhook", r); err != nil {
		return "", fmt.Errorf("keyport: set webhook: %w", err)
	}
	return s.SetWebhook(ctx, su.Principal, raw)
}
