package web_test

import (
	"context"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

// role is one kind of caller in the authorization matrix.
type role string

const (
	anonymous role = "anonymous"
	providerA role = "provider A"
	providerB role = "provider B"
	adminRole role = "admin"
)

// matrixWorld is what the matrix needs: provider A owns every object named
// in a URL; B is another approved provider; an admin oversees both.
type matrixWorld struct {
	p                    *portal
	srv                  *httptest.Server
	routes               []*echo.Route
	eid                  keyport.EID
	aid                  keyport.AID
	tokenID, provID      string
	jobRef               string
	secretsOfA           []string              // strings that must never reach B
	pageClients          map[role]*http.Client // API exchanges checked against web/openapi.json
	contract             *contractTransport
	csrf                 map[role]string
	apiTokens            map[role]string
	wrappingKeyA, tokenA string
	credentials          map[role][2]string
	adminTokenID         string
	campaignID           string
}

func newMatrixWorld(t *testing.T) *matrixWorld {
	t.Helper()
	ctx := context.Background()
	p := startPortal(t, 2, 2)
	e := web.New(p.w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()})
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	m := &matrixWorld{p: p, srv: srv, routes: e.Routes(), pageClients: map[role]*http.Client{}, csrf: map[role]string{},
		apiTokens: map[role]string{}, contract: newContractTransport(t)}

	a := p.approvedProvider(t, "Alpha Bank", "ops@alpha.example", "alpha password 123")
	b := p.approvedProvider(t, "Beta Shop", "ops@beta.example", "beta password 123")
	for _, x := range []struct {
		r  role
		pr keyport.Principal
	}{{providerA, a}, {providerB, b}} {
		tok, _, err := p.w.Svc.CreateAPIToken(ctx, x.pr, "matrix")
		if err != nil {
			t.Fatal(err)
		}
		m.apiTokens[x.r] = tok
	}
	adminTok, _, err := p.w.Svc.CreateAdminToken(ctx, fixture.Admin, "matrix", 0)
	if err != nil {
		t.Fatal(err)
	}
	m.apiTokens[adminRole] = adminTok
	// The console's revoke route gets another admin token than the one the
	// admin's API requests use.
	_, spareAdmin, err := p.w.Svc.CreateAdminToken(ctx, fixture.Admin, "matrix-spare", 0)
	if err != nil {
		t.Fatal(err)
	}
	m.adminTokenID = spareAdmin.ID

	wk, err := p.w.Svc.RegisterWrappingKey(ctx, a, fixture.PublicPEM(fixture.RSAKeys()[0]))
	if err != nil {
		t.Fatal(err)
	}
	m.eid, m.aid = fixture.EID(t, 0), fixture.AID(1)
	c, _, err := p.w.Svc.Claim(ctx, a, keyport.ClaimRequest{EID: m.eid, AID: m.aid, WrappingKeyID: wk.ID})
	if err != nil {
		t.Fatal(err)
	}
	_, spare, err := p.w.Svc.CreateAPIToken(ctx, a, "spare")
	if err != nil {
		t.Fatal(err)
	}
	d, err := p.w.Store.GetDomain(ctx, m.eid, m.aid)
	if err != nil {
		t.Fatal(err)
	}
	// The payload of a submitted script, as CheckScript makes it.
	payload := &keyport.SecondKeyPayload{EID: m.eid, AID: m.aid, APDUs: []string{}, PutKey: 0, InitUpdate: -1,
		Expect: keyport.Expectation{KVN: 0x31, KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "000000", keyport.UsageMAC: "000000", keyport.UsageDEK: "000000"}}}
	job := &keyport.Job{Ref: keyport.NewID("job"), Kind: keyport.JobSecondKey, DomainID: d.ID, ModuleID: d.ModuleID,
		ProviderID: a.ProviderID, State: keyport.JobQueued, NextRunAt: time.Now(), SecondKey: payload}
	if err := p.w.Store.CreateJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	m.tokenID, m.provID, m.jobRef, m.wrappingKeyA, m.tokenA = spare.ID, a.ProviderID, job.Ref, wk.ID, m.apiTokens[providerA]
	cmp, err := p.w.Svc.CreateCampaign(ctx, a, keyport.CampaignRequest{Op: keyport.CampaignLock,
		Targets: keyport.CampaignTargets{EIDs: []string{string(m.eid)}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.campaignID = cmp.ID
	m.secretsOfA = []string{a.ProviderID, wk.ID, c.ID, spare.ID, job.Ref, "Alpha Bank", "ops@alpha.example", m.apiTokens[providerA], cmp.ID}

	m.credentials = map[role][2]string{anonymous: {}, providerA: {"ops@alpha.example", "alpha password 123"},
		providerB: {"ops@beta.example", "beta password 123"}, adminRole: {p.adminEmail, p.adminPW}}
	for r, cred := range m.credentials {
		m.pageClients[r], m.csrf[r] = m.signIn(t, cred[0], cred[1])
	}
	return m
}

// signIn returns a cookie-keeping client that does not follow redirects,
// signed in unless email is empty, and its CSRF token.
func (m *matrixWorld) signIn(t *testing.T, email, password string) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar, Transport: m.contract, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Get(m.srv.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(m.srv.URL)
	csrf := ""
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "kp_csrf" {
			csrf = ck.Value
		}
	}
	if email == "" {
		return cl, csrf
	}
	resp, err = cl.PostForm(m.srv.URL+"/login", url.Values{"csrf": {csrf}, "email": {email}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in %s: status %d", email, resp.StatusCode)
	}
	return cl, csrf
}

// concrete fills a route's parameters with provider A's objects.
func (m *matrixWorld) concrete(path string) string {
	r := strings.NewReplacer(":eid", string(m.eid), ":aid", string(m.aid), ":name", "b1", "*", "portal.css")
	path = r.Replace(path)
	switch {
	case strings.Contains(path, "/jobs/:id"):
		path = strings.Replace(path, ":id", m.jobRef, 1)
	case strings.Contains(path, "/campaigns/:id"):
		path = strings.Replace(path, ":id", m.campaignID, 1)
	case strings.HasPrefix(path, "/admin/tokens/:id"):
		path = strings.Replace(path, ":id", m.adminTokenID, 1)
	case strings.Contains(path, "/tokens/:id"):
		path = strings.Replace(path, ":id", m.tokenID, 1)
	case strings.Contains(path, "/providers/:id"):
		path = strings.Replace(path, ":id", m.provID, 1)
	}
	return path
}

// do sends the route's request as role: pages with the role's cookies and a
// valid CSRF token (so that authorization, not CSRF, is what is tested),
// the API with the role's bearer token.
func (m *matrixWorld) do(t *testing.T, r role, rt *echo.Route) (int, string, string) {
	t.Helper()
	path := m.concrete(rt.Path)
	var req *http.Request
	if strings.HasPrefix(path, "/api/") {
		var body io.Reader
		if rt.Method != http.MethodGet {
			body = strings.NewReader("{}")
		}
		req, _ = http.NewRequest(rt.Method, m.srv.URL+path, body)
		req.Header.Set("Content-Type", "application/json")
		if tok := m.apiTokens[r]; tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
	} else {
		form := url.Values{"csrf": {m.csrf[r]}, "eid": {string(m.eid)}, "aid": {string(m.aid)},
			"wrapping_key_id": {m.wrappingKeyA}, "name": {"x"}}
		req, _ = http.NewRequest(rt.Method, m.srv.URL+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	// Event streams stay open while a job runs: read what comes in 2 s.
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := m.pageClients[r].Do(req.WithContext(rctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

// access is what a role may get from a route.
type access int

const (
	open         access = iota // any caller, on its own behalf
	toLogin                    // anonymous page visitor: sent to sign in
	unauth                     // anonymous API caller: 401
	forbidden                  // 403
	notFound                   // 404: the object is another provider's
	allowed                    // served (2xx, 3xx, or a 4xx about the input)
	adminAllowed               // the issuer sees every object
)

// expect classifies every route for every role. A route missing here fails
// the test: a new route must be classified before it ships.
func expect(method, path string, r role) (access, bool) {
	public := map[string]bool{"/": true, "/signup": true, "/signup/done": true, "/verify": true, "/login": true, "/logout": true,
		"/reset": true, "/reset/confirm": true, "/login/passkey": true, "/assets/*": true, "/healthz": true, "/readyz": true, "/.well-known/jwks.json": true,
		"/api/v1/openapi.json": true}
	// Any provider may look a module up by EID (to claim a free domain);
	// what it sees of the module is checked by the leak check below.
	withObjectOfA := strings.Contains(path, ":eid") && !strings.HasPrefix(path, "/api/v1/modules/") || strings.Contains(path, "/tokens/:id") || strings.Contains(path, "/jobs/:id") ||
		strings.Contains(path, "/campaigns/:id")
	// A passkey ID the matrix leaves as ":id" names none of the caller's
	// passkeys: 404 to whoever may reach the route (store tests show that
	// another user's is refused the same way).
	unknownPasskey := strings.Contains(path, "/passkeys/:id")
	// So does an approval ID: the API answers 404 for a request that does
	// not exist (the console shows the refusal on its page).
	unknownApproval := strings.Contains(path, "/approvals/:id")
	switch {
	case strings.Contains(path, "/sandbox"):
		// The matrix's server runs no sandbox: its routes answer 404 to
		// whoever passes their access check (cmd/keyport's sandbox tests
		// run them with one).
		switch {
		case path == "/sandbox/.well-known/jwks.json":
			return notFound, true
		case r == anonymous && strings.HasPrefix(path, "/api/"):
			return unauth, true
		case r == anonymous:
			return toLogin, true
		case strings.HasPrefix(path, "/admin") && r != adminRole, strings.HasPrefix(path, "/portal") && r == adminRole:
			return forbidden, true
		}
		return notFound, true
	case public[path]:
		return open, true
	case strings.HasPrefix(path, "/admin"):
		switch r {
		case anonymous:
			return toLogin, true
		case adminRole:
			if unknownPasskey {
				return notFound, true
			}
			return adminAllowed, true
		}
		return forbidden, true
	case strings.HasPrefix(path, "/portal"):
		switch r {
		case anonymous:
			return toLogin, true
		case adminRole:
			if path == "/portal" {
				return open, true // redirected to /admin
			}
			return forbidden, true
		case providerB:
			if withObjectOfA {
				return notFound, true
			}
		}
		if unknownPasskey {
			return notFound, true
		}
		return allowed, true
	case strings.HasPrefix(path, "/api/v1/admin/"):
		switch r {
		case anonymous:
			return unauth, true
		case adminRole:
			if unknownApproval {
				return notFound, true
			}
			return adminAllowed, true
		}
		return forbidden, true
	case strings.HasPrefix(path, "/api/v1/"):
		switch r {
		case anonymous:
			return unauth, true
		case adminRole:
			// The issuer reads any module, domain and job; provider-only
			// actions (claim, keys, tokens, webhook, scripts) are refused.
			if method == http.MethodGet && (strings.HasPrefix(path, "/api/v1/modules/") || path == "/api/v1/domains/:eid/:aid" ||
				strings.HasPrefix(path, "/api/v1/jobs/") || path == "/api/v1/domains/:eid/:aid/access-rules") || path == "/api/v1/jobs/:id/cancel" {
				return adminAllowed, true
			}
			// The issuer releases, locks and unlocks any domain.
			switch path {
			case "/api/v1/domains/:eid/:aid/release", "/api/v1/domains/:eid/:aid/lock", "/api/v1/domains/:eid/:aid/unlock":
				return adminAllowed, true
			}
			return forbidden, true
		case providerB:
			if withObjectOfA {
				return notFound, true
			}
		}
		return allowed, true
	}
	return 0, false
}

func TestAuthorizationMatrixNobodyReachesAnotherProvidersObjectsByChangingAnIDInTheURL(t *testing.T) {
	start := time.Now()
	m := newMatrixWorld(t)
	// Admin last: its actions (suspending A) must not hide A's checks.
	order := []role{anonymous, providerB, providerA, adminRole}
	checked := 0
	for _, r := range order {
		for _, rt := range m.routes {
			if rt.Method == echo.RouteNotFound {
				continue
			}
			want, ok := expect(rt.Method, rt.Path, r)
			if !ok {
				t.Errorf("route %s %s is not classified in the authorization matrix (expect in portal_authz_test.go)", rt.Method, rt.Path)
				continue
			}
			status, loc, body := m.do(t, r, rt)
			checked++
			if rt.Path == "/logout" && r != anonymous {
				m.pageClients[r], m.csrf[r] = m.signIn(t, m.credentials[r][0], m.credentials[r][1])
			}
			fail := func(why string) {
				t.Errorf("%s %s as %s: status %d (Location %q): %s", rt.Method, rt.Path, r, status, loc, why)
			}
			if status >= 500 {
				fail("server error")
				continue
			}
			switch want {
			case toLogin:
				// Only a page to show is redirected; a post is refused.
				if rt.Method == http.MethodGet && (status != http.StatusSeeOther || !strings.HasPrefix(loc, "/login")) {
					fail("want a redirect to /login")
				}
				if rt.Method != http.MethodGet && status != http.StatusUnauthorized {
					fail("want 401 for an anonymous post that carries the CSRF token")
				}
			case unauth:
				if status != http.StatusUnauthorized {
					fail("want 401")
				}
			case forbidden:
				if status != http.StatusForbidden {
					fail("want 403")
				}
			case notFound:
				if status != http.StatusNotFound {
					fail("want 404, as for an object that does not exist")
				}
			case allowed, adminAllowed:
				if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound {
					fail("want access")
				}
			}
			if r == providerB || r == anonymous {
				for _, s := range m.secretsOfA {
					if strings.Contains(m.concrete(rt.Path), s) {
						continue // the caller typed it into the URL: echoing it back tells nothing
					}
					if strings.Contains(body, s) || strings.Contains(loc, s) {
						fail("the response shows provider A's " + s)
					}
				}
			}
		}
	}
	t.Logf("%d route × role requests checked in %s", checked, time.Since(start).Round(time.Millisecond))
}
