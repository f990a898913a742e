package keyport_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func dualWorld(t *testing.T, s *store.Store, admins int) *fixture.World {
	w := fixture.New(t, s, 1, 1)
	w.Svc.DualControl = keyport.DualControl{Admins: admins}
	return w
}

var (
	adminA = keyport.Principal{Admin: true, Name: "alice@issuer.test"}
	adminB = keyport.Principal{Admin: true, Name: "bob@issuer.test"}
	adminC = keyport.Principal{Admin: true, Name: "carol@issuer.test"}
)

func TestAPSKExportNeedsASecondAdminAndHappensOnceForTheRequester(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		ctx := context.Background()
		w := dualWorld(t, s, 2)
		eid := fixture.EID(t, 0)
		if _, err := w.Svc.ExportHandsetPSK(ctx, adminA, eid); !errors.Is(err, keyport.ErrApprovalRequired) {
			t.Fatalf("a direct export: %v, want ErrApprovalRequired", err)
		}
		r, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionPSKExport, string(eid), nil, "handset agent for the field test")
		if err != nil || r.State != keyport.ApprovalPending || r.Required != 2 {
			t.Fatalf("request: %+v, %v", r, err)
		}
		if _, err := w.Svc.ApproveRequest(ctx, adminA, r.ID); !errors.Is(err, keyport.ErrOwnRequest) {
			t.Fatalf("own approval: %v, want ErrOwnRequest", err)
		}
		if _, err := w.Svc.ExecuteApproval(ctx, adminA, r.ID); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("execute before approval: %v, want ErrConflict", err)
		}
		if r, err = w.Svc.ApproveRequest(ctx, adminB, r.ID); err != nil || r.State != keyport.ApprovalApproved {
			t.Fatalf("B approves: %+v, %v", r, err)
		}
		if _, err := w.Svc.ApproveRequest(ctx, adminC, r.ID); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("approving an approved request: %v", err)
		}
		if _, err := w.Svc.ExecuteApproval(ctx, adminB, r.ID); !errors.Is(err, keyport.ErrForbidden) {
			t.Fatalf("the approver executes: %v, want ErrForbidden", err)
		}
		// The requester executes, from many goroutines at once: one export.
		var ok atomic.Int32
		var psk []byte
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				res, err := w.Svc.ExecuteApproval(ctx, adminA, r.ID)
				if err == nil {
					ok.Add(1)
					mu.Lock()
					psk = res.PSK
					mu.Unlock()
				} else if !errors.Is(err, keyport.ErrConflict) {
					t.Errorf("execute: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 1 || !bytes.Equal(psk, w.HandshakePSK(t, eid)) {
			t.Fatalf("%d executions succeeded; PSK %x", ok.Load(), psk)
		}
		if n := w.CountAudit(t, "module.psk-export"); n != 1 {
			t.Fatalf("%d PSK exports in the audit trail, want 1", n)
		}
		evs, _ := s.AuditEvents(ctx, 0, 1000)
		var seq []string
		for _, e := range evs {
			if e.Object == "approval:"+r.ID {
				seq = append(seq, e.Action+" by "+e.Actor)
			}
		}
		want := []string{"approval.request by admin:alice@issuer.test", "approval.approve by admin:bob@issuer.test",
			"approval.execute by admin:alice@issuer.test"}
		if len(seq) != len(want) {
			t.Fatalf("audit trail of the request: %v, want %v", seq, want)
		}
		for i := range want {
			if seq[i] != want[i] {
				t.Fatalf("audit trail of the request: %v, want %v", seq, want)
			}
		}
		if got, _ := w.Svc.GetApproval(ctx, adminB, r.ID); got.State != keyport.ApprovalExecuted || got.DoneAt == nil {
			t.Fatalf("after execution: %+v", got)
		}
	})
}

func TestThreeAdminPolicyCountsDistinctApproversEvenInParallel(t *testing.T) {
	ctx := context.Background()
	w := dualWorld(t, storetest.Open(t, storetest.SQLitePath(t)), 3)
	r, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionAdminToken, "ci-deploy", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, p := range []keyport.Principal{adminB, adminC, adminB, adminC} {
		wg.Go(func() { w.Svc.ApproveRequest(ctx, p, r.ID) })
	}
	wg.Wait()
	got, _ := w.Svc.GetApproval(ctx, adminA, r.ID)
	if got.State != keyport.ApprovalApproved || len(got.Approvers) != 2 || got.Approvers[0] == got.Approvers[1] {
		t.Fatalf("after B and C (twice each, in parallel): %+v", got)
	}
	res, err := w.Svc.ExecuteApproval(ctx, adminA, r.ID)
	if err != nil || res.Token == "" {
		t.Fatalf("execute: %+v, %v", res, err)
	}
	if p, err := w.Svc.Authenticate(ctx, res.Token); err != nil || !p.Admin {
		t.Fatalf("the token made under dual control: %+v, %v", p, err)
	}
}

