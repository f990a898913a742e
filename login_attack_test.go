package keyport_test

import (
	"context"
	"encoding/base32"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func verifiedUser(t *testing.T, w *fixture.World, email, password string) *keyport.User {
	t.Helper()
	signUp(t, w, email, password)
	u, err := w.Svc.VerifyEmail(context.Background(), mailedToken(t, w, email))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// countSessions counts the sessions opened for the user: each is audited
// as user.login in the transaction that stores it.
func countSessions(t *testing.T, w *fixture.World, userID string) int {
	t.Helper()
	events, err := w.Store.RecentAudit(context.Background(), 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range events {
		if e.Action == "user.login" && e.Object == "user:"+userID {
			n++
		}
	}
	return n
}

// A burst of 40 wrong passwords with the right one among them: no more than
// MaxFailedLogins are evaluated, the account ends locked, and the right
// password, arriving while the first attempts are still being checked, is
// refused without a session.
func TestParallelWrongPasswordsAreEvaluatedAtMostMaxFailedLoginsTimesAndTheRightOneInTheBurstIsLocked(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		w := fixture.New(t, s, 1, 1)
		ctx := context.Background()
		u := verifiedUser(t, w, "a@bank.example", "a passphrase of words")

		var evaluated atomic.Int32
		entered := make(chan struct{}, 64)
		release := make(chan struct{})
		keyport.SetCheckPasswordHook(func() {
			evaluated.Add(1)
			entered <- struct{}{}
			<-release // hold the evaluations open while the rest of the burst arrives
		})
		defer keyport.SetCheckPasswordHook(nil)

		var wg sync.WaitGroup
		var refusedLocked atomic.Int32
		for range 40 {
			wg.Go(func() {
				res, err := w.Svc.Login(ctx, "a@bank.example", "wrong password!", "")
				if res != nil {
					t.Error("a wrong password opened a session")
				}
				var locked *keyport.LockedError
				if errors.As(err, &locked) {
					refusedLocked.Add(1)
				} else if !errors.Is(err, keyport.ErrUnauthenticated) {
					t.Errorf("wrong password: %v", err)
				}
			})
		}
		// The right password joins the burst once the first attempts hold
		// every reservation; it returns before they are released.
		for range keyport.MaxFailedLogins {
			<-entered
		}
		res, rightErr := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
		if res != nil {
			t.Error("the right password in the burst opened a session")
		}
		close(release)
		wg.Wait()

		var locked *keyport.LockedError
		if !errors.As(rightErr, &locked) {
			t.Fatalf("the right password in the burst: %v", rightErr)
		}
		if n := evaluated.Load(); n > keyport.MaxFailedLogins {
			t.Fatalf("%d passwords evaluated, at most %d may be", n, keyport.MaxFailedLogins)
		}
		got, _ := w.Store.GetUser(ctx, u.ID)
		if got.FailedLogins != keyport.MaxFailedLogins || got.LockedUntil == nil || !got.LockedUntil.After(time.Now()) {
			t.Fatalf("after the burst: failed %d, locked until %v", got.FailedLogins, got.LockedUntil)
		}
		if n := countSessions(t, w, u.ID); n != 0 {
			t.Fatalf("%d sessions opened for a locked account", n)
		}
		if refusedLocked.Load() < 40-keyport.MaxFailedLogins {
			t.Fatalf("only %d of the burst were refused as locked", refusedLocked.Load())
		}
	})
}

func TestWrongPasswordAndUnknownAddressGiveTheSameMessage(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	_, errWrong := w.Svc.Login(ctx, "a@bank.example", "not the password", "")
	_, errUnknown := w.Svc.Login(ctx, "nobody@bank.example", "not the password", "")
	if errWrong == nil || errUnknown == nil || errWrong.Error() != errUnknown.Error() {
		t.Fatalf("wrong password: %v; unknown address: %v", errWrong, errUnknown)
	}
	if strings.Contains(errWrong.Error(), "left") {
		t.Fatalf("the message counts attempts: %v", errWrong)
	}
}

func enableTOTP(t *testing.T, w *fixture.World, u *keyport.User, at time.Time) []byte {
	t.Helper()
	en, err := w.Svc.BeginTOTP(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(en.Secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.ConfirmTOTP(context.Background(), u, keyport.Reauth{Password: "a passphrase of words"}, en.Sealed, keyport.TOTPCode(seed, at)); err != nil {
		t.Fatal(err)
	}
	return seed
}

func TestATOTPCodeSignsInOnceAndTheEnrolmentCodeNotAtAll(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	now := time.Now()
	w.Svc.Now = func() time.Time { return now }
	u := verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	seed := enableTOTP(t, w, u, now.Add(-30*time.Second))
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", keyport.TOTPCode(seed, now.Add(-30*time.Second))); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("the enrolment code signs in: %v", err)
	}
	code := keyport.TOTPCode(seed, now)
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", code); err != nil {
		t.Fatalf("first use of the code: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", code); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("second use of the same code: %v", err)
	}
	// Nor the code of the step before, still inside the drift window.
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", keyport.TOTPCode(seed, now.Add(-30*time.Second))); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("an earlier code after a later one: %v", err)
	}
	if n := countSessions(t, w, u.ID); n != 1 {
		t.Fatalf("%d sessions from one code", n)
	}
}

