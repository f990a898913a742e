package keyport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

func TestProvidersSeeNeitherLastSeenNorTheStateOfAnotherProvidersDomainButOwnersSeeReachability(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	a, _, wkA := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	b, _, wkB := w.Provider(t, "Bank B", fixture.RSAKeys()[1])
	eid := fixture.EID(t, 0)
	m, err := w.Store.GetModule(ctx, eid)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Store.AcquireLease(ctx, m.ID, "ses_visit", time.Now(), time.Now().Add(time.Minute)); err != nil { // a visit
		t.Fatal(err)
	}
	if v, err := w.Svc.LookupModule(ctx, keyport.Principal{Admin: true, Name: "admin"}, eid); err != nil || v.LastSeen == nil {
		t.Fatalf("admin lookup: %+v %v", v, err)
	}
	if v, err := w.Svc.LookupModule(ctx, a, eid); err != nil || v.LastSeen != nil {
		t.Fatalf("provider lookup shows last_seen: %+v %v", v, err)
	}
	c, _, err := w.Svc.Claim(ctx, a, keyport.ClaimRequest{EID: eid, WrappingKeyID: wkA})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = w.Svc.Claim(ctx, b, keyport.ClaimRequest{EID: eid, AID: c.AID, WrappingKeyID: wkB})
	if !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "not available") ||
		strings.Contains(err.Error(), string(keyport.Assigned)) {
		t.Fatalf("claiming another provider's domain: %v", err)
	}
	// Reachability (flow 4): a provider with a domain on the module sees
	// the last admin session and its own pending jobs; another sees
	// neither.
	req, err := keyport.SecondKeyScript(c.AID, 0x30, 0, 0x31, w.Keys[eid][c.AID], w.Keys[eid][c.AID])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.SubmitScript(ctx, a, eid, c.AID, req); err != nil {
		t.Fatal(err)
	}
	if v, err := w.Svc.LookupModule(ctx, a, eid); err != nil || v.LastSeen == nil || v.PendingJobs != 1 {
		t.Fatalf("owner's lookup: %+v %v", v, err)
	}
	if v, err := w.Svc.LookupModule(ctx, b, eid); err != nil || v.LastSeen != nil || v.PendingJobs != 0 {
		t.Fatalf("another provider's lookup: %+v %v", v, err)
	}
	if v, err := w.Svc.LookupModule(ctx, keyport.Principal{Admin: true, Name: "admin"}, eid); err != nil || v.PendingJobs != 1 {
		t.Fatalf("admin lookup: %+v %v", v, err)
	}
}

func TestAUsedResetLinkEndsEveryOtherResetLinkOfTheUser(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	w.Svc.RequestPasswordReset(ctx, "a@bank.example", "https://portal.example")
	first := mailedToken(t, w, "a@bank.example")
	w.Svc.RequestPasswordReset(ctx, "a@bank.example", "https://portal.example")
	second := mailedToken(t, w, "a@bank.example")
	if first == second {
		t.Fatal("one token for two requests")
	}
	if err := w.Svc.ResetPassword(ctx, second, "a new passphrase here"); err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.ResetPassword(ctx, first, "an attacker's passphrase"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("the older link still resets: %v", err)
	}
}
