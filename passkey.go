package keyport

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
)

// Passkeys (WebAuthn) as a second sign-in step. A user enrols a passkey on
// the account page; from then on a right password opens no session by
// itself: Login answers *PasskeyRequiredError, and FinishPasskeySignIn opens
// the session once the browser's authenticator has signed the challenge.
// An account that also has TOTP may give its code instead (the fallback);
// one without TOTP has no other way in. Each ceremony's challenge is kept
// server-side (PasskeyCeremony), works once and for PasskeyCeremonyLife.

// Passkey is a user's registered WebAuthn credential.
type Passkey struct {
	ID           string // "pk_…": how pages name it
	UserID       string
	Name         string // chosen by the user at enrolment
	CredentialID []byte
	PublicKey    []byte // COSE_Key, as the authenticator gave it
	SignCount    uint32 // the last signature counter accepted
	AAGUID       []byte // the authenticator model (16 bytes; zero when not told)
	Transports   []string
	Flags        byte // authenticator data flags last seen (UP, UV, BE, BS)
	CreatedAt    time.Time
	LastUsedAt   *time.Time
}

// PasskeyPurpose says which ceremony a challenge belongs to.
type PasskeyPurpose string

// Ceremony purposes.
const (
	PasskeyEnrol  PasskeyPurpose = "enrol"
	PasskeySignIn PasskeyPurpose = "signin"
)

// PasskeyCeremony is a WebAuthn challenge waiting for the browser's answer.
// Only the SHA-256 of the token the browser holds is stored.
type PasskeyCeremony struct {
	Hash    []byte
	UserID  string
	Purpose PasskeyPurpose
	// SessionHash binds an enrolment to the session that began it.
	SessionHash []byte
	// Data is the library's session data (challenge, user handle, allowed
	// credentials, user verification) as JSON.
	Data      string
	CreatedAt time.Time
	ExpiresAt time.Time
}

const (
	// PasskeyCeremonyLife bounds how long a challenge may be answered.
	PasskeyCeremonyLife = 5 * time.Minute
	// PasskeyCeremonyPrefix starts every ceremony token.
	PasskeyCeremonyPrefix = "kpc_"
	maxPasskeyName        = 100
	maxPasskeys           = 20
)

// PasskeyRP is the WebAuthn relying party: the portal as browsers reach it.
// Its ID is the host name of the public URL and the only origin accepted is
// that URL's scheme, host and port.
type PasskeyRP struct {
	ID     string
	Origin string
	Name   string
}

// PasskeyRPFromURL derives the relying party from the portal's public base
// URL. WebAuthn needs a host name (not an IP address) and HTTPS, except on
// localhost, which browsers treat as secure.
func PasskeyRPFromURL(base string) (PasskeyRP, error) {
	u, err := url.Parse(strings.TrimSpace(base))
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return PasskeyRP{}, fmt.Errorf("keyport: passkeys need the portal's public URL (https://host), got %q", base)
	}
	host := strings.ToLower(u.Hostname())
	if net.ParseIP(host) != nil {
		return PasskeyRP{}, fmt.Errorf("keyport: passkeys need a host name in the public URL, not the IP address %s", host)
	}
	if u.Scheme != "https" && host != "localhost" {
		return PasskeyRP{}, fmt.Errorf("keyport: passkeys need an https public URL (plain http only on localhost), got %q", base)
	}
	if err := protocol.ValidateRPID(host); err != nil {
		return PasskeyRP{}, fmt.Errorf("keyport: passkeys: %q is no relying party ID: %w", host, err)
	}
	origin := u.Scheme + "://" + strings.ToLower(u.Host)
	return PasskeyRP{ID: host, Origin: origin, Name: "keyport"}, nil
}

func (rp PasskeyRP) webauthn() (*webauthn.WebAuthn, error) {
	if rp.ID == "" {
		return nil, fmt.Errorf("%w: passkeys are not configured on this installation (the portal has no public host name)", ErrUnavailable)
	}
	return webauthn.New(&webauthn.Config{RPID: rp.ID, RPDisplayName: rp.Name, RPOrigins: []string{rp.Origin},
		AttestationPreference: protocol.PreferNoAttestation,
		AuthenticatorSelection: protocol.AuthenticatorSelection{ResidentKey: protocol.ResidentKeyRequirementPreferred,
			UserVerification: protocol.VerificationRequired},
		Timeouts: webauthn.TimeoutsConfig{
			Login:        webauthn.TimeoutConfig{Timeout: PasskeyCeremonyLife, TimeoutUVD: PasskeyCeremonyLife},
			Registration: webauthn.TimeoutConfig{Timeout: PasskeyCeremonyLife, TimeoutUVD: PasskeyCeremonyLife},
		}})
}

