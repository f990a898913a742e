package web_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/chromedp/cdproto/network"
	cdpwebauthn "github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// Passkeys in Chromium with the DevTools virtual authenticator (CTAP2,
// internal transport, resident keys, user verification): a real
// authenticator answering the portal's own navigator.credentials calls.

// addAuthenticator gives the tab a virtual platform authenticator.
func addAuthenticator(t *testing.T, tab context.Context) cdpwebauthn.AuthenticatorID {
	t.Helper()
	return addAuthenticatorWith(t, tab, false)
}

// addAuthenticatorWith can add one that takes credentials copied from
// another (AddCredential sends the CMTG fields, which it must support).
func addAuthenticatorWith(t *testing.T, tab context.Context, cmtg bool) cdpwebauthn.AuthenticatorID {
	t.Helper()
	if _, err := chromedp.Call(tab, cdpwebauthn.Enable, cdpwebauthn.EnableParams{}); err != nil {
		t.Fatalf("WebAuthn.enable: %v", err)
	}
	res, err := chromedp.Call(tab, cdpwebauthn.AddVirtualAuthenticator, cdpwebauthn.AddVirtualAuthenticatorParams{
		Options: &cdpwebauthn.VirtualAuthenticatorOptions{Protocol: cdpwebauthn.AuthenticatorProtocolCtap2,
			Ctap2version: cdpwebauthn.Ctap2versionCtap21, Transport: cdpwebauthn.AuthenticatorTransportInternal,
			HasResidentKey: true, HasUserVerification: true, IsUserVerified: true, AutomaticPresenceSimulation: true, HasCmtgKey: cmtg}})
	if err != nil {
		t.Fatalf("WebAuthn.addVirtualAuthenticator: %v", err)
	}
	return res.AuthenticatorID
}

// enrolPasskey adds a passkey named name on the signed-in user's security
// page, through the page's own form and script; adding one takes the
// current password (pw).
func enrolPasskey(t *testing.T, tab context.Context, base, path, pw, name string) {
	t.Helper()
	do(t, tab, chromedp.Navigate(base+path), chromedp.SendKeys(chromedp.ID("passkey-current_password"), pw))
	clickAndLoad(t, tab, "#passkey-add")
	do(t, tab, chromedp.SendKeys(chromedp.ID("passkey-name"), name))
	clickAndLoad(t, tab, "#passkey-create")
	if got := text(t, tab, "#passkeys"); !strings.Contains(got, name) {
		t.Fatalf("after enrolling, the passkeys listed are %q; page: %q", got, bodyText(t, tab))
	}
}

func signOut(t *testing.T, tab context.Context) {
	t.Helper()
	clickAndLoad(t, tab, "header .who button")
	if got := bodyText(t, tab); !strings.Contains(got, "You are signed out") {
		t.Fatalf("after signing out: %q", got)
	}
}

// consoleClosed checks that the tab's browser has no admin session.
func consoleClosed(t *testing.T, tab context.Context, base string) {
	t.Helper()
	do(t, tab, chromedp.Navigate(base+"/admin"))
	if loc := location(t, tab); !strings.Contains(loc, "/login?next=") {
		t.Fatalf("the console is open at %s: %q", loc, bodyText(t, tab))
	}
}

// passwordStep signs in with the password and expects the passkey step.
func passwordStep(t *testing.T, tab context.Context, base, email, password string) {
	t.Helper()
	login(t, tab, base, email, password)
	if got := bodyText(t, tab); !strings.Contains(got, "Confirm with your passkey") {
		t.Fatalf("after the password: %q", got)
	}
}

