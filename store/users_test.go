package store_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func addUser(t *testing.T, s *store.Store, email string) *keyport.User {
	t.Helper()
	p := &keyport.Provider{ID: keyport.NewID("prv"), Name: "P " + email, Kind: keyport.KindBank, Email: email, Status: keyport.ProviderPending}
	if err := s.CreateProvider(ctx, p); err != nil {
		t.Fatal(err)
	}
	u := &keyport.User{ID: keyport.NewID("usr"), ProviderID: p.ID, Email: email, Contact: "C", PasswordHash: "$argon2id$x"}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestCreateUserRefusesATakenEmailWithErrConflict(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		addUser(t, s, "a@example.com")
		err := s.CreateUser(ctx, &keyport.User{ID: keyport.NewID("usr"), Email: "a@example.com", PasswordHash: "h"})
		if !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("second user with the address: %v", err)
		}
	})
}

func TestReserveLoginAttemptLocksTheUserWhenTheCountReachesTheMaximum(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		now := time.Now().UTC()
		until := now.Add(time.Hour)
		for i := 1; i <= 3; i++ {
			got, reserved, err := s.ReserveLoginAttempt(ctx, u.ID, 3, now, until)
			if err != nil || !reserved || got.FailedLogins != i {
				t.Fatalf("failure %d: %+v %v %v", i, got, reserved, err)
			}
			if locked := got.LockedUntil != nil; locked != (i == 3) {
				t.Fatalf("after %d failures locked=%v", i, locked)
			}
		}
		if got, reserved, err := s.ReserveLoginAttempt(ctx, u.ID, 3, now, until); err != nil || reserved || got.FailedLogins != 3 {
			t.Fatalf("a fourth attempt while locked: %+v %v %v", got, reserved, err)
		}
		// Once the lock has run out the count starts afresh.
		if got, reserved, err := s.ReserveLoginAttempt(ctx, u.ID, 3, until, until.Add(time.Hour)); err != nil || !reserved ||
			got.FailedLogins != 1 || got.LockedUntil != nil {
			t.Fatalf("after the lock ran out: %+v %v %v", got, reserved, err)
		}
		if err := s.ResetFailedLogins(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		got, _ := s.GetUser(ctx, u.ID)
		if got.FailedLogins != 0 || got.LockedUntil != nil {
			t.Fatalf("after reset: %+v", got)
		}
	})
}

func TestTakeUserTokenWorksOnceAndNotAfterExpiryOrForAnotherPurpose(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		now := time.Now().UTC()
		for _, h := range [][]byte{[]byte("live-token-hash-0123456789abcdef"), []byte("old-token-hash-0123456789abcdef0")} {
			exp := now.Add(time.Hour)
			if h[0] == 'o' {
				exp = now.Add(-time.Second)
			}
			if err := s.CreateUserToken(ctx, &keyport.UserToken{Hash: h, UserID: u.ID, Purpose: keyport.PurposeVerify, ExpiresAt: exp}); err != nil {
				t.Fatal(err)
			}
		}
		live := []byte("live-token-hash-0123456789abcdef")
		if _, err := s.TakeUserToken(ctx, keyport.PurposeReset, live, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("wrong purpose: %v", err)
		}
		if got, err := s.TakeUserToken(ctx, keyport.PurposeVerify, live, now); err != nil || got.UserID != u.ID {
			t.Fatalf("first take: %+v %v", got, err)
		}
		if _, err := s.TakeUserToken(ctx, keyport.PurposeVerify, live, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("second take: %v", err)
		}
		if _, err := s.TakeUserToken(ctx, keyport.PurposeVerify, []byte("old-token-hash-0123456789abcdef0"), now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("expired token: %v", err)
		}
	})
}

func TestGetSessionFindsOnlyUnexpiredSessionsAndDeleteUserSessionsEndsThemAll(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		now := time.Now().UTC()
		a, b := []byte("session-a-hash-0123456789abcdef0"), []byte("session-b-hash-0123456789abcdef0")
		s.CreateSession(ctx, &keyport.Session{Hash: a, UserID: u.ID, ExpiresAt: now.Add(time.Hour)})
		s.CreateSession(ctx, &keyport.Session{Hash: b, UserID: u.ID, ExpiresAt: now.Add(-time.Minute)})
		if got, err := s.GetSession(ctx, a, now); err != nil || got.UserID != u.ID {
			t.Fatalf("live session: %+v %v", got, err)
		}
		if _, err := s.GetSession(ctx, b, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("expired session: %v", err)
		}
		if err := s.DeleteUserSessions(ctx, u.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetSession(ctx, a, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("after DeleteUserSessions: %v", err)
		}
	})
}