// passkeyUser is a User as the WebAuthn library sees it. The user handle
// is the user ID: random, and no e-mail address reaches the authenticator
// as the handle.
type passkeyUser struct {
	u    *User
	keys []Passkey
}

func (p passkeyUser) WebAuthnID() []byte   { return []byte(p.u.ID) }
func (p passkeyUser) WebAuthnName() string { return p.u.Email }
func (p passkeyUser) WebAuthnDisplayName() string {
	if p.u.Contact != "" {
		return p.u.Contact
	}
	return p.u.Email
}

func (p passkeyUser) WebAuthnCredentials() []webauthn.Credential {
	out := make([]webauthn.Credential, len(p.keys))
	for i, k := range p.keys {
		out[i] = webauthn.Credential{ID: k.CredentialID, PublicKey: k.PublicKey, Transport: transports(k.Transports),
			Flags:         webauthn.NewCredentialFlags(protocol.AuthenticatorFlags(k.Flags)),
			Authenticator: webauthn.Authenticator{AAGUID: k.AAGUID, SignCount: k.SignCount}}
	}
	return out
}

func transports(ts []string) []protocol.AuthenticatorTransport {
	out := make([]protocol.AuthenticatorTransport, len(ts))
	for i, t := range ts {
		out[i] = protocol.AuthenticatorTransport(t)
	}
	return out
}

func descriptors(keys []Passkey) []protocol.CredentialDescriptor {
	out := make([]protocol.CredentialDescriptor, len(keys))
	for i, k := range keys {
		out[i] = protocol.CredentialDescriptor{Type: protocol.PublicKeyCredentialType, CredentialID: k.CredentialID,
			Transport: transports(k.Transports)}
	}
	return out
}