func auditActions(t *testing.T, p *portal) []keyport.AuditEvent {
	t.Helper()
	evs, err := p.w.Store.RecentAudit(context.Background(), 200)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func hasAudit(evs []keyport.AuditEvent, action, object, detailPart string) bool {
	return slices.ContainsFunc(evs, func(e keyport.AuditEvent) bool {
		return e.Action == action && e.Object == object && strings.Contains(e.Detail, detailPart)
	})
}

func TestBrowserAdminEnrolsAPasskeyAndTheConsoleThenOpensOnlyWithIt(t *testing.T) {
	newTab := browser(t)
	p := startPortalAt(t, 1, 1, true)
	shot := newShots(t)
	ctx := context.Background()
	admin := newTab()
	auth := addAuthenticator(t, admin)
	u, err := p.w.Store.GetUserByEmail(ctx, p.adminEmail)
	if err != nil {
		t.Fatal(err)
	}

	// Without a passkey, the password opens the console; the admin enrols one.
	login(t, admin, p.base, p.adminEmail, p.adminPW)
	if !strings.HasSuffix(location(t, admin), "/admin") {
		t.Fatalf("admin landed on %s", location(t, admin))
	}
	enrolPasskey(t, admin, p.base, "/admin/security", p.adminPW, "virtual key")
	shot.take(admin, "admin-security-passkey")
	keys, err := p.w.Store.ListPasskeys(ctx, u.ID)
	if err != nil || len(keys) != 1 {
		t.Fatalf("stored passkeys %+v %v", keys, err)
	}
	if k := keys[0]; k.Name != "virtual key" || len(k.CredentialID) == 0 || len(k.PublicKey) == 0 || len(k.AAGUID) != 16 ||
		!slices.Contains(k.Transports, "internal") {
		t.Fatalf("stored passkey %+v", k)
	}
	creds, err := chromedp.Call(admin, cdpwebauthn.GetCredentials, cdpwebauthn.GetCredentialsParams{AuthenticatorID: auth})
	if err != nil || len(creds.Credentials) != 1 || string(creds.Credentials[0].CredentialID) != string(keys[0].CredentialID) ||
		creds.Credentials[0].RpID != "localhost" || string(creds.Credentials[0].UserHandle) != u.ID {
		t.Fatalf("the authenticator holds %+v (%v), the store %x", creds, err, keys[0].CredentialID)
	}

	// Signed out, the password alone no longer opens the console ...
	signOut(t, admin)
	passwordStep(t, admin, p.base, p.adminEmail, p.adminPW)
	shot.take(admin, "passkey-step")
	consoleClosed(t, admin, p.base)

	// ... the password and the passkey do.
	passwordStep(t, admin, p.base, p.adminEmail, p.adminPW)
	clickAndLoad(t, admin, "#passkey-signin")
	if loc := location(t, admin); !strings.HasSuffix(loc, "/admin") {
		t.Fatalf("after the passkey the admin is at %s: %q", loc, bodyText(t, admin))
	}
	shot.take(admin, "console-after-passkey")
	keys, _ = p.w.Store.ListPasskeys(ctx, u.ID)
	if keys[0].LastUsedAt == nil {
		t.Fatalf("the passkey's use is not recorded: %+v", keys[0])
	}
	evs := auditActions(t, p)
	if !hasAudit(evs, "user.passkey-add", "user:"+u.ID, `"name":"virtual key"`) ||
		!hasAudit(evs, "user.login", "user:"+u.ID, `"passkey":"`+keys[0].ID+`"`) {
		t.Fatalf("audit trail lacks the enrolment or the passkey sign-in: %+v", evs[:min(len(evs), 6)])
	}

	// Another browser, with the password but without the authenticator:
	// the console stays closed after the password step.
	other := newTab()
	passwordStep(t, other, p.base, p.adminEmail, p.adminPW)
	consoleClosed(t, other, p.base)

	// Removing the passkey (signed in, with the current password: a wrong
	// one keeps it) lets the password alone in again; a new passkey closes
	// the console again.
	do(t, admin, chromedp.Navigate(p.base+"/admin/security"))
	clickAndLoad(t, admin, `button[data-remove-passkey="virtual key"]`)
	do(t, admin, chromedp.SendKeys(chromedp.ID("current_password"), "not the password"))
	clickAndLoad(t, admin, "#passkey-remove")
	if got := text(t, admin, "#current_password-error"); !strings.Contains(got, "current password is wrong") {
		t.Fatalf("removing with a wrong password: %q", bodyText(t, admin))
	}
	if keys, _ := p.w.Store.ListPasskeys(ctx, u.ID); len(keys) != 1 {
		t.Fatalf("a wrong password removed the passkey: %+v", keys)
	}
	do(t, admin, chromedp.SendKeys(chromedp.ID("current_password"), p.adminPW))
	clickAndLoad(t, admin, "#passkey-remove")
	if got := bodyText(t, admin); !strings.Contains(got, "Passkey removed") {
		t.Fatalf("after removing: %q", got)
	}
	if keys, _ := p.w.Store.ListPasskeys(ctx, u.ID); len(keys) != 0 {
		t.Fatalf("passkeys after removal: %+v", keys)
	}
	if !hasAudit(auditActions(t, p), "user.passkey-remove", "user:"+u.ID, `"name":"virtual key"`) {
		t.Fatal("the removal is not audited")
	}
	signOut(t, admin)
	login(t, admin, p.base, p.adminEmail, p.adminPW)
	if !strings.HasSuffix(location(t, admin), "/admin") {
		t.Fatalf("without passkeys the password leads to %s", location(t, admin))
	}
	enrolPasskey(t, admin, p.base, "/admin/security", p.adminPW, "second key")

	// The same browser once the authenticator is gone: the console stays
	// closed after the password step.
	signOut(t, admin)
	if _, err := chromedp.Call(admin, cdpwebauthn.RemoveVirtualAuthenticator,
		cdpwebauthn.RemoveVirtualAuthenticatorParams{AuthenticatorID: auth}); err != nil {
		t.Fatal(err)
	}
	passwordStep(t, admin, p.base, p.adminEmail, p.adminPW)
	consoleClosed(t, admin, p.base)
}

// formPost sends a form to the portal as a browser without a session would,
// with its own CSRF token and the given cookies; it does not follow
// redirects.
func formPost(t *testing.T, base, path string, cookies map[string]string, form url.Values) (*http.Response, string) {
	t.Helper()
	csrf := strings.Repeat("c", 43)
	form.Set("csrf", csrf)
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "kp_csrf", Value: csrf})
	for k, v := range cookies {
		req.AddCookie(&http.Cookie{Name: k, Value: v})
	}
	cl := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// captureAssertion makes the page keep the credential its script submits
