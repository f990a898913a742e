package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// A claim written with a token to check is written only while that token
// is live, by ClaimDomain in a transaction and by the claim writer (the
// pipeline on PostgreSQL): a revoked, expired, unknown, admin or other
// provider's token, or a suspended provider, is ErrTokenNotLive with
// nothing stored, and the claims beside it in the batch are not disturbed.
func TestAClaimIsWrittenOnlyWhileItsTokenIsLive(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		importModules(t, s, b.ID, 1, 20, 1)
		p := createProvider(t, s, "a@x.example")
		other := createProvider(t, s, "b@x.example")
		wk := createWrappingKey(t, s, p.ID)
		past := time.Now().Add(-time.Minute)
		token := func(providerID string, admin bool, expires *time.Time) string {
			t.Helper()
			tok := &keyport.APIToken{ProviderID: providerID, Admin: admin, Name: "t", Hash: []byte(time.Now().String()),
				CreatedAt: time.Now(), ExpiresAt: expires}
			if err := s.CreateAPIToken(ctx, tok); err != nil {
				t.Fatal(err)
			}
			return tok.ID
		}
		live, revoked := token(p.ID, false, nil), token(p.ID, false, nil)
		if err := s.RevokeAPIToken(ctx, p.ID, revoked, time.Now()); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name, token string
		}{
			{"revoked", revoked},
			{"expired", token(p.ID, false, &past)},
			{"unknown", "tok-none"},
			{"an admin's", token("", true, nil)},
			{"another provider's", token(other.ID, false, nil)},
		}
		n := 0
		write := func(token string, inTx bool) error {
			n++
			w := claimWrite(t, s, p.ID, wk.ID, n, "", "")
			w.Token = token
			if inTx {
				return s.Tx(ctx, func(tx keyport.Repo) error { return tx.ClaimDomain(ctx, w.Claim, w.From, w.Outbox, w.Token) })
			}
			return s.ClaimCommits().WriteClaim(ctx, w, testKeys)
		}
		rows := func() string { return countRows(t, s, "claims") + "/" + countRows(t, s, "outbox") }
		for _, inTx := range []bool{true, false} {
			if err := write(live, inTx); err != nil {
				t.Fatalf("a live token (in a transaction: %v): %v", inTx, err)
			}
			for _, c := range cases {
				before := rows()
				err := write(c.token, inTx)
				if !errors.Is(err, keyport.ErrTokenNotLive) || !errors.Is(err, keyport.ErrUnauthenticated) {
					t.Errorf("%s token (in a transaction: %v): %v, want ErrTokenNotLive", c.name, inTx, err)
				}
				if after := rows(); after != before {
					t.Errorf("%s token (in a transaction: %v) wrote claims/outbox %s → %s", c.name, inTx, before, after)
				}
				if d, _ := s.GetDomain(ctx, testEID(n), testAID(1)); d.State != keyport.Unassigned {
					t.Errorf("%s token: domain %s", c.name, d.State)
				}
			}
		}
		// The suspended provider's live token.
		if err := s.SetProviderStatus(ctx, p.ID, keyport.ProviderSuspended); err != nil {
			t.Fatal(err)
		}
		if err := write(live, false); !errors.Is(err, keyport.ErrTokenNotLive) {
			t.Errorf("a suspended provider's token: %v, want ErrTokenNotLive", err)
		}
		if err := write("", false); err != nil {
			t.Errorf("no token to check: %v", err)
		}
		if got := countRows(t, s, "claims"); got != "3" {
			t.Errorf("claims stored: %s, want 3 (two live tokens, one without)", got)
		}
	})
}