// AAGUIDString is the authenticator model in the usual UUID spelling.
func (p Passkey) AAGUIDString() string {
	if len(p.AAGUID) != 16 {
		return hex.EncodeToString(p.AAGUID)
	}
	h := hex.EncodeToString(p.AAGUID)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// PasskeyEnrolment is a registration ceremony begun for a signed-in user.
type PasskeyEnrolment struct {
	// Token names the ceremony; the enrolment form carries it back.
	Token string
	// Options is the JSON of navigator.credentials.create's argument.
	Options []byte
}

// ListPasskeys returns the user's passkeys.
func (s *Service) ListPasskeys(ctx context.Context, u *User) ([]Passkey, error) {
	return s.Store.ListPasskeys(ctx, u.ID)
}

// BeginPasskeyEnrol starts registering a passkey for u, bound to the
// session (its cookie value) that asks, once u has given the current
// password (and TOTP code) in the same request (see reauthenticate).
func (s *Service) BeginPasskeyEnrol(ctx context.Context, rp PasskeyRP, u *User, r Reauth, sessionToken string) (*PasskeyEnrolment, error) {
	wa, err := rp.webauthn()
	if err != nil {
		return nil, err
	}
	keys, err := s.Store.ListPasskeys(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("keyport: begin passkey enrolment: %w", err)
	}
	if len(keys) >= maxPasskeys {
		return nil, Invalid("", "this account has %d passkeys, the most it may have: remove one first", len(keys))
	}
	if _, err := s.reauthenticate(ctx, u.ID, "passkey-add", r); err != nil {
		return nil, fmt.Errorf("keyport: begin passkey enrolment: %w", err)
	}
	// The authenticator refuses to make a second credential for the user
	// (excludeCredentials).
	creation, sd, err := wa.BeginRegistration(passkeyUser{u: u, keys: keys}, webauthn.WithExclusions(descriptors(keys)))
	if err != nil {
		return nil, fmt.Errorf("keyport: begin passkey enrolment: %w", err)
	}
	opts, err := json.Marshal(creation)
	if err != nil {
		return nil, err
	}
	token, err := s.newCeremony(ctx, u.ID, PasskeyEnrol, HashSecret(sessionToken), sd)
	if err != nil {
		return nil, fmt.Errorf("keyport: begin passkey enrolment: %w", err)
	}
	return &PasskeyEnrolment{Token: token, Options: opts}, nil
}

func (s *Service) newCeremony(ctx context.Context, userID string, purpose PasskeyPurpose, sessionHash []byte, sd *webauthn.SessionData) (string, error) {
	data, err := json.Marshal(sd)
	if err != nil {
		return "", err
	}
	token := randomToken(PasskeyCeremonyPrefix)
	now := s.now().UTC()
	err = s.Store.CreatePasskeyCeremony(ctx, &PasskeyCeremony{Hash: HashSecret(token), UserID: userID, Purpose: purpose,
		SessionHash: sessionHash, Data: string(data), CreatedAt: now, ExpiresAt: now.Add(PasskeyCeremonyLife)})
	return token, err
}

// takeCeremony consumes a ceremony: whatever follows, its challenge cannot
// be answered again.
func (s *Service) takeCeremony(ctx context.Context, purpose PasskeyPurpose, token string) (*PasskeyCeremony, *webauthn.SessionData, error) {
	if !strings.HasPrefix(token, PasskeyCeremonyPrefix) {
		return nil, nil, ErrNotFound
	}
	c, err := s.Store.TakePasskeyCeremony(ctx, purpose, HashSecret(token), s.now().UTC())
	if err != nil {
		return nil, nil, err
	}
	var sd webauthn.SessionData
	if err := json.Unmarshal([]byte(c.Data), &sd); err != nil {
		return nil, nil, fmt.Errorf("keyport: passkey ceremony data: %w", err)
	}
	return c, &sd, nil
}

var errEnrolExpired = invalid("", "this passkey enrolment expired, was used or belongs to another session: start again")

// FinishPasskeyEnrol checks the browser's answer to BeginPasskeyEnrol
// (response: the PublicKeyCredential as JSON) and stores the passkey.
func (s *Service) FinishPasskeyEnrol(ctx context.Context, rp PasskeyRP, u *User, sessionToken, token, name, response string) (*Passkey, error) {
	name = strings.TrimSpace(name)
	if n := utf8.RuneCountInString(name); n == 0 || n > maxPasskeyName {
		return nil, invalid("name", fmt.Sprintf("name the passkey (at most %d characters), e.g. the device it is on", maxPasskeyName))
	}
	wa, err := rp.webauthn()
	if err != nil {
		return nil, err
	}
	c, sd, err := s.takeCeremony(ctx, PasskeyEnrol, token)
	if errors.Is(err, ErrNotFound) {
		return nil, errEnrolExpired
	}
	if err != nil {
		return nil, fmt.Errorf("keyport: finish passkey enrolment: %w", err)
	}
	if c.UserID != u.ID || subtle.ConstantTimeCompare(c.SessionHash, HashSecret(sessionToken)) != 1 {
		return nil, errEnrolExpired
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes([]byte(response))
	if err != nil {
		return nil, invalid("", "the browser's answer is not a passkey registration: "+describeWebAuthn(err))
	}
	keys, err := s.Store.ListPasskeys(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("keyport: finish passkey enrolment: %w", err)
	}
	cred, err := wa.CreateCredential(passkeyUser{u: u, keys: keys}, *sd, parsed)
	if err != nil {
		return nil, invalid("", "the passkey registration was refused: "+describeWebAuthn(err))
	}
	ts := make([]string, len(cred.Transport))
	for i, t := range cred.Transport {
		ts[i] = string(t)
	}
	now := s.now().UTC()
	pk := &Passkey{ID: NewID("pk"), UserID: u.ID, Name: name, CredentialID: cred.ID, PublicKey: cred.PublicKey,
		SignCount: cred.Authenticator.SignCount, AAGUID: cred.Authenticator.AAGUID, Transports: ts,
		Flags: byte(cred.Flags.ProtocolValue()), CreatedAt: now}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.CreatePasskey(ctx, pk); err != nil {
			if errors.Is(err, ErrConflict) {
				return invalid("", "this authenticator's passkey is registered already")
			}
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.passkey-add", "user:"+u.ID,
			map[string]any{"passkey": pk.ID, "name": pk.Name, "aaguid": pk.AAGUIDString(), "transports": ts})
	})
	if err != nil {
		return nil, fmt.Errorf("keyport: finish passkey enrolment: %w", err)
	}
	return pk, nil
}

