package keyport_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// A claim authenticated from what its token was a few seconds ago
// (AuthenticateClaim) commits only if the token is still live when the
// claim is written: here the token is revoked, or its provider suspended,
// behind this service's back (as another replica would), and every later
// claim, replay or refusal answers as for an unknown token, with nothing
// written.
func TestAClaimFindsItsTokenLiveWhereItIsWritten(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := fixture.New(t, s, 4, 2)
		sp := fixture.RSAKeys()[0]
		_, token, wk := w.Provider(t, "Bank A", sp)
		p, err := w.Svc.AuthenticateClaim(ctx, token)
		if err != nil {
			t.Fatal(err)
		}
		c, created, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(t, 0), WrappingKeyID: wk, IdempotencyKey: "k1"})
		if err != nil || !created {
			t.Fatalf("claim with a live token: %+v %v", c, err)
		}
		toks, err := w.Svc.ListAPITokens(ctx, p)
		if err != nil || len(toks) != 1 {
			t.Fatalf("tokens: %+v %v", toks, err)
		}
		before, beforeOutbox := written(t, w)

		// Revoked past this service: AuthenticateClaim still answers from
		// memory, the claim does not.
		if err := s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.RevokeAPIToken(ctx, p.ProviderID, toks[0].ID, time.Now())
		}); err != nil {
			t.Fatal(err)
		}
		stale, err := w.Svc.AuthenticateClaim(ctx, token)
		if err != nil {
			t.Fatalf("the remembered token: %v (the test needs it remembered)", err)
		}
		if _, _, err := w.Svc.Claim(ctx, stale, keyport.ClaimRequest{EID: fixture.EID(t, 1), WrappingKeyID: wk}); !errors.Is(err, keyport.ErrUnauthenticated) {
			t.Errorf("claim with a revoked token: %v, want ErrUnauthenticated", err)
		}
		// Nor does it learn anything else: a taken domain, an unknown
		// module, a replay of its own earlier claim.
		for _, req := range []keyport.ClaimRequest{
			{EID: fixture.EID(t, 0), AID: c.AID, WrappingKeyID: wk},
			{EID: fixture.EID(t, 9), WrappingKeyID: wk},
			{EID: fixture.EID(t, 0), WrappingKeyID: wk, IdempotencyKey: "k1"},
		} {
			p, err := w.Svc.AuthenticateClaim(ctx, token)
			if err != nil {
				break // forgotten after the first refusal: refused at the door
			}
			if got, _, err := w.Svc.Claim(ctx, p, req); !errors.Is(err, keyport.ErrUnauthenticated) {
				t.Errorf("%+v with a revoked token: %+v %v, want ErrUnauthenticated", req, got, err)
			}
		}
		if _, err := w.Svc.AuthenticateClaim(ctx, token); !errors.Is(err, keyport.ErrUnauthenticated) {
			t.Errorf("a refused token is still remembered: %v", err)
		}
		if d, _ := w.Store.GetDomain(ctx, fixture.EID(t, 1), fixture.AID(1)); d.State != keyport.Unassigned {
			t.Errorf("domain after the refused claim: %s", d.State)
		}
		if n, m := written(t, w); n != before || m != beforeOutbox {
			t.Errorf("a refused claim wrote: claim events %d → %d, outbox %d → %d", before, n, beforeOutbox, m)
		}

		// A suspended provider: refused as Authenticate refuses it.
		_, token2, wk2 := w.Provider(t, "Bank B", sp)
		p2, err := w.Svc.AuthenticateClaim(ctx, token2)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.SetProviderStatus(ctx, p2.ProviderID, keyport.ProviderSuspended)
		}); err != nil {
			t.Fatal(err)
		}
		if p2, err = w.Svc.AuthenticateClaim(ctx, token2); err != nil {
			t.Fatalf("the remembered token: %v", err)
		}
		if _, _, err := w.Svc.Claim(ctx, p2, keyport.ClaimRequest{EID: fixture.EID(t, 2), WrappingKeyID: wk2}); !errors.Is(err, keyport.ErrForbidden) {
			t.Errorf("claim of a suspended provider: %v, want ErrForbidden", err)
		}
		if n, m := written(t, w); n != before || m != beforeOutbox {
			t.Errorf("a suspended provider's claim wrote: claim events %d → %d, outbox %d → %d", before, n, beforeOutbox, m)
		}
		if r, err := w.Svc.VerifyAudit(ctx); err != nil || r.Events == 0 {
			t.Errorf("audit: %+v %v", r, err)
		}
	})
}

// written counts what claims leave: claim audit events and outbox rows.
func written(t *testing.T, w *fixture.World) (int, int) {
	t.Helper()
	msgs, err := w.Store.ListOutbox(context.Background(), "", 10000)
	if err != nil {
		t.Fatal(err)
	}
	return w.CountAudit(t, "claim"), len(msgs)
}
