package store_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func addPasskey(t *testing.T, s *store.Store, u *keyport.User, credID string, count uint32) *keyport.Passkey {
	t.Helper()
	p := &keyport.Passkey{ID: keyport.NewID("pk"), UserID: u.ID, Name: "laptop " + credID, CredentialID: []byte(credID),
		PublicKey: []byte("cose-key-" + credID), SignCount: count, AAGUID: bytes.Repeat([]byte{0xab}, 16),
		Transports: []string{"internal", "hybrid"}, Flags: 0x45, CreatedAt: time.Now().UTC()}
	if err := s.CreatePasskey(ctx, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPasskeysAreStoredPerUserAndACredentialIDIsRegisteredOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		a, b := addUser(t, s, "a@example.com"), addUser(t, s, "b@example.com")
		pa := addPasskey(t, s, a, "cred-a", 7)
		addPasskey(t, s, b, "cred-b", 0)
		got, err := s.ListPasskeys(ctx, a.ID)
		if err != nil || len(got) != 1 {
			t.Fatalf("A's passkeys: %+v %v", got, err)
		}
		g := got[0]
		if g.ID != pa.ID || g.UserID != a.ID || g.Name != pa.Name || !bytes.Equal(g.CredentialID, []byte("cred-a")) ||
			!bytes.Equal(g.PublicKey, pa.PublicKey) || g.SignCount != 7 || !bytes.Equal(g.AAGUID, pa.AAGUID) ||
			len(g.Transports) != 2 || g.Transports[1] != "hybrid" || g.Flags != 0x45 || g.LastUsedAt != nil || g.CreatedAt.IsZero() {
			t.Fatalf("read back %+v, stored %+v", g, pa)
		}
		// The same credential ID for another user is refused.
		dup := &keyport.Passkey{ID: keyport.NewID("pk"), UserID: b.ID, Name: "copy", CredentialID: []byte("cred-a"), PublicKey: []byte("k")}
		if err := s.CreatePasskey(ctx, dup); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("a registered credential ID again: %v", err)
		}
		// B cannot remove A's passkey; A can, once.
		if err := s.DeletePasskey(ctx, b.ID, pa.ID); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("B removing A's passkey: %v", err)
		}
		if err := s.DeletePasskey(ctx, a.ID, pa.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeletePasskey(ctx, a.ID, pa.ID); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("removing it again: %v", err)
		}
		if got, _ := s.ListPasskeys(ctx, a.ID); len(got) != 0 {
			t.Fatalf("A's passkeys after removal: %+v", got)
		}
		if got, _ := s.ListPasskeys(ctx, b.ID); len(got) != 1 || got[0].Transports[0] != "internal" {
			t.Fatalf("B's passkeys: %+v", got)
		}
	})
}

func TestUsePasskeyOnlyMovesTheSignCountForward(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		p := addPasskey(t, s, u, "cred", 5)
		at := time.Now().UTC().Truncate(time.Second)
		for _, n := range []uint32{5, 4, 0} {
			if err := s.UsePasskey(ctx, p.ID, n, 0x05, at); !errors.Is(err, keyport.ErrConflict) {
				t.Fatalf("count %d after 5: %v, want ErrConflict", n, err)
			}
		}
		if err := s.UsePasskey(ctx, p.ID, 6, 0x05, at); err != nil {
			t.Fatal(err)
		}
		got, _ := s.ListPasskeys(ctx, u.ID)
		if got[0].SignCount != 6 || got[0].Flags != 0x05 || got[0].LastUsedAt == nil || !got[0].LastUsedAt.Equal(at) {
			t.Fatalf("after use: %+v", got[0])
		}
		// Parallel uses of one counter value: exactly one wins.
		var wg sync.WaitGroup
		errs := make([]error, 4)
		for i := range errs {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = s.UsePasskey(ctx, p.ID, 9, 0x05, at) }()
		}
		wg.Wait()
		ok := 0
		for _, err := range errs {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, keyport.ErrConflict):
				t.Fatalf("parallel use: %v", err)
			}
		}
		if ok != 1 {
			t.Fatalf("%d parallel uses of count 9 accepted, want 1", ok)
		}
		// An authenticator without a counter (always 0) keeps working.
		z := addPasskey(t, s, u, "zero", 0)
		for i := 0; i < 2; i++ {
			if err := s.UsePasskey(ctx, z.ID, 0, 0x05, at); err != nil {
				t.Fatalf("zero counter, use %d: %v", i, err)
			}
		}
		if err := s.UsePasskey(ctx, "pk_unknown", 10, 0, at); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("unknown passkey: %v", err)
		}
	})
}

func TestTakePasskeyCeremonyWorksOnceAndNotAfterExpiryOrForAnotherPurpose(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		u := addUser(t, s, "a@example.com")
		now := time.Now().UTC()
		live, old := []byte("live-ceremony-hash-0123456789abc"), []byte("old-ceremony-hash-0123456789abcd")
		sess := []byte("session-hash-0123456789abcdef012")
		if err := s.CreatePasskeyCeremony(ctx, &keyport.PasskeyCeremony{Hash: old, UserID: u.ID, Purpose: keyport.PasskeySignIn,
			Data: `{"challenge":"b"}`, CreatedAt: now.Add(-time.Hour), ExpiresAt: now.Add(-time.Second)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TakePasskeyCeremony(ctx, keyport.PasskeySignIn, old, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("expired ceremony: %v", err)
		}
		if err := s.CreatePasskeyCeremony(ctx, &keyport.PasskeyCeremony{Hash: live, UserID: u.ID, Purpose: keyport.PasskeyEnrol,
			SessionHash: sess, Data: `{"challenge":"a"}`, CreatedAt: now, ExpiresAt: now.Add(5 * time.Minute)}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TakePasskeyCeremony(ctx, keyport.PasskeySignIn, live, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("wrong purpose: %v", err)
		}
		got, err := s.TakePasskeyCeremony(ctx, keyport.PasskeyEnrol, live, now)
		if err != nil || got.UserID != u.ID || !bytes.Equal(got.SessionHash, sess) || got.Data != `{"challenge":"a"}` ||
			!got.ExpiresAt.After(now) {
			t.Fatalf("first take: %+v %v", got, err)
		}
		if _, err := s.TakePasskeyCeremony(ctx, keyport.PasskeyEnrol, live, now); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("second take: %v", err)
		}
		// Parallel takes of one ceremony: exactly one gets it.
		h := []byte("race-ceremony-hash-0123456789abc")
		if err := s.CreatePasskeyCeremony(ctx, &keyport.PasskeyCeremony{Hash: h, UserID: u.ID, Purpose: keyport.PasskeySignIn,
			Data: "{}", CreatedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		won := 0
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := s.TakePasskeyCeremony(ctx, keyport.PasskeySignIn, h, now)
				if err == nil {
					mu.Lock()
					won++
					mu.Unlock()
				} else if !errors.Is(err, keyport.ErrNotFound) {
					t.Errorf("parallel take: %v", err)
				}
			}()
		}
		wg.Wait()
		if won != 1 {
			t.Fatalf("%d parallel takes succeeded, want 1", won)
		}
	})
}