func TestRevokeAPITokenOfAnotherProviderIsNotFoundAndChangesNothing(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		a, b := addUser(t, s, "a@example.com"), addUser(t, s, "b@example.com")
		tok := &keyport.APIToken{ID: keyport.NewID("tok"), ProviderID: a.ProviderID, Name: "t", Hash: []byte("hash-of-token-a-0123456789abcdef")}
		if err := s.CreateAPIToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if err := s.RevokeAPIToken(ctx, b.ProviderID, tok.ID, time.Now()); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("B revoking A's token: %v", err)
		}
		ts, err := s.ListAPITokens(ctx, a.ProviderID)
		if err != nil || len(ts) != 1 || ts[0].RevokedAt != nil {
			t.Fatalf("A's tokens: %+v %v", ts, err)
		}
		if err := s.RevokeAPIToken(ctx, a.ProviderID, tok.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
		if bt, _ := s.ListAPITokens(ctx, b.ProviderID); len(bt) != 0 {
			t.Fatalf("B lists A's tokens: %+v", bt)
		}
	})
}

func TestPortalStatsOfAnEmptyStoreAreAllZero(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		st, err := s.PortalStats(ctx, time.Now().Add(-24*time.Hour))
		if err != nil || st.Modules != 0 || len(st.ClaimsPerDay) != 0 {
			t.Fatalf("empty store: %+v %v", st, err)
		}
	})
}

func TestReserveLoginAttemptInParallelReservesNoMoreThanTheMaximum(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		now := time.Now().UTC()
		var mu sync.Mutex
		var wg sync.WaitGroup
		reservedN := 0
		for range 40 {
			wg.Go(func() {
				_, reserved, err := s.ReserveLoginAttempt(ctx, u.ID, 5, now, now.Add(time.Hour))
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				if reserved {
					reservedN++
				}
				mu.Unlock()
			})
		}
		wg.Wait()
		got, _ := s.GetUser(ctx, u.ID)
		if reservedN != 5 || got.FailedLogins != 5 || got.LockedUntil == nil {
			t.Fatalf("%d of 40 parallel attempts reserved; user %+v", reservedN, got)
		}
	})
}

func TestAcceptTOTPStepRefusesTheSameOrAnEarlierStep(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		if err := s.SetUserTOTP(ctx, u.ID, []byte("sealed"), 100); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			step int64
			ok   bool
		}{{100, false}, {101, true}, {101, false}, {99, false}, {103, true}} {
			err := s.AcceptTOTPStep(ctx, u.ID, c.step)
			if c.ok != (err == nil) || (!c.ok && !errors.Is(err, keyport.ErrConflict)) {
				t.Fatalf("step %d: %v", c.step, err)
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		accepted := 0
		for range 10 {
			wg.Go(func() {
				if s.AcceptTOTPStep(ctx, u.ID, 104) == nil {
					mu.Lock()
					accepted++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if accepted != 1 {
			t.Fatalf("one step accepted %d times in parallel", accepted)
		}
	})
}

func TestSessionLastSeenStartsAtCreationAndTouchSessionMovesIt(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		now := time.Now().UTC().Truncate(time.Second)
		h := []byte("session-hash-0123456789abcdef012")
		if err := s.CreateSession(ctx, &keyport.Session{Hash: h, UserID: u.ID, CreatedAt: now, ExpiresAt: now.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		got, err := s.GetSession(ctx, h, now)
		if err != nil || !got.LastSeen.Equal(now) {
			t.Fatalf("new session: %+v %v", got, err)
		}
		if err := s.TouchSession(ctx, h, now.Add(5*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if got, err = s.GetSession(ctx, h, now); err != nil || !got.LastSeen.Equal(now.Add(5*time.Minute)) {
			t.Fatalf("touched session: %+v %v", got, err)
		}
	})
}

func TestPasswordChangeRequiredIsStoredAndClearedBySettingAPassword(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := &keyport.User{ID: keyport.NewID("usr"), Email: "given@example.com", PasswordHash: "h", Admin: true, PasswordChangeRequired: true}
		if err := s.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetUser(ctx, u.ID); err != nil || !got.PasswordChangeRequired {
			t.Fatalf("stored: %+v %v", got, err)
		}
		if err := s.SetUserPassword(ctx, u.ID, "h2"); err != nil {
			t.Fatal(err)
		}
		if got, err := s.GetUserByEmail(ctx, "given@example.com"); err != nil || got.PasswordChangeRequired || got.PasswordHash != "h2" {
			t.Fatalf("after SetUserPassword: %+v %v", got, err)
		}
		if got, err := s.GetUser(ctx, addUser(t, s, "plain@example.com").ID); err != nil || got.PasswordChangeRequired {
			t.Fatalf("a user made without the mark: %+v %v", got, err)
		}
	})
}
