package keyport_test

import (
	"context"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// A provider that signed up but has not confirmed its address cannot be
// approved, directly or through a dual-control request; once the address
// is confirmed it can. A provider an admin created is approvable as ever.
func TestAProviderWhoseSignUpAddressIsUnconfirmedCannotBeApproved(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := dualWorld(t, s, 1)
		p := signUp(t, w, "ops@unconfirmed.example", "a passphrase of words")
		states, err := w.Svc.ProviderEmails(ctx, adminA, []keyport.Provider{*p})
		if err != nil || states[p.ID] != keyport.EmailUnconfirmed {
			t.Fatalf("e-mail state %v, %v; want not confirmed", states, err)
		}
		if err := w.Svc.SetProviderStatus(ctx, adminA, p.ID, keyport.ProviderApproved); !errors.Is(err, keyport.ErrEmailUnconfirmed) {
			t.Fatalf("approving an unconfirmed provider: %v; want ErrEmailUnconfirmed", err)
		}
		if got, _ := w.Store.GetProvider(ctx, p.ID); got.Status != keyport.ProviderPending || w.CountAudit(t, "provider.approve") != 0 {
			t.Fatalf("after the refusal: %s, %d approve events", got.Status, w.CountAudit(t, "provider.approve"))
		}
		w.Svc.DualControl = keyport.DualControl{Admins: 2}
		if _, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionProviderApprove, p.ID, nil, ""); !errors.Is(err, keyport.ErrEmailUnconfirmed) {
			t.Fatalf("requesting approval of an unconfirmed provider: %v; want ErrEmailUnconfirmed", err)
		}
		w.Svc.DualControl = keyport.DualControl{Admins: 1}

		if _, err := w.Svc.VerifyEmail(ctx, mailedToken(t, w, "ops@unconfirmed.example")); err != nil {
			t.Fatal(err)
		}
		if states, _ := w.Svc.ProviderEmails(ctx, adminA, []keyport.Provider{*p}); states[p.ID] != keyport.EmailConfirmed {
			t.Fatalf("after confirming: %v", states)
		}
		if err := w.Svc.SetProviderStatus(ctx, adminA, p.ID, keyport.ProviderApproved); err != nil {
			t.Fatalf("approving the confirmed provider: %v", err)
		}

		byAdmin, _, err := w.Svc.AddProvider(ctx, adminA, "Added Bank", "ops@added.example", keyport.KindBank)
		if err != nil {
			t.Fatal(err)
		}
		if states, _ := w.Svc.ProviderEmails(ctx, adminA, []keyport.Provider{*byAdmin}); states[byAdmin.ID] != keyport.EmailByAdmin {
			t.Fatalf("an admin-made provider: %v", states)
		}
		if err := w.Svc.SetProviderStatus(ctx, adminA, byAdmin.ID, keyport.ProviderApproved); err != nil {
			t.Fatalf("approving an admin-made provider: %v", err)
		}
		if _, err := w.Svc.ProviderEmails(ctx, keyport.Principal{ProviderID: p.ID}, nil); !errors.Is(err, keyport.ErrForbidden) {
			t.Fatalf("a provider asks for the e-mail states: %v", err)
		}
	})
}