// (sessionStorage survives the navigation) and returns the ceremony cookie.
func captureAssertion(t *testing.T, tab context.Context) string {
	t.Helper()
	if _, err := chromedp.Run(tab, chromedp.Evaluate[bool](`(() => {
		const submit = HTMLFormElement.prototype.submit;
		HTMLFormElement.prototype.submit = function () {
			if (this.elements.credential) sessionStorage.setItem("kp-test-credential", this.elements.credential.value);
			submit.call(this);
		};
		return true;
	})()`)); err != nil {
		t.Fatal(err)
	}
	cks, err := chromedp.Call(tab, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cks.Cookies {
		if c.Name == "kp_passkey" {
			return c.Value
		}
	}
	t.Fatal("no passkey ceremony cookie after the password step")
	return ""
}

func TestBrowserPasskeyAssertionOfAnotherUserACopiedAuthenticatorAndAReplayAreRefused(t *testing.T) {
	newTab := browser(t)
	p := startPortalAt(t, 1, 1, true)
	ctx := context.Background()
	pw2 := fixture.AdminUser(ctx, t, p.w.Svc, "second@issuer.example")
	first, _ := p.w.Store.GetUserByEmail(ctx, p.adminEmail)
	second, _ := p.w.Store.GetUserByEmail(ctx, "second@issuer.example")

	// Both admins enrol a passkey on one authenticator.
	tab := newTab()
	auth := addAuthenticator(t, tab)
	for _, a := range []struct{ email, pw string }{{p.adminEmail, p.adminPW}, {"second@issuer.example", pw2}} {
		login(t, tab, p.base, a.email, a.pw)
		enrolPasskey(t, tab, p.base, "/admin/security", a.pw, "key of "+a.email)
		signOut(t, tab)
	}
	secondKeys, err := p.w.Store.ListPasskeys(ctx, second.ID)
	if err != nil || len(secondKeys) != 1 {
		t.Fatalf("second admin's passkeys %+v %v", secondKeys, err)
	}

	// The first admin's challenge answered by the second admin's credential
	// (the page asks the authenticator for it instead): refused.
	passwordStep(t, tab, p.base, p.adminEmail, p.adminPW)
	otherID := base64.RawURLEncoding.EncodeToString(secondKeys[0].CredentialID)
	if _, err := chromedp.Run(tab, chromedp.Evaluate[bool](`(() => {
		const f = document.getElementById("passkey-form");
		const o = JSON.parse(f.getAttribute("data-passkey-get"));
		o.publicKey.allowCredentials = [{type: "public-key", id: "`+otherID+`"}];
		f.setAttribute("data-passkey-get", JSON.stringify(o));
		return true;
	})()`)); err != nil {
		t.Fatal(err)
	}
	clickAndLoad(t, tab, "#passkey-signin")
	if got := bodyText(t, tab); !strings.Contains(got, "The passkey did not confirm the sign-in") {
		t.Fatalf("another user's assertion: %q at %s", got, location(t, tab))
	}
	consoleClosed(t, tab, p.base)
	if evs := auditActions(t, p); !hasAudit(evs, "user.login-failed", "user:"+first.ID, "passkey assertion refused") {
		t.Fatalf("the refused assertion is not audited: %+v", evs[:min(len(evs), 4)])
	}

	// A real sign-in, whose assertion and ceremony the test keeps.
	passwordStep(t, tab, p.base, p.adminEmail, p.adminPW)
	ceremony := captureAssertion(t, tab)
	clickAndLoad(t, tab, "#passkey-signin")
	if loc := location(t, tab); !strings.HasSuffix(loc, "/admin") {
		t.Fatalf("passkey sign-in ended at %s: %q", loc, bodyText(t, tab))
	}
	assertion, err := chromedp.Run(tab, chromedp.Evaluate[string](`sessionStorage.getItem("kp-test-credential") || ""`))
	if err != nil || !strings.Contains(assertion, "authenticatorData") {
		t.Fatalf("captured assertion %q %v", assertion, err)
	}

	// Replayed with its own ceremony: the challenge was used.
	resp, body := formPost(t, p.base, "/login/passkey", map[string]string{"kp_passkey": ceremony}, url.Values{"credential": {assertion}})
	if resp.StatusCode != http.StatusUnauthorized || sessionSet(resp) || !strings.Contains(body, "did not confirm the sign-in") {
		t.Fatalf("replay with the used ceremony: %d, session cookie %v", resp.StatusCode, sessionSet(resp))
	}
	// Replayed against a fresh challenge of the same account: refused.
	signOut(t, tab)
	passwordStep(t, tab, p.base, p.adminEmail, p.adminPW)
	fresh := captureAssertion(t, tab)
	resp, _ = formPost(t, p.base, "/login/passkey", map[string]string{"kp_passkey": fresh}, url.Values{"credential": {assertion}})
	if resp.StatusCode != http.StatusUnauthorized || sessionSet(resp) {
		t.Fatalf("replay against a fresh challenge: %d, session cookie %v", resp.StatusCode, sessionSet(resp))
	}
	evs := auditActions(t, p)
	if !hasAudit(evs, "user.login-failed", "passkey", "unknown, used or expired") ||
		!hasAudit(evs, "user.login-failed", "user:"+first.ID, "Error validating challenge") {
		t.Fatalf("the replays are not audited: %+v", evs[:min(len(evs), 4)])
	}

	// A copy of the first admin's credential in another authenticator,
	// with its counter set back: the regression is refused and audited.
	firstKeys, _ := p.w.Store.ListPasskeys(ctx, first.ID)
	if firstKeys[0].SignCount == 0 {
		t.Fatalf("the virtual authenticator reports no signature counter: %+v", firstKeys[0])
	}
	cred, err := chromedp.Call(tab, cdpwebauthn.GetCredential, cdpwebauthn.GetCredentialParams{AuthenticatorID: auth,
		CredentialID: firstKeys[0].CredentialID})
	if err != nil {
		t.Fatal(err)
	}
	clone := newTab()
	cloneAuth := addAuthenticatorWith(t, clone, true)
	c := *cred.Credential
	c.SignCount = 0
	if _, err := chromedp.Call(clone, cdpwebauthn.AddCredential, cdpwebauthn.AddCredentialParams{AuthenticatorID: cloneAuth, Credential: &c}); err != nil {
		t.Fatal(err)
	}
	passwordStep(t, clone, p.base, p.adminEmail, p.adminPW)
	clickAndLoad(t, clone, "#passkey-signin")
	if got := bodyText(t, clone); !strings.Contains(got, "The passkey did not confirm the sign-in") {
		t.Fatalf("the cloned authenticator: %q at %s", got, location(t, clone))
	}
	consoleClosed(t, clone, p.base)
	evs = auditActions(t, p)
	if !hasAudit(evs, "user.passkey-clone", "user:"+first.ID, `"passkey":"`+firstKeys[0].ID+`"`) {
		t.Fatalf("the counter regression is not audited: %+v", evs[:min(len(evs), 4)])
	}
	after, _ := p.w.Store.ListPasskeys(ctx, first.ID)
	if after[0].SignCount != firstKeys[0].SignCount {
		t.Fatalf("the refused assertion moved the counter from %d to %d", firstKeys[0].SignCount, after[0].SignCount)
	}
	var d map[string]any
	for _, e := range evs {
		if e.Action == "user.passkey-clone" {
			_ = json.Unmarshal([]byte(e.Detail), &d)
			break
		}
	}
	if d["stored_count"] == nil || d["presented_count"] == nil {
		t.Fatalf("clone audit detail %v", d)
	}
}

func sessionSet(resp *http.Response) bool {
	for _, c := range resp.Cookies() {
		if c.Name == "kp_session" && c.Value != "" {
			return true
		}
	}
	return false
}

// For a provider's user a passkey is optional; once added, it is the second
// step as for an admin.
func TestBrowserProviderUserAddsAPasskeyAndThenSignsInWithIt(t *testing.T) {
	newTab := browser(t)
	p := startPortalAt(t, 1, 1, true)
	const email, pw = "ops@shop.example", "shop password 1234"
	p.approvedProvider(t, "Shop", email, pw)
	tab := newTab()
	addAuthenticator(t, tab)
	login(t, tab, p.base, email, pw)
	if !strings.HasSuffix(location(t, tab), "/portal") {
		t.Fatalf("without a passkey the provider lands on %s", location(t, tab))
	}
	enrolPasskey(t, tab, p.base, "/portal/security", pw, "shop phone")
	signOut(t, tab)
	passwordStep(t, tab, p.base, email, pw)
	do(t, tab, chromedp.Navigate(p.base+"/portal"))
	if loc := location(t, tab); !strings.Contains(loc, "/login?next=") {
		t.Fatalf("the portal is open after the password alone: %s", loc)
	}
	passwordStep(t, tab, p.base, email, pw)
	clickAndLoad(t, tab, "#passkey-signin")
	if loc := location(t, tab); !strings.HasSuffix(loc, "/portal") || !strings.Contains(bodyText(t, tab), "Shop: your domains") {
		t.Fatalf("after the passkey the provider is at %s: %q", loc, bodyText(t, tab))
	}
}
