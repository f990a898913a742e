package keyport_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// clock is a settable test clock for Service.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func lastAudit(t *testing.T, w *fixture.World) keyport.AuditEvent {
	t.Helper()
	evs, err := w.Store.RecentAudit(context.Background(), 1)
	if err != nil || len(evs) != 1 {
		t.Fatalf("recent audit: %v %v", evs, err)
	}
	return evs[0]
}

func TestAdminTokenExpiresAndRecordsItsLastUseAtMostOnceAMinute(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
	w.Svc.Now = clk.now
	alice := keyport.Principal{Admin: true, Operator: true, Name: "alice"}
	token, tok, err := w.Svc.CreateAdminToken(ctx, alice, "nightly", 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if ev := lastAudit(t, w); ev.Actor != "operator:alice" || ev.Action != "admin-token.create" || ev.Object != "token:"+tok.ID {
		t.Fatalf("audit: %+v", ev)
	}
	lastUsed := func() *time.Time {
		ts, err := w.Svc.ListAdminTokens(ctx, alice)
		if err != nil || len(ts) != 1 {
			t.Fatalf("list: %v %v", ts, err)
		}
		if ts[0].Owner != "operator:alice" || ts[0].Name != "nightly" || ts[0].ExpiresAt == nil ||
			!ts[0].ExpiresAt.Equal(ts[0].CreatedAt.Add(2*time.Hour)) {
			t.Fatalf("token row: %+v", ts[0])
		}
		return ts[0].LastUsedAt
	}
	if lastUsed() != nil {
		t.Fatal("an unused token has a last use")
	}
	start := clk.now()
	if p, err := w.Svc.Authenticate(ctx, token); err != nil || !p.Admin {
		t.Fatalf("fresh token: %+v %v", p, err)
	}
	if got := lastUsed(); got == nil || !got.Equal(start) {
		t.Fatalf("last use %v, want %v", got, start)
	}
	clk.add(30 * time.Second)
	if _, err := w.Svc.Authenticate(ctx, token); err != nil {
		t.Fatal(err)
	}
	if got := lastUsed(); !got.Equal(start) {
		t.Fatalf("last use rewritten within the minute: %v", got)
	}
	clk.add(31 * time.Second)
	if _, err := w.Svc.Authenticate(ctx, token); err != nil {
		t.Fatal(err)
	}
	if got := lastUsed(); !got.Equal(start.Add(61 * time.Second)) {
		t.Fatalf("last use after a minute: %v", got)
	}
	clk.t = start.Add(2 * time.Hour)
	if _, err := w.Svc.Authenticate(ctx, token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("expired token: %v, want ErrUnauthenticated", err)
	}
	if ts, _ := w.Svc.ListAdminTokens(ctx, alice); keyport.AdminTokenState(ts[0], clk.now()) != "expired" {
		t.Fatalf("state %q", keyport.AdminTokenState(ts[0], clk.now()))
	}
}

func TestAdminTokenDefaultsToNinetyDaysAndRefusesBadLifetimes(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	_, tok, err := w.Svc.CreateAdminToken(ctx, fixture.Admin, "ci", 0)
	if err != nil || tok.ExpiresAt == nil || tok.ExpiresAt.Sub(tok.CreatedAt) != keyport.DefaultAdminTokenTTL {
		t.Fatalf("default lifetime: %+v %v", tok, err)
	}
	for _, ttl := range []time.Duration{time.Second, keyport.MaxAdminTokenTTL + time.Hour, -time.Hour} {
		if _, _, err := w.Svc.CreateAdminToken(ctx, fixture.Admin, "ci", ttl); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("ttl %v: %v, want ErrInvalid", ttl, err)
		}
	}
	if _, _, err := w.Svc.CreateAdminToken(ctx, keyport.Principal{ProviderID: "prv_x"}, "ci", 0); !errors.Is(err, keyport.ErrForbidden) {
		t.Errorf("a provider made an admin token: %v", err)
	}
}

