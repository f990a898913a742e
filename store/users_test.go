package store_test

import (
	"errors"
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

func TestRecordFailedLoginLocksTheUserWhenTheCountReachesTheMaximum(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		until := time.Now().Add(time.Hour).UTC()
		for i := 1; i <= 3; i++ {
			got, err := s.RecordFailedLogin(ctx, u.ID, 3, until)
			if err != nil || got.FailedLogins != i {
				t.Fatalf("failure %d: %+v %v", i, got, err)
			}
			if locked := got.LockedUntil != nil; locked != (i == 3) {
				t.Fatalf("after %d failures locked=%v", i, locked)
			}
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