func TestProviderApprovalRunsWhenTheSecondAdminApproves(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	prov, _, _ := w.Provider(t, "Bank", fixture.RSAKeys()[0])
	w.Svc.DualControl = keyport.DualControl{Admins: 2}
	if err := w.Svc.SetProviderStatus(ctx, adminA, prov.ProviderID, keyport.ProviderSuspended); err != nil {
		t.Fatalf("suspending needs no second admin: %v", err)
	}
	if err := w.Svc.SetProviderStatus(ctx, adminA, prov.ProviderID, keyport.ProviderApproved); !errors.Is(err, keyport.ErrApprovalRequired) {
		t.Fatalf("a direct un-suspension: %v, want ErrApprovalRequired", err)
	}
	r, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionProviderApprove, prov.ProviderID, nil, "contract renewed")
	if err != nil {
		t.Fatal(err)
	}
	if r, err = w.Svc.ApproveRequest(ctx, adminB, r.ID); err != nil || r.State != keyport.ApprovalExecuted {
		t.Fatalf("B approves: %+v, %v", r, err)
	}
	got, _ := w.Svc.Store.GetProvider(ctx, prov.ProviderID)
	if got.Status != keyport.ProviderApproved {
		t.Fatalf("provider status %s", got.Status)
	}
	// A provider added under dual control waits for its approval.
	added, token, err := w.Svc.AddProvider(ctx, adminA, "Other Bank", "ops@other.example", keyport.KindBank)
	if err != nil || added.Status != keyport.ProviderPending {
		t.Fatalf("added under dual control: %+v, %v", added, err)
	}
	if _, err := w.Svc.Authenticate(ctx, token); err == nil {
		t.Fatal("a pending provider's token works")
	}
}

func TestRequestsExpireAndBadRequestsAreRefused(t *testing.T) {
	ctx := context.Background()
	w := dualWorld(t, storetest.Open(t, storetest.SQLitePath(t)), 2)
	now := time.Now()
	w.Svc.Now = func() time.Time { return now }
	w.Svc.DualControl.TTL = time.Hour
	r, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionPSKExport, string(fixture.EID(t, 0)), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Hour)
	if _, err := w.Svc.ApproveRequest(ctx, adminB, r.ID); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("approving an expired request: %v, want ErrConflict", err)
	}
	if got, _ := w.Svc.GetApproval(ctx, adminA, r.ID); got.StateAt(now) != keyport.ApprovalExpired {
		t.Fatalf("state %s", got.StateAt(now))
	}
	for name, c := range map[string]struct {
		p      keyport.Principal
		action keyport.ApprovalAction
		target string
		params map[string]string
		want   error
	}{
		"provider":         {keyport.Principal{ProviderID: "prv_x"}, keyport.ActionPSKExport, string(fixture.EID(t, 0)), nil, keyport.ErrForbidden},
		"unknown action":   {adminA, "hsm.destroy", "x", nil, keyport.ErrInvalid},
		"unknown module":   {adminA, keyport.ActionPSKExport, string(fixture.EID(t, 77)), nil, keyport.ErrNotFound},
		"bad EID":          {adminA, keyport.ActionPSKExport, "1234", nil, keyport.ErrInvalid},
		"no manufacturer":  {adminA, keyport.ActionTransportExport, "b9", nil, keyport.ErrInvalid},
		"unknown provider": {adminA, keyport.ActionProviderApprove, "prv_nope", nil, keyport.ErrNotFound},
	} {
		if _, err := w.Svc.RequestApproval(ctx, c.p, c.action, c.target, c.params, ""); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	// Cancelled by its requester only.
	r2, _ := w.Svc.RequestApproval(ctx, adminA, keyport.ActionAdminToken, "t2", nil, "")
	if err := w.Svc.CancelApproval(ctx, adminB, r2.ID); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("another admin cancels: %v", err)
	}
	if err := w.Svc.CancelApproval(ctx, adminA, r2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.ApproveRequest(ctx, adminB, r2.ID); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("approving a cancelled request: %v", err)
	}
}

