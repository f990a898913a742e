package keyport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

func TestPasskeyRelyingPartyComesFromThePublicURLAndNeedsAHostNameAndHTTPS(t *testing.T) {
	for _, c := range []struct{ url, id, origin string }{
		{"https://portal.example.com", "portal.example.com", "https://portal.example.com"},
		{"https://Portal.Example.com:8443/some/path", "portal.example.com", "https://portal.example.com:8443"},
		{"http://localhost:8080", "localhost", "http://localhost:8080"},
	} {
		rp, err := keyport.PasskeyRPFromURL(c.url)
		if err != nil || rp.ID != c.id || rp.Origin != c.origin || rp.Name == "" {
			t.Errorf("%s: %+v %v, want ID %s origin %s", c.url, rp, err, c.id, c.origin)
		}
	}
	for _, bad := range []string{"", "portal.example.com", "http://portal.example.com", "http://127.0.0.1:8080", "https://[::1]:8443", "ftp://portal.example.com"} {
		if rp, err := keyport.PasskeyRPFromURL(bad); err == nil {
			t.Errorf("%q accepted as %+v", bad, rp)
		}
	}
}

// addStoredPasskey registers a credential for u as enrolment would store
// it; the sign-in tests here stop before any assertion is checked.
func addStoredPasskey(t *testing.T, w *fixture.World, u *keyport.User) {
	t.Helper()
	if err := w.Store.CreatePasskey(context.Background(), &keyport.Passkey{ID: keyport.NewID("pk"), UserID: u.ID, Name: "laptop",
		CredentialID: []byte("credential-of-" + u.ID), PublicKey: []byte{0xa5}, Transports: []string{"internal"}}); err != nil {
		t.Fatal(err)
	}
}

func TestAnAccountWithAPasskeyGetsNoSessionForThePasswordAloneAndItsTOTPCodeIsTheOnlyFallback(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	now := time.Now()
	w.Svc.Now = func() time.Time { return now }
	const email, pw = "a@bank.example", "a passphrase of words"
	u := verifiedUser(t, w, email, pw)
	addStoredPasskey(t, w, u)

	var pk *keyport.PasskeyRequiredError
	_, err := w.Svc.Login(ctx, email, pw, "")
	if !errors.As(err, &pk) || !errors.Is(err, keyport.ErrUnauthenticated) || pk.TOTP || !strings.HasPrefix(pk.Token, keyport.PasskeyCeremonyPrefix) {
		t.Fatalf("password of a passkey account: %v", err)
	}
	rp, _ := keyport.PasskeyRPFromURL("https://portal.example")
	if opts := string(pk.Options(rp)); !strings.Contains(opts, `"rpId":"portal.example"`) || !strings.Contains(opts, `"userVerification":"required"`) ||
		!strings.Contains(opts, `"allowCredentials":[{"type":"public-key"`) {
		t.Fatalf("request options %s", opts)
	}
	// A code does not stand in for the passkey while the account has no TOTP.
	if _, err := w.Svc.Login(ctx, email, pw, "123456"); !errors.As(err, &pk) {
		t.Fatalf("a code on an account without TOTP: %v", err)
	}
	// A wrong password is a wrong password: no ceremony.
	if _, err := w.Svc.Login(ctx, email, "not the passphrase", ""); errors.As(err, &pk) || !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("wrong password: %v", err)
	}
	// An answer that is no assertion fails, and uses the ceremony up.
	if _, err := w.Svc.FinishPasskeySignIn(ctx, rp, pk.Token, `{"id":"x"}`); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("junk answer: %v", err)
	}
	if _, err := w.Svc.FinishPasskeySignIn(ctx, rp, pk.Token, `{"id":"x"}`); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("second answer to one ceremony: %v", err)
	}
	// Without a relying party nothing is checked and nothing is accepted.
	if _, err := w.Svc.FinishPasskeySignIn(ctx, keyport.PasskeyRP{}, "kpc_x", "{}"); !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("no relying party: %v", err)
	}
	if n := countSessions(t, w, u.ID); n != 0 {
		t.Fatalf("%d sessions without the passkey", n)
	}

	// With TOTP enrolled, its code is the fallback, and only the right one.
	// (Each password step above counted as an attempt; start afresh.)
	if err := w.Store.ResetFailedLogins(ctx, u.ID); err != nil {
		t.Fatal(err)
	}
	seed := enableTOTP(t, w, u, now.Add(-30*time.Second))
	if _, err := w.Svc.Login(ctx, email, pw, ""); !errors.As(err, &pk) || !pk.TOTP {
		t.Fatalf("password of a passkey account with TOTP: %v", err)
	}
	if _, err := w.Svc.Login(ctx, email, pw, "000000"); errors.As(err, &pk) || !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("wrong fallback code: %v", err)
	}
	res, err := w.Svc.Login(ctx, email, pw, keyport.TOTPCode(seed, now))
	if err != nil || res.Token == "" {
		t.Fatalf("the TOTP fallback: %v", err)
	}
	if n := countSessions(t, w, u.ID); n != 1 {
		t.Fatalf("%d sessions after the fallback", n)
	}
	evs, _ := w.Store.RecentAudit(ctx, 50)
	found := false
	for _, e := range evs {
		if e.Action == "user.login" && e.Object == "user:"+u.ID && strings.Contains(e.Detail, `"passkey_fallback":true`) {
			found = true
		}
	}
	if !found {
		t.Fatalf("the fallback sign-in is not audited as one: %+v", evs[:min(4, len(evs))])
	}
}

