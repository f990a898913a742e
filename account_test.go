package keyport_test

import (
	"context"
	"encoding/base32"
	"errors"
	"fmt"
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
	w.Svc.Drain() // a reset link is sent after the answer
	// The newest with a link: a lock notice may have arrived after it.
	em, ok := w.Mail.NewestWith(addr, "token=")
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
	w.Svc.Drain() // the lookup runs after the answer
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

// TestASignUpWithATakenAddressCreatesNothingAndTellsTheAddressesOwner: the
// sign-up form must not tell a stranger who has an account, so a second
// sign-up with an address is answered ErrAddressTaken (which the form shows
// as a sign-up) and the address's owner gets a message instead; nothing of
// the stranger's is stored or mailed back.
func TestASignUpWithATakenAddressCreatesNothingAndTellsTheAddressesOwner(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	first := signUp(t, w, "ops@bank.example", "a passphrase of words")
	before, _ := w.Store.GetUserByEmail(ctx, "ops@bank.example")
	outbox, _ := w.Store.ListOutbox(ctx, "email", 100)
	p, err := w.Svc.SignUpProvider(ctx, keyport.SignUp{Organisation: "Evil <a href=x>Corp</a>", Kind: keyport.KindOther,
		Contact: "Mallory", Email: " OPS@Bank.example ", Password: "another passphrase here"}, "https://portal.example")
	if !errors.Is(err, keyport.ErrAddressTaken) || p != nil {
		t.Fatalf("a sign-up with a taken address: %+v, %v; want ErrAddressTaken", p, err)
	}
	em, ok := w.Mail.Newest("ops@bank.example")
	if !ok || em.Subject != "Sign-up for keyport with your e-mail address" ||
		!strings.Contains(em.Body, "https://portal.example/reset") || !strings.Contains(em.Body, "https://portal.example/login") {
		t.Fatalf("the owner's message: %+v", em)
	}
	for _, stranger := range []string{"Evil", "Corp", "Mallory", "another passphrase"} {
		if strings.Contains(em.Subject+em.Body, stranger) {
			t.Errorf("the owner's message carries the stranger's %q: %q", stranger, em.Body)
		}
	}
	if strings.Contains(em.Body, "token=") {
		t.Errorf("the owner's message carries a token: %q", em.Body)
	}
	after, _ := w.Store.GetUserByEmail(ctx, "ops@bank.example")
	if after.ID != before.ID || after.PasswordHash != before.PasswordHash || after.ProviderID != first.ID {
		t.Fatalf("the account changed: %+v, was %+v", after, before)
	}
	provs, err := w.Store.ListProviders(ctx)
	if err != nil || len(provs) != 1 || provs[0].ID != first.ID {
		t.Fatalf("providers after the second sign-up: %+v, %v", provs, err)
	}
	if now, _ := w.Store.ListOutbox(ctx, "email", 100); len(now) != len(outbox)+1 {
		t.Fatalf("%d e-mails queued by the second sign-up, want 1", len(now)-len(outbox))
	}
	if _, err := w.Svc.Login(ctx, "ops@bank.example", "another passphrase here", ""); !errors.Is(err, keyport.ErrWrongLogin) {
		t.Fatalf("the stranger's password signs in: %v", err)
	}
}

// TestTheAttemptThatLocksAnAccountTellsItsOwnerOnce: the sign-in form says
// no more to a locked account than to an unknown address, so its owner
// learns of the lock by e-mail, once per lock, with the time it ends.
func TestTheAttemptThatLocksAnAccountTellsItsOwnerOnce(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	signUp(t, w, "a@bank.example", "a passphrase of words")
	w.Svc.VerifyEmail(ctx, mailedToken(t, w, "a@bank.example"))
	const subject = "Your keyport account is locked"
	var err error
	for i := 1; i <= keyport.MaxFailedLogins; i++ {
		_, err = w.Svc.Login(ctx, "a@bank.example", "wrong "+string(rune('0'+i)), "")
		if i < keyport.MaxFailedLogins {
			if msgs, _ := w.Store.ListOutbox(ctx, "email", 100); strings.Contains(fmt.Sprint(msgs), subject) {
				t.Fatalf("a lock notice queued after %d wrong passwords", i)
			}
		}
	}
	var locked *keyport.LockedError
	if !errors.As(err, &locked) {
		t.Fatalf("after %d wrong passwords: %v", keyport.MaxFailedLogins, err)
	}
	// The notice is sent after the answer.
	w.Svc.Drain()
	m, ok := w.Mail.Newest("a@bank.example")
	if !ok || m.Subject != subject || !strings.Contains(m.Body, locked.Until.UTC().Format("2006-01-02 15:04")+" UTC") || strings.Contains(m.Body, "wrong 5") {
		t.Fatalf("the lock notice: %v %q", ok, m.Body)
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", ""); !errors.As(err, &locked) {
		t.Fatalf("the right password while locked: %v", err)
	}
	msgs, _ := w.Store.ListOutbox(ctx, "email", 100)
	if n := strings.Count(fmt.Sprint(msgs), subject); n != 1 {
		t.Fatalf("%d lock notices queued after an attempt on the locked account, want still 1", n)
	}
}

// blockingMailer holds each message until released, and says when one
// arrives.
type blockingMailer struct {
	arrived chan keyport.EmailMessage
	release chan struct{}
}

func (m *blockingMailer) Send(_ context.Context, to, subject, body string) error {
	m.arrived <- keyport.EmailMessage{To: to, Subject: subject, Body: body}
	<-m.release
	return nil
}

// TestAResetAnswersBeforeItsMessageIsSentAndDrainWaitsForIt: the answer to
// a reset request for an address with an account does not wait for the
// mail server (as none is asked for an unknown address), and Drain, which
// keyport serve calls when it stops, returns only once the message is
// handed on.
func TestAResetAnswersBeforeItsMessageIsSentAndDrainWaitsForIt(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	signUp(t, w, "a@bank.example", "a passphrase of words")
	m := &blockingMailer{arrived: make(chan keyport.EmailMessage, 1), release: make(chan struct{})}
	w.Svc.Mailer = m
	if err := w.Svc.RequestPasswordReset(ctx, "a@bank.example", "https://portal.example"); err != nil {
		t.Fatal(err) // it answered while the mailer is yet to be asked, or holds the message
	}
	em := <-m.arrived
	if em.Subject != "Reset your keyport password" {
		t.Fatalf("the mailer got %+v", em)
	}
	drained := make(chan struct{})
	go func() { w.Svc.Drain(); close(drained) }()
	// Another request while Drain waits (a sync.WaitGroup would not allow
	// that).
	if err := w.Svc.RequestPasswordReset(ctx, "a@bank.example", "https://portal.example"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-drained:
		t.Fatal("Drain returned while a message was still held by the mailer")
	default:
	}
	close(m.release)
	<-m.arrived
	<-drained
}