// Passkey returns one of u's passkeys (ErrNotFound for another user's).
func (s *Service) Passkey(ctx context.Context, u *User, id string) (*Passkey, error) {
	keys, err := s.Store.ListPasskeys(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	for i := range keys {
		if keys[i].ID == id {
			return &keys[i], nil
		}
	}
	return nil, fmt.Errorf("%w: no such passkey", ErrNotFound)
}

// RemovePasskey deletes one of u's passkeys once u has given the current
// password (and TOTP code); an unknown passkey is ErrNotFound before any
// attempt is spent. An admin who removes the last one signs in with the
// password (and TOTP, if on) again.
func (s *Service) RemovePasskey(ctx context.Context, u *User, r Reauth, id string) error {
	if _, err := s.Passkey(ctx, u, id); err != nil {
		return fmt.Errorf("keyport: remove passkey: %w", err)
	}
	if _, err := s.reauthenticate(ctx, u.ID, "passkey-remove", r); err != nil {
		return fmt.Errorf("keyport: remove passkey: %w", err)
	}
	err := s.Store.Tx(ctx, func(tx Repo) error {
		keys, err := tx.ListPasskeys(ctx, u.ID)
		if err != nil {
			return err
		}
		name := ""
		for _, k := range keys {
			if k.ID == id {
				name = k.Name
			}
		}
		if err := tx.DeletePasskey(ctx, u.ID, id); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.passkey-remove", "user:"+u.ID,
			map[string]any{"passkey": id, "name": name, "left": len(keys) - 1})
	})
	if err != nil {
		return fmt.Errorf("keyport: remove passkey: %w", err)
	}
	return nil
}

// PasskeyRequiredError: the password was right and the account signs in
// with a passkey. It matches ErrUnauthenticated: no session is open yet.
type PasskeyRequiredError struct {
	// Token names the sign-in ceremony; the browser holds it until it
	// answers (FinishPasskeySignIn).
	Token string
	// TOTP: the account may give an authenticator code instead.
	TOTP bool

	challenge protocol.URLEncodedBase64
	allow     []protocol.CredentialDescriptor
}

func (e *PasskeyRequiredError) Error() string {
	return "unauthenticated: confirm the sign-in with your passkey"
}

// Is makes a PasskeyRequiredError match ErrUnauthenticated.
func (e *PasskeyRequiredError) Is(target error) bool { return target == ErrUnauthenticated }

// Options is the JSON of navigator.credentials.get's argument for rp.
func (e *PasskeyRequiredError) Options(rp PasskeyRP) []byte {
	b, _ := json.Marshal(protocol.CredentialAssertion{Response: protocol.PublicKeyCredentialRequestOptions{
		Challenge: e.challenge, Timeout: int(PasskeyCeremonyLife / time.Millisecond), RelyingPartyID: rp.ID,
		AllowedCredentials: e.allow, UserVerification: protocol.VerificationRequired}})
	return b
}

// passkeyStep follows a right password on an account with passkeys: a
// sign-in ceremony, and no session. The attempt stays counted until the
// passkey answers (as a right password without its TOTP code does).
func (s *Service) passkeyStep(ctx context.Context, u *User, keys []Passkey) (*LoginResult, error) {
	challenge, err := protocol.CreateChallenge()
	if err != nil {
		return nil, err
	}
	allow := descriptors(keys)
	sd := &webauthn.SessionData{Challenge: challenge.String(), UserID: []byte(u.ID), UserVerification: protocol.VerificationRequired}
	for _, k := range keys {
		sd.AllowedCredentialIDs = append(sd.AllowedCredentialIDs, k.CredentialID)
	}
	token, err := s.newCeremony(ctx, u.ID, PasskeySignIn, nil, sd)
	if err != nil {
		return nil, fmt.Errorf("keyport: login: %w", err)
	}
	return nil, &PasskeyRequiredError{Token: token, TOTP: u.TOTPSealed != nil, challenge: challenge, allow: allow}
}

// errPasskeyFailed is the one answer to a passkey sign-in that fails.
var errPasskeyFailed = fmt.Errorf("%w: the passkey did not confirm the sign-in: sign in again", ErrUnauthenticated)

