package keyport_test

import (
	"context"
	"encoding/base32"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

func accountWorld(t *testing.T) *fixture.World {
	t.Helper()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	w.Svc.Sealer = w.HSM
	return w
}

// mailedToken returns the one-time token of the newest e-mail to addr, as
// the Mailer got it (the outbox keeps no link).
func mailedToken(t *testing.T, w *fixture.World, addr string) string {
	t.Helper()
	em, ok := w.Mail.Newest(addr)
	i := strings.Index(em.Body, "token=")
	if !ok || i < 0 {
		t.Fatalf("no mail with a link to %s", addr)
	}
	raw := strings.Fields(em.Body[i+len("token="):])[0]
	tok, _ := url.QueryUnescape(raw)
	return tok
}

func signUp(t *testing.T, w *fixture.World, email, password string) *keyport.Provider {
	t.Helper()
	p, err := w.Svc.SignUpProvider(context.Background(), keyport.SignUp{Organisation: "Org " + email, Kind: keyport.KindRetailer,
		Contact: "Grace", Email: email, Password: password}, "https://portal.example")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSignUpStoresAnArgon2idHashAndMailsAVerificationLinkWhoseTokenIsNotStored(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	p := signUp(t, w, "Ops@Shop.example", "a passphrase of words")
	u, err := w.Store.GetUserByEmail(ctx, "ops@shop.example")
	if err != nil || !strings.HasPrefix(u.PasswordHash, "$argon2id$v=19$") || p.Status != keyport.ProviderPending {
		t.Fatalf("user %+v, provider %+v, %v", u, p, err)
	}
	tok := mailedToken(t, w, "ops@shop.example")
	if _, err := w.Store.TakeUserToken(ctx, keyport.PurposeVerify, []byte(tok), time.Now()); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatal("the token itself is stored, not only its hash")
	}
	if _, err := w.Svc.VerifyEmail(ctx, tok); err != nil {
		t.Fatalf("verify with the mailed token: %v", err)
	}
	if _, err := w.Svc.VerifyEmail(ctx, tok); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("the token works twice: %v", err)
	}
}

func TestLoginIsRefusedUntilTheAddressIsVerifiedAndGivesNoProviderRightsUntilApproved(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	p := signUp(t, w, "a@bank.example", "a passphrase of words")
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", ""); !errors.Is(err, keyport.ErrNotVerified) {
		t.Fatalf("login before verifying: %v", err)
	}
	w.Svc.VerifyEmail(ctx, mailedToken(t, w, "a@bank.example"))
	res, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	su, err := w.Svc.ResolveSession(ctx, res.Token)
	if err != nil || su.Principal.ProviderID != "" || su.Principal.Admin {
		t.Fatalf("pending provider's principal %+v, %v", su.Principal, err)
	}
	if err := w.Svc.SetProviderStatus(ctx, fixture.Admin, p.ID, keyport.ProviderApproved); err != nil {
		t.Fatal(err)
	}
	if su, _ = w.Svc.ResolveSession(ctx, res.Token); su.Principal.ProviderID != p.ID {
		t.Fatalf("approved provider's principal %+v", su.Principal)
	}
	if err := w.Svc.Logout(ctx, res.Token); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.ResolveSession(ctx, res.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("session after logout: %v", err)
	}
}

func TestPasswordResetUnlocksALockedAccountAndEndsItsSessions(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	signUp(t, w, "a@bank.example", "a passphrase of words")
	w.Svc.VerifyEmail(ctx, mailedToken(t, w, "a@bank.example"))
	res, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	var locked *keyport.LockedError
	for i := 0; i < keyport.MaxFailedLogins; i++ {
		_, err = w.Svc.Login(ctx, "a@bank.example", "wrong", "")
	}
	if !errors.As(err, &locked) {
		t.Fatalf("after %d wrong passwords: %v", keyport.MaxFailedLogins, err)
	}
	if err := w.Svc.RequestPasswordReset(ctx, "a@bank.example", "https://portal.example"); err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.ResetPassword(ctx, mailedToken(t, w, "a@bank.example"), "a new passphrase here"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.ResolveSession(ctx, res.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("old session after reset: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a new passphrase here", ""); err != nil {
		t.Fatalf("login with the new password: %v", err)
	}
}

func TestRequestPasswordResetForAnUnknownAddressSaysNothingAndMailsNothing(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	if err := w.Svc.RequestPasswordReset(ctx, "nobody@nowhere.example", "https://portal.example"); err != nil {
		t.Fatal(err)
	}
	if msgs, _ := w.Store.ListOutbox(ctx, "email", 10); len(msgs) != 0 || len(w.Mail.All()) != 0 {
		t.Fatalf("%d mails queued, %d sent", len(msgs), len(w.Mail.All()))
	}
}

func TestTOTPAccountNeedsTheCurrentCodeAfterThePasswordAndTheSeedIsStoredSealed(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	signUp(t, w, "a@bank.example", "a passphrase of words")
	u, _ := w.Svc.VerifyEmail(ctx, mailedToken(t, w, "a@bank.example"))
	en, err := w.Svc.BeginTOTP(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(en.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.ConfirmTOTP(ctx, u, keyport.Reauth{Password: "a passphrase of words"}, en.Sealed, "000000x"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("confirm with a wrong code: %v", err)
	}
	// Confirmed with the current step's code. Later codes are the next
	// step's: accepted while the server is in this step or the two after
	// it, so a step edge crossed between making a code and checking it
	// changes nothing (a previous step's code would fail across one).
	confirming := keyport.TOTPCode(seed, time.Now())
	if err := w.Svc.ConfirmTOTP(ctx, u, keyport.Reauth{Password: "a passphrase of words"}, en.Sealed, confirming); err != nil {
		t.Fatal(err)
	}
	stored, _ := w.Store.GetUser(ctx, u.ID)
	if strings.Contains(string(stored.TOTPSealed), string(seed)) {
		t.Fatal("the TOTP seed is stored in clear")
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", ""); !errors.Is(err, keyport.ErrTOTPRequired) {
		t.Fatalf("login without a code: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "123456"); !errors.Is(err, keyport.ErrUnauthenticated) &&
		keyport.TOTPCode(seed, time.Now()) != "123456" {
		t.Fatalf("login with a wrong code: %v", err)
	}
	// The code that confirmed enrolment does not sign in as well.
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", confirming); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("login with the code that confirmed enrolment: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", keyport.TOTPCode(seed, time.Now().Add(30*time.Second))); err != nil {
		t.Fatalf("login with the code: %v", err)
	}
}

func TestTOTPCodeMatchesTheRFC6238SHA1TestVectors(t *testing.T) {
	seed := []byte("12345678901234567890")
	// RFC 6238 Appendix B, SHA-1, last 6 of the 8 digits.
	for unix, want := range map[int64]string{59: "287082", 1111111109: "081804", 1234567890: "005924", 2000000000: "279037"} {
		if got := keyport.TOTPCode(seed, time.Unix(unix, 0)); got != want {
			t.Errorf("T=%d: %s, want %s", unix, got, want)
		}
	}
}

func TestCheckPasswordAcceptsTheRightPasswordOnly(t *testing.T) {
	h := keyport.HashPassword("right")
	if !keyport.CheckPassword(h, "right") || keyport.CheckPassword(h, "wrong") || keyport.CheckPassword("garbage", "right") {
		t.Fatal("CheckPassword does not tell right from wrong")
	}
	if keyport.HashPassword("right") == h {
		t.Fatal("two hashes of one password are equal: no salt")
	}
}