func TestTOTPGuessesCountTowardsTheLockEvenWithTheRightPasswordBetween(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	u := verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	enableTOTP(t, w, u, time.Now())
	var err error
	for range keyport.MaxFailedLogins {
		// A right password alone must not clear the count between guesses.
		_, _ = w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
		_, err = w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "000000")
	}
	var locked *keyport.LockedError
	if !errors.As(err, &locked) {
		t.Fatalf("after guessing codes: %v", err)
	}
}

func TestASessionEndsAfterIdleTimeAndAfterItsLifetimeAndUseKeepsItAlive(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	now := time.Now()
	w.Svc.Now = func() time.Time { return now }
	verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	res, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	// Used every 20 minutes, it lives until its lifetime is over.
	start := now
	for now.Before(start.Add(keyport.SessionLifetime - 20*time.Minute)) {
		now = now.Add(20 * time.Minute)
		if _, err := w.Svc.ResolveSession(ctx, res.Token); err != nil {
			t.Fatalf("in use after %v: %v", now.Sub(start), err)
		}
	}
	now = start.Add(keyport.SessionLifetime)
	if _, err := w.Svc.ResolveSession(ctx, res.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("after its lifetime: %v", err)
	}
	now = now.Add(time.Hour)
	res, err = w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(keyport.SessionIdle)
	if _, err := w.Svc.ResolveSession(ctx, res.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("after %v idle: %v", keyport.SessionIdle, err)
	}
}

func TestSignInSignOutLockAndTOTPAreAuditedWithoutThePassword(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	u := verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	res, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.Logout(ctx, res.Token); err != nil {
		t.Fatal(err)
	}
	_, _ = w.Svc.Login(ctx, "nobody@bank.example", "secret guess one", "")
	for range keyport.MaxFailedLogins {
		_, _ = w.Svc.Login(ctx, "a@bank.example", "secret guess two", "")
	}
	w.Store.ResetFailedLogins(ctx, u.ID)
	enableTOTP(t, w, u, time.Now())
	events, err := w.Store.RecentAudit(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, e := range events {
		seen[e.Action]++
		for _, secret := range []string{"a passphrase of words", "secret guess"} {
			if strings.Contains(e.Detail, secret) {
				t.Fatalf("%s records the password: %s", e.Action, e.Detail)
			}
		}
	}
	for action, n := range map[string]int{"user.login": 1, "user.logout": 1, "user.login-failed": 1 + keyport.MaxFailedLogins,
		"user.lock": 1, "user.totp-enable": 1} {
		if seen[action] != n {
			t.Errorf("%s audited %d times, want %d (all: %v)", action, seen[action], n, seen)
		}
	}
}