func TestWithDualControlOffOneAdminRequestsAndExecutes(t *testing.T) {
	ctx := context.Background()
	w := dualWorld(t, storetest.Open(t, storetest.SQLitePath(t)), 1)
	r, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionPSKExport, string(fixture.EID(t, 0)), nil, "")
	if err != nil || r.State != keyport.ApprovalApproved {
		t.Fatalf("request with dual control off: %+v, %v", r, err)
	}
	if res, err := w.Svc.ExecuteApproval(ctx, adminA, r.ID); err != nil || len(res.PSK) != 16 {
		t.Fatalf("execute: %+v, %v", res, err)
	}
}

// An admin's second token is still that admin: it cannot approve the
// request the first token made, and an ownerless token takes no part.
func TestAnAdminCannotApproveTheirOwnRequestWithAnotherOfTheirTokens(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	t1, _, err := w.Svc.CreateAdminToken(ctx, adminA, "laptop", 0)
	if err != nil {
		t.Fatal(err)
	}
	t2, _, err := w.Svc.CreateAdminToken(ctx, adminA, "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Svc.DualControl = keyport.DualControl{Admins: 2}
	p1, _ := w.Svc.Authenticate(ctx, t1)
	p2, _ := w.Svc.Authenticate(ctx, t2)
	r, err := w.Svc.RequestApproval(ctx, p1, keyport.ActionPSKExport, string(fixture.EID(t, 0)), nil, "")
	if err != nil || r.RequestedBy != adminA.Actor() {
		t.Fatalf("request by token: %+v, %v", r, err)
	}
	if _, err := w.Svc.ApproveRequest(ctx, p2, r.ID); !errors.Is(err, keyport.ErrOwnRequest) {
		t.Fatalf("A's second token approves A's request: %v, want ErrOwnRequest", err)
	}
	if _, err := w.Svc.ApproveRequest(ctx, adminA, r.ID); !errors.Is(err, keyport.ErrOwnRequest) {
		t.Fatalf("A's session approves A's token's request: %v, want ErrOwnRequest", err)
	}
	ownerless := keyport.Principal{Admin: true, Name: "old", Token: true}
	if _, err := w.Svc.ApproveRequest(ctx, ownerless, r.ID); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("an ownerless token approves: %v, want ErrForbidden", err)
	}
	if _, err := w.Svc.ApproveRequest(ctx, adminB, r.ID); err != nil {
		t.Fatal(err)
	}
	if res, err := w.Svc.ExecuteApproval(ctx, p2, r.ID); err != nil || len(res.PSK) != 16 {
		t.Fatalf("A executes with the other token: %+v, %v", res, err)
	}
}

// An admin who lost every passkey (and their TOTP) gets back in only when
// two other admins agree: the reset removes both second factors and ends the
// user's sessions; the password stays.
func TestASecondFactorResetNeedsTwoAdminsAndRemovesPasskeysAndTOTP(t *testing.T) {
	ctx := context.Background()
	w := accountWorld(t)
	u := verifiedUser(t, w, "lost@bank.example", "a passphrase of words")
	login, err := w.Svc.Login(ctx, "lost@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := w.HSM.Seal(ctx, []byte("12345678901234567890"))
	if err := w.Store.SetUserTOTP(ctx, u.ID, sealed, 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Store.CreatePasskey(ctx, &keyport.Passkey{ID: "pk_1", UserID: u.ID, Name: "phone", CredentialID: []byte{1, 2, 3},
		PublicKey: []byte{4, 5, 6}, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	w.Svc.DualControl = keyport.DualControl{Admins: 2}
	r, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionFactorReset, "lost@bank.example", nil, "lost phone")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.RequestApproval(ctx, adminA, keyport.ActionFactorReset, "nobody@bank.example", nil, ""); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("an unknown user: %v", err)
	}
	if keys, _ := w.Store.ListPasskeys(ctx, u.ID); len(keys) != 1 {
		t.Fatal("the request alone removed the passkey")
	}
	if r, err = w.Svc.ApproveRequest(ctx, adminB, r.ID); err != nil || r.State != keyport.ApprovalExecuted {
		t.Fatalf("B approves: %+v, %v", r, err)
	}
	if keys, _ := w.Store.ListPasskeys(ctx, u.ID); len(keys) != 0 {
		t.Fatalf("%d passkeys left", len(keys))
	}
	if got, _ := w.Store.GetUser(ctx, u.ID); got.TOTPSealed != nil {
		t.Fatal("TOTP left")
	}
	if _, err := w.Svc.ResolveSession(ctx, login.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("the user's session after the reset: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "lost@bank.example", "a passphrase of words", ""); err != nil {
		t.Fatalf("sign-in with the password after the reset: %v", err)
	}
	if n := w.CountAudit(t, "user.factor-reset"); n != 1 {
		t.Fatalf("%d factor resets audited", n)
	}
}