func TestAPasskeyEnrolmentIsBoundToTheSessionThatBeganItAndWorksOnce(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	u := verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	rp, _ := keyport.PasskeyRPFromURL("https://portal.example")
	// The current password is part of the request; a wrong one begins
	// nothing and counts as a failed sign-in attempt.
	if _, err := w.Svc.BeginPasskeyEnrol(ctx, rp, u, keyport.Reauth{Password: "not the passphrase"}, "kps_session-one"); !errors.Is(err, keyport.ErrInvalid) ||
		!strings.Contains(err.Error(), "current password is wrong") {
		t.Fatalf("wrong current password: %v", err)
	}
	if got, _ := w.Store.GetUser(ctx, u.ID); got.FailedLogins != 1 {
		t.Fatalf("failed attempts %d after a wrong current password, want 1", got.FailedLogins)
	}
	en, err := w.Svc.BeginPasskeyEnrol(ctx, rp, u, keyport.Reauth{Password: "a passphrase of words"}, "kps_session-one")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := w.Store.GetUser(ctx, u.ID); got.FailedLogins != 0 {
		t.Fatalf("failed attempts %d after the right password, want 0", got.FailedLogins)
	}
	if o := string(en.Options); !strings.Contains(o, `"rp":{"name":"keyport","id":"portal.example"}`) ||
		!strings.Contains(o, `"userVerification":"required"`) || strings.Contains(o, u.Email+`","id"`) {
		t.Fatalf("creation options %s", o)
	}
	// Another session of the same user cannot finish it, and the attempt
	// uses it up.
	if _, err := w.Svc.FinishPasskeyEnrol(ctx, rp, u, "kps_session-two", en.Token, "laptop", "{}"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("another session: %v", err)
	}
	if _, err := w.Svc.FinishPasskeyEnrol(ctx, rp, u, "kps_session-one", en.Token, "laptop", "{}"); err == nil ||
		!strings.Contains(err.Error(), "expired, was used") {
		t.Fatalf("the right session after the wrong one: %v", err)
	}
	if keys, _ := w.Svc.ListPasskeys(ctx, u); len(keys) != 0 {
		t.Fatalf("passkeys stored: %+v", keys)
	}
	// Without a relying party enrolment does not begin.
	if _, err := w.Svc.BeginPasskeyEnrol(ctx, keyport.PasskeyRP{}, u, keyport.Reauth{Password: "a passphrase of words"}, "kps_session-one"); !errors.Is(err, keyport.ErrUnavailable) {
		t.Fatalf("no relying party: %v", err)
	}
}