// FinishPasskeySignIn checks the browser's answer (response: the
// PublicKeyCredential as JSON) to the challenge of a sign-in ceremony and
// opens the session. The ceremony is consumed first, so an assertion
// counts once; an assertion by a credential that is not the user's, for
// another challenge or origin, without user verification, or with a
// signature counter that went back (a cloned authenticator) is refused.
// Every outcome is audited.
func (s *Service) FinishPasskeySignIn(ctx context.Context, rp PasskeyRP, token, response string) (*LoginResult, error) {
	wa, err := rp.webauthn()
	if err != nil {
		return nil, err
	}
	c, sd, err := s.takeCeremony(ctx, PasskeySignIn, token)
	if errors.Is(err, ErrNotFound) {
		s.auditLogin("system", "user.login-failed", "passkey", map[string]any{"reason": "passkey challenge unknown, used or expired"})
		return nil, errPasskeyFailed
	}
	if err != nil {
		return nil, fmt.Errorf("keyport: passkey sign-in: %w", err)
	}
	u, err := s.Store.GetUser(ctx, c.UserID)
	if err != nil {
		return nil, fmt.Errorf("keyport: passkey sign-in: %w", err)
	}
	fail := func(reason string, detail map[string]any) (*LoginResult, error) {
		s.log().Info("passkey sign-in failed", "user", u.ID, "reason", reason)
		if detail == nil {
			detail = map[string]any{}
		}
		detail["reason"] = reason
		s.auditLogin(userActor(u), "user.login-failed", "user:"+u.ID, detail)
		return nil, errPasskeyFailed
	}
	now := s.now().UTC()
	if u.LockedUntil != nil && now.Before(*u.LockedUntil) {
		fail("locked", nil)
		return nil, &LockedError{Until: *u.LockedUntil}
	}
	if u.DisabledAt != nil {
		// Disabled between the password step and the passkey's answer.
		fail("disabled", nil)
		return nil, ErrAccountDisabled
	}
	keys, err := s.Store.ListPasskeys(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("keyport: passkey sign-in: %w", err)
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes([]byte(response))
	if err != nil {
		return fail("passkey answer unreadable: "+describeWebAuthn(err), nil)
	}
	cred, err := wa.ValidateLogin(passkeyUser{u: u, keys: keys}, *sd, parsed)
	if err != nil {
		return fail("passkey assertion refused: "+describeWebAuthn(err), nil)
	}
	var pk *Passkey
	for i := range keys {
		if bytes.Equal(keys[i].CredentialID, cred.ID) {
			pk = &keys[i]
		}
	}
	if pk == nil {
		return fail("passkey assertion refused: unknown credential", nil)
	}
	clone := func(got uint32) (*LoginResult, error) {
		s.auditLogin(userActor(u), "user.passkey-clone", "user:"+u.ID,
			map[string]any{"passkey": pk.ID, "name": pk.Name, "stored_count": pk.SignCount, "presented_count": got})
		return fail("passkey signature counter did not increase (cloned authenticator?)", map[string]any{"passkey": pk.ID})
	}
	got := parsed.Response.AuthenticatorData.Counter
	if cred.Authenticator.CloneWarning {
		return clone(got)
	}
	token = randomToken(SessionPrefix)
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.UsePasskey(ctx, pk.ID, cred.Authenticator.SignCount, byte(cred.Flags.ProtocolValue()), now); err != nil {
			return err
		}
		if err := tx.ResetFailedLogins(ctx, u.ID); err != nil {
			return err
		}
		if err := tx.CreateSession(ctx, &Session{Hash: HashSecret(token), UserID: u.ID, CreatedAt: now,
			ExpiresAt: now.Add(SessionLifetime), LastSeen: now}); err != nil {
			return err
		}
		return s.audit(ctx, tx, userActor(u), "user.login", "user:"+u.ID,
			map[string]any{"passkey": pk.ID, "name": pk.Name, "totp": false})
	})
	if errors.Is(err, ErrConflict) {
		// Another sign-in took this counter value first.
		return clone(got)
	}
	if err != nil {
		return nil, fmt.Errorf("keyport: passkey sign-in: %w", err)
	}
	u.FailedLogins, u.LockedUntil = 0, nil
	return &LoginResult{Token: token, User: u}, nil
}

// describeWebAuthn is a library error in one line, for the audit trail and
// the person enrolling.
func describeWebAuthn(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		if pe.DevInfo != "" {
			return pe.Details + " (" + pe.DevInfo + ")"
		}
		return pe.Details
	}
	return err.Error()
}