func TestRevokedAdminTokenIsRefusedAndAProvidersTokenCannotBeRevokedAsOne(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	token, tok, err := w.Svc.CreateAdminToken(ctx, fixture.Admin, "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	prov, provToken, _ := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	if err := w.Svc.RevokeAdminToken(ctx, fixture.Admin, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.Authenticate(ctx, token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("revoked admin token: %v", err)
	}
	pts, err := w.Svc.ListAPITokens(ctx, prov)
	if err != nil || len(pts) != 1 {
		t.Fatal(pts, err)
	}
	if err := w.Svc.RevokeAdminToken(ctx, fixture.Admin, pts[0].ID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("revoking a provider's token as an admin token: %v", err)
	}
	if _, err := w.Svc.Authenticate(ctx, provToken); err != nil {
		t.Fatalf("the provider's token stopped working: %v", err)
	}
	ts, _ := w.Svc.ListAdminTokens(ctx, fixture.Admin)
	if len(ts) != 1 || ts[0].ID != tok.ID {
		t.Fatalf("admin token list holds %+v", ts)
	}
}

func TestDisabledAdminCannotSignInLosesSessionsAndTokensUntilEnabled(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	pw, err := w.Svc.AddAdminUser(ctx, fixture.Admin, "root@issuer.example")
	if err != nil {
		t.Fatal(err)
	}
	if ev := lastAudit(t, w); ev.Actor != fixture.Admin.Actor() || ev.Action != "admin-user.add" {
		t.Fatalf("audit: %+v", ev)
	}
	res, err := w.Svc.Login(ctx, "root@issuer.example", pw, "")
	if err != nil {
		t.Fatal(err)
	}
	const own = "root's own password"
	su, err := w.Svc.ResolveSession(ctx, res.Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.ChangePassword(ctx, su.User.ID, res.Token, keyport.Reauth{Password: pw}, own); err != nil {
		t.Fatal(err)
	}
	if su, err = w.Svc.ResolveSession(ctx, res.Token); err != nil {
		t.Fatal(err)
	}
	token, _, err := w.Svc.CreateAdminToken(ctx, su.Principal, "mine", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.SetAdminUserDisabled(ctx, su.Principal, "root@issuer.example", true); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("an admin disabled themselves: %v", err)
	}
	bob := keyport.Principal{Admin: true, Operator: true, Name: "bob"}
	if _, err := w.Svc.SetAdminUserDisabled(ctx, bob, "Root@Issuer.example", true); err != nil {
		t.Fatal(err)
	}
	if ev := lastAudit(t, w); ev.Actor != "operator:bob" || ev.Action != "admin-user.disable" || ev.Object != "user:"+su.User.ID {
		t.Fatalf("audit: %+v", ev)
	}
	if _, err := w.Svc.ResolveSession(ctx, res.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("session of a disabled admin: %v", err)
	}
	if _, err := w.Svc.Authenticate(ctx, token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("token of a disabled admin: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "root@issuer.example", own, ""); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("sign-in of a disabled admin: %v", err)
	}
	if _, err := w.Svc.SetAdminUserDisabled(ctx, bob, "nobody@issuer.example", true); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("unknown admin: %v", err)
	}
	if _, err := w.Svc.SetAdminUserDisabled(ctx, bob, "root@issuer.example", false); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.Authenticate(ctx, token); err != nil {
		t.Fatalf("token after enabling: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "root@issuer.example", own, ""); err != nil {
		t.Fatalf("sign-in after enabling: %v", err)
	}
}

func TestAPasswordChangeNeedsTheCurrentPasswordAndEndsPendingResetLinks(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	u := verifiedUser(t, w, "a@bank.example", "a passphrase of words")
	if err := w.Svc.RequestPasswordReset(ctx, "a@bank.example", "https://portal.example"); err != nil {
		t.Fatal(err)
	}
	reset := mailedToken(t, w, "a@bank.example")
	if err := w.Svc.ChangePassword(ctx, u.ID, "", keyport.Reauth{Password: "not the password"}, "a new passphrase here"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("wrong current password: %v", err)
	}
	if err := w.Svc.ChangePassword(ctx, u.ID, "", keyport.Reauth{Password: "a passphrase of words"}, "short"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("a too short new password: %v", err)
	}
	if got, _ := w.Store.GetUser(ctx, u.ID); got.FailedLogins != 1 {
		t.Fatalf("%d attempts counted, want 1 (the wrong password only)", got.FailedLogins)
	}
	// Two sessions, say the user's and a thief's who knew the old password:
	// the change made in the first ends the second.
	mine, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := w.Svc.Login(ctx, "a@bank.example", "a passphrase of words", "")
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.ChangePassword(ctx, u.ID, mine.Token, keyport.Reauth{Password: "a passphrase of words"}, "a new passphrase here"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.ResolveSession(ctx, mine.Token); err != nil {
		t.Fatalf("the session the change was made in: %v", err)
	}
	if _, err := w.Svc.ResolveSession(ctx, theirs.Token); !errors.Is(err, keyport.ErrUnauthenticated) {
		t.Fatalf("another session after the change: %v, want ErrUnauthenticated", err)
	}
	if ev := lastAudit(t, w); ev.Action != "user.password-change" || ev.Object != "user:"+u.ID {
		t.Fatalf("audit: %+v", ev)
	}
	if err := w.Svc.ResetPassword(ctx, reset, "an attacker's passphrase"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("a reset link from before the change still works: %v", err)
	}
	if _, err := w.Svc.Login(ctx, "a@bank.example", "a new passphrase here", ""); err != nil {
		t.Fatalf("sign-in with the new password: %v", err)
	}
}

// TestAGivenPasswordOpensASessionThatActsAsNoOneUntilChanged: the session
// of an admin who has not chosen their own password carries no principal,
// so no use case takes it for an admin's; the change keeps the session and
// gives it the admin's principal.
func TestAGivenPasswordOpensASessionThatActsAsNoOneUntilChanged(t *testing.T) {
	w := accountWorld(t)
	ctx := context.Background()
	given, err := w.Svc.AddAdminUser(ctx, fixture.Admin, "fresh@issuer.example")
	if err != nil {
		t.Fatal(err)
	}
	res, err := w.Svc.Login(ctx, "fresh@issuer.example", given, "")
	if err != nil {
		t.Fatal(err)
	}
	su, err := w.Svc.ResolveSession(ctx, res.Token)
	if err != nil || !su.MustChangePassword || su.Principal.Admin || su.Principal.UserID != "" {
		t.Fatalf("session before the change: %+v, %v", su, err)
	}
	if _, _, err := w.Svc.CreateAdminToken(ctx, su.Principal, "early", 0); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("admin token from a session without a principal: %v", err)
	}
	if err := w.Svc.ChangePassword(ctx, su.User.ID, res.Token, keyport.Reauth{Password: given}, given); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("the given password kept: %v", err)
	}
	if err := w.Svc.ChangePassword(ctx, su.User.ID, res.Token, keyport.Reauth{Password: given}, "fresh's own password"); err != nil {
		t.Fatal(err)
	}
	su, err = w.Svc.ResolveSession(ctx, res.Token)
	if err != nil || su.MustChangePassword || !su.Principal.Admin || su.Principal.UserID != su.User.ID {
		t.Fatalf("session after the change: %+v, %v", su, err)
	}
	if u, err := w.Store.GetUserByEmail(ctx, "fresh@issuer.example"); err != nil || u.PasswordChangeRequired {
		t.Fatalf("stored user after the change: %+v, %v", u, err)
	}
}

// A token made with a token stands for the first one's owner, whatever the
// tokens are called: for dual control and when that owner is disabled. A
// token's audit actor is its ID, never its name, so a token named after
// another admin neither approves for them nor acts in their name.
func TestATokenMadeWithATokenStandsForItsOwnerWhateverItIsCalled(t *testing.T) {
	ctx := context.Background()
	w := accountWorld(t)
	w.Svc.DualControl = keyport.DualControl{Admins: 2}
	fixture.AdminUser(ctx, t, w.Svc, "alice@issuer.test")
	u, err := w.Store.GetUserByEmail(ctx, "alice@issuer.test")
	if err != nil {
		t.Fatal(err)
	}
	alice := keyport.Principal{Admin: true, Name: u.Email, UserID: u.ID}
	bob := keyport.Principal{Admin: true, Name: "bob@issuer.test"}
	// made runs an admin-token request of by, approved by Bob.
	made := func(by keyport.Principal, name string) (string, keyport.Principal) {
		t.Helper()
		r, err := w.Svc.RequestApproval(ctx, by, keyport.ActionAdminToken, name, nil, "ci")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Svc.ApproveRequest(ctx, bob, r.ID); err != nil {
			t.Fatal(err)
		}
		res, err := w.Svc.ExecuteApproval(ctx, by, r.ID)
		if err != nil {
			t.Fatal(err)
		}
		p, err := w.Svc.Authenticate(ctx, res.Token)
		if err != nil {
			t.Fatal(err)
		}
		return res.Token, p
	}
	tok1, p1 := made(alice, "bob@issuer.test")
	tok2, p2 := made(p1, "ci-2")
	for i, p := range []keyport.Principal{p1, p2} {
		if p.Identity() != alice.Actor() || p.OwnerUserID != u.ID {
			t.Errorf("token %d stands for %q (user %q), want %q (%s)", i+1, p.Identity(), p.OwnerUserID, alice.Actor(), u.ID)
		}
		if p.Actor() != "admin-token:"+p.TokenID || p.TokenID == "" {
			t.Errorf("token %d acts as %q", i+1, p.Actor())
		}
	}
	evs, err := w.Store.RecentAudit(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	created := 0
	for _, ev := range evs {
		if ev.Action == "admin-token.create" {
			created++
			if ev.Actor != p1.Actor() {
				t.Errorf("the second token's creation is recorded as by %q, want %q", ev.Actor, p1.Actor())
			}
		}
	}
	if created != 1 {
		t.Errorf("recent events %+v: want one admin-token.create", evs)
	}
	// Alice's own request is not approved by either of her tokens.
	r, err := w.Svc.RequestApproval(ctx, alice, keyport.ActionPSKExport, string(fixture.EID(t, 0)), nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range []keyport.Principal{p1, p2} {
		if _, err := w.Svc.ApproveRequest(ctx, p, r.ID); !errors.Is(err, keyport.ErrForbidden) && !errors.Is(err, keyport.ErrConflict) {
			t.Errorf("token %d approved its owner's own request: %v", i+1, err)
		}
	}
	// Both end with their owner.
	if _, err := w.Svc.SetAdminUserDisabled(ctx, bob, "alice@issuer.test", true); err != nil {
		t.Fatal(err)
	}
	for i, tok := range []string{tok1, tok2} {
		if _, err := w.Svc.Authenticate(ctx, tok); !errors.Is(err, keyport.ErrUnauthenticated) {
			t.Errorf("token %d of a disabled admin: %v", i+1, err)
		}
	}
}

// A token without an owner (made before tokens had one) stands for nobody
// and makes no tokens.
func TestAnOwnerlessTokenMakesNoTokens(t *testing.T) {
	w := accountWorld(t)
	old := keyport.Principal{Admin: true, Name: "old", Token: true, TokenID: "tok_old"}
	if _, _, err := w.Svc.CreateAdminToken(context.Background(), old, "more", 0); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("an ownerless token made a token: %v", err)
	}
}