func TestRemovingAPasskeyTakesTheCurrentPasswordAndAnUnknownOneCostsNoAttempt(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	u := verifiedUser(t, w, "r@bank.example", "a passphrase of words")
	addStoredPasskey(t, w, u)
	keys, err := w.Svc.ListPasskeys(ctx, u)
	if err != nil || len(keys) != 1 {
		t.Fatalf("passkeys %+v %v", keys, err)
	}
	right := keyport.Reauth{Password: "a passphrase of words"}
	if err := w.Svc.RemovePasskey(ctx, u, right, "pk_not-this-users"); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("unknown passkey: %v", err)
	}
	if err := w.Svc.RemovePasskey(ctx, u, keyport.Reauth{Password: "a wrong guess"}, keys[0].ID); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("wrong current password: %v", err)
	}
	if got, _ := w.Store.GetUser(ctx, u.ID); got.FailedLogins != 1 {
		t.Fatalf("failed attempts %d, want 1 (the unknown passkey costs none)", got.FailedLogins)
	}
	if left, _ := w.Svc.ListPasskeys(ctx, u); len(left) != 1 {
		t.Fatalf("a wrong password removed the passkey: %+v", left)
	}
	if err := w.Svc.RemovePasskey(ctx, u, right, keys[0].ID); err != nil {
		t.Fatal(err)
	}
	if left, _ := w.Svc.ListPasskeys(ctx, u); len(left) != 0 {
		t.Fatalf("passkeys after removal: %+v", left)
	}
	evs, _ := w.Store.RecentAudit(ctx, 20)
	var reauthFailed, removed bool
	for _, e := range evs {
		reauthFailed = reauthFailed || e.Action == "user.reauth-failed" && strings.Contains(e.Detail, "passkey-remove")
		removed = removed || e.Action == "user.passkey-remove" && strings.Contains(e.Detail, keys[0].ID)
	}
	if !reauthFailed || !removed {
		t.Fatalf("audit: reauth-failed %v, passkey-remove %v", reauthFailed, removed)
	}
}

// A disabled admin with a passkey gets no passkey step, and a step begun
// before the disabling does not open a session.
func TestADisabledAccountGetsNoPasskeyStepAndCannotFinishOneBegunBefore(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	const email = "second@issuer.example"
	pw, err := w.Svc.AddAdminUser(ctx, fixture.Admin, email)
	if err != nil {
		t.Fatal(err)
	}
	u, err := w.Store.GetUserByEmail(ctx, email)
	if err != nil {
		t.Fatal(err)
	}
	addStoredPasskey(t, w, u)
	_, err = w.Svc.Login(ctx, email, pw, "")
	var step *keyport.PasskeyRequiredError
	if !errors.As(err, &step) {
		t.Fatalf("enabled admin with a passkey: %v, want the passkey step", err)
	}
	if _, err := w.Svc.SetAdminUserDisabled(ctx, fixture.Admin, email, true); err != nil {
		t.Fatal(err)
	}
	rp, _ := keyport.PasskeyRPFromURL("https://portal.example")
	if res, err := w.Svc.FinishPasskeySignIn(ctx, rp, step.Token, "{}"); !errors.Is(err, keyport.ErrAccountDisabled) || res != nil {
		t.Fatalf("finishing a step begun before the disabling: %+v %v", res, err)
	}
	_, err = w.Svc.Login(ctx, email, pw, "")
	if errors.As(err, &step) || !errors.Is(err, keyport.ErrAccountDisabled) {
		t.Fatalf("disabled admin with a passkey: %v, want ErrAccountDisabled and no passkey step", err)
	}
	if n := countSessions(t, w, u.ID); n != 0 {
		t.Fatalf("%d sessions opened for the disabled admin", n)
	}
}
