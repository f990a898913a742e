package web_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/keyport/keyport/internal/fixture"
)

func postForm(t *testing.T, cl *http.Client, target string, form url.Values) (int, string, string) {
	t.Helper()
	resp, err := cl.PostForm(target, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

func getPage(t *testing.T, cl *http.Client, target string) (int, string, string) {
	t.Helper()
	resp, err := cl.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

// apiStatus calls an admin API route with the bearer token.
func apiStatus(t *testing.T, base, token string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/admin/audit", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

var newTokenRE = regexp.MustCompile(`id="new-token">(kp_[A-Za-z0-9_-]+)<`)

func TestAdminConsoleListsTokensWithOwnerAndRevokesThemOnlyWithTheCSRFToken(t *testing.T) {
	p := startPortal(t, 1, 1)
	base := p.srv.URL
	cl, csrf := signedIn(t, base, p.adminEmail, p.adminPW)
	status, _, body := postForm(t, cl, base+"/admin/tokens", url.Values{"csrf": {csrf}, "name": {"nightly-import"}, "ttl_days": {"30"}})
	m := newTokenRE.FindStringSubmatch(body)
	if status != http.StatusCreated || m == nil {
		t.Fatalf("create: %d %s", status, body)
	}
	token := m[1]
	if apiStatus(t, base, token) != http.StatusOK {
		t.Fatal("the new admin token does not work")
	}
	if status, _, body = postForm(t, cl, base+"/admin/tokens", url.Values{"csrf": {csrf}, "name": {"x"}, "ttl_days": {"0"}}); status != http.StatusUnprocessableEntity {
		t.Fatalf("ttl 0: %d", status)
	}
	ts, err := p.w.Svc.ListAdminTokens(context.Background(), fixture.Admin)
	if err != nil || len(ts) != 1 || ts[0].Owner != "admin:"+p.adminEmail || ts[0].LastUsedAt == nil ||
		ts[0].ExpiresAt.Sub(ts[0].CreatedAt).Hours() != 30*24 {
		t.Fatalf("tokens: %+v %v", ts, err)
	}
	_, _, page := getPage(t, cl, base+"/admin/tokens")
	if !strings.Contains(page, "nightly-import") || !strings.Contains(page, "admin:"+p.adminEmail) || strings.Contains(page, token) {
		t.Fatalf("token page: %s", page)
	}
	revoke := base + "/admin/tokens/" + ts[0].ID + "/revoke"
	if status, _, _ := postForm(t, cl, revoke, url.Values{}); status != http.StatusForbidden {
		t.Fatalf("revoke without CSRF: %d, want 403", status)
	}
	if apiStatus(t, base, token) != http.StatusOK {
		t.Fatal("a revoke without CSRF token took effect")
	}
	if status, loc, _ := postForm(t, cl, revoke, url.Values{"csrf": {csrf}}); status != http.StatusSeeOther || loc != "/admin/tokens" {
		t.Fatalf("revoke: %d %s", status, loc)
	}
	if apiStatus(t, base, token) != http.StatusUnauthorized {
		t.Fatal("the revoked token still works")
	}
	if _, _, page = getPage(t, cl, base+"/admin/tokens"); !strings.Contains(page, `<td class="token-state">revoked</td>`) {
		t.Fatalf("token page after revoking: %s", page)
	}
	evs, _ := p.w.Store.RecentAudit(context.Background(), 1)
	if evs[0].Action != "admin-token.revoke" || evs[0].Actor != "admin:"+p.adminEmail {
		t.Fatalf("audit: %+v", evs[0])
	}
}

func TestAdminDisabledInTheConsoleIsSignedOutAndTheirTokensAreRefused(t *testing.T) {
	p := startPortal(t, 1, 1)
	base := p.srv.URL
	ctx := context.Background()
	pw2 := fixture.AdminUser(ctx, t, p.w.Svc, "second@issuer.example")
	second, csrf2 := signedIn(t, base, "second@issuer.example", pw2)
	_, _, body := postForm(t, second, base+"/admin/tokens", url.Values{"csrf": {csrf2}, "name": {"seconds"}, "ttl_days": {"90"}})
	m := newTokenRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("create: %s", body)
	}
	first, csrf := signedIn(t, base, p.adminEmail, p.adminPW)
	if _, _, page := getPage(t, first, base+"/admin/users"); !strings.Contains(page, "second@issuer.example") ||
		strings.Contains(page, `aria-label="Disable `+p.adminEmail+`"`) {
		t.Fatalf("users page: %s", page)
	}
	if status, _, _ := postForm(t, first, base+"/admin/users/disable", url.Values{"email": {"second@issuer.example"}}); status != http.StatusForbidden {
		t.Fatalf("disable without CSRF: %d", status)
	}
	if status, _, _ := getPage(t, second, base+"/admin"); status != http.StatusOK {
		t.Fatal("a disable without CSRF took effect")
	}
	if status, loc, _ := postForm(t, first, base+"/admin/users/disable", url.Values{"csrf": {csrf}, "email": {"second@issuer.example"}}); status != http.StatusSeeOther || loc != "/admin/users" {
		t.Fatalf("disable: %d %s", status, loc)
	}
	if status, loc, _ := getPage(t, second, base+"/admin"); status != http.StatusSeeOther || !strings.HasPrefix(loc, "/login") {
		t.Fatalf("disabled admin's session: %d %s", status, loc)
	}
	if apiStatus(t, base, m[1]) != http.StatusUnauthorized {
		t.Fatal("the disabled admin's token still works")
	}
	cl, c := client(t, base)
	if status, _, page := postForm(t, cl, base+"/login", url.Values{"csrf": {c}, "email": {"second@issuer.example"}, "password": {pw2}}); status == http.StatusSeeOther || !strings.Contains(page, "disabled") {
		t.Fatalf("disabled admin signs in: %d", status)
	}
	if status, _, _ := postForm(t, first, base+"/admin/users/enable", url.Values{"csrf": {csrf}, "email": {"second@issuer.example"}}); status != http.StatusSeeOther {
		t.Fatalf("enable: %d", status)
	}
	if apiStatus(t, base, m[1]) != http.StatusOK {
		t.Fatal("the enabled admin's token is refused")
	}
}

func TestAnAnonymousPostWithTheCSRFTokenGets401AndABrowserGetIsSentToSignIn(t *testing.T) {
	p := startPortal(t, 1, 1)
	base := p.srv.URL
	cl, csrf := client(t, base)
	for _, path := range []string{"/portal/tokens", "/portal/webhook", "/admin/tokens", "/admin/users/disable"} {
		if status, loc, _ := postForm(t, cl, base+path, url.Values{"csrf": {csrf}, "name": {"x"}}); status != http.StatusUnauthorized {
			t.Errorf("anonymous POST %s: %d %s, want 401", path, status, loc)
		}
		if status, loc, _ := postForm(t, cl, base+path, url.Values{"name": {"x"}}); status != http.StatusForbidden {
			t.Errorf("anonymous POST %s without CSRF: %d %s, want 403", path, status, loc)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/portal/tokens", nil)
	req.Header.Set("X-CSRF-Token", csrf)
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous script GET with X-CSRF-Token: %d, want 401", resp.StatusCode)
	}
	if status, loc, _ := getPage(t, cl, base+"/portal/tokens"); status != http.StatusSeeOther || loc != "/login?next=%2Fportal%2Ftokens" {
		t.Errorf("anonymous browser GET: %d %s", status, loc)
	}
}

// TestAnAdminMustReplaceTheGivenPasswordBeforeTheConsoleLetsThemAct: the
// password `keyport admin user add` printed signs in, but every console
// page leads to the password page and every other form is refused until
// the admin has chosen their own (not the given one again).
func TestAnAdminMustReplaceTheGivenPasswordBeforeTheConsoleLetsThemAct(t *testing.T) {
	p := startPortal(t, 1, 1)
	base := p.srv.URL
	given, err := p.w.Svc.AddAdminUser(context.Background(), fixture.Admin, "new@issuer.example")
	if err != nil {
		t.Fatal(err)
	}
	cl, csrf := signedIn(t, base, "new@issuer.example", given)
	for _, path := range []string{"/", "/admin", "/admin/batches", "/admin/security"} {
		status, loc, _ := getPage(t, cl, base+path)
		if path == "/" && status == http.StatusSeeOther && loc == "/admin" {
			continue
		}
		if status != http.StatusSeeOther || loc != "/admin/security/password" {
			t.Fatalf("GET %s before the change: %d %s", path, status, loc)
		}
	}
	if status, _, page := getPage(t, cl, base+"/admin/security/password"); status != http.StatusOK || !strings.Contains(page, "Choose your own") {
		t.Fatalf("password page: %d %s", status, page)
	}
	if status, _, _ := postForm(t, cl, base+"/admin/tokens", url.Values{"csrf": {csrf}, "name": {"early"}, "ttl_days": {"90"}}); status != http.StatusForbidden {
		t.Fatalf("token created before the change: %d", status)
	}
	if status, _, page := postForm(t, cl, base+"/admin/security/password", url.Values{"csrf": {csrf}, "current_password": {given}, "password": {given}}); status != http.StatusUnprocessableEntity || !strings.Contains(page, "of your own") {
		t.Fatalf("the given password again: %d %s", status, page)
	}
	if status, loc, _ := getPage(t, cl, base+"/admin"); status != http.StatusSeeOther || loc != "/admin/security/password" {
		t.Fatalf("after a refused change: %d %s", status, loc)
	}
	if status, loc, _ := postForm(t, cl, base+"/admin/security/password", url.Values{"csrf": {csrf}, "current_password": {given}, "password": {"a password of my own choosing"}}); status != http.StatusSeeOther || loc != "/admin/security" {
		t.Fatalf("change: %d %s", status, loc)
	}
	if status, _, _ := getPage(t, cl, base+"/admin"); status != http.StatusOK {
		t.Fatalf("console after the change: %d", status)
	}
	if _, _, body := postForm(t, cl, base+"/admin/tokens", url.Values{"csrf": {csrf}, "name": {"later"}, "ttl_days": {"90"}}); newTokenRE.FindStringSubmatch(body) == nil {
		t.Fatalf("token after the change: %s", body)
	}
	if _, err := p.w.Svc.Login(context.Background(), "new@issuer.example", given, ""); err == nil {
		t.Fatal("the given password still signs in")
	}
}
