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

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

// pageSession is a signed-in browser without a browser: cookies, the CSRF
// token, no redirects followed.
type pageSession struct {
	t    *testing.T
	base string
	cl   *http.Client
	csrf string
}

func signInPages(t *testing.T, base, email, password string) *pageSession {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	ps := &pageSession{t: t, base: base, cl: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	ps.get("/login")
	u, _ := url.Parse(base)
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "kp_csrf" {
			ps.csrf = ck.Value
		}
	}
	if st, _ := ps.post("/login", url.Values{"email": {email}, "password": {password}}); st != http.StatusSeeOther {
		t.Fatalf("sign in: %d", st)
	}
	return ps
}

func (ps *pageSession) get(path string) (int, string) {
	ps.t.Helper()
	resp, err := ps.cl.Get(ps.base + path)
	if err != nil {
		ps.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (ps *pageSession) post(path string, form url.Values) (int, string) {
	ps.t.Helper()
	form.Set("csrf", ps.csrf)
	resp, err := ps.cl.PostForm(ps.base+path, form)
	if err != nil {
		ps.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPortalAccessRulePageAddsListsAndDeletesRulesAsTheCardConfirms(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	ps := signInPages(t, srv.URL, w.Email, w.Password)
	page := "/portal/domains/" + string(w.EID) + "/" + string(w.AID) + "/access-rules"
	if st, body := ps.get("/portal/domains/" + string(w.EID) + "/" + string(w.AID)); st != 200 || !strings.Contains(body, `id="access-rules"`) {
		t.Fatalf("domain page %d lacks the access-rules link", st)
	}
	if st, body := ps.get(page); st != 200 || !strings.Contains(body, "No app may reach this domain yet") {
		t.Fatalf("empty page: %d", st)
	}
	// Bad input: the form comes back with the field's error, nothing stored.
	for _, c := range []struct {
		name string
		form url.Values
		want string
	}{
		{"a short hash", url.Values{"hash": {"ABCD"}, "apdu": {"always"}}, "want 32"},
		{"no app", url.Values{"apdu": {"always"}}, "exactly one"},
		{"a malformed filter", url.Values{"hash": {strings.Repeat("AB", 32)}, "apdu": {"filters"}, "filters": {"80CA0000"}}, "header/mask"},
		{"a short filter header", url.Values{"hash": {strings.Repeat("AB", 32)}, "apdu": {"filters"}, "filters": {"80CA/FFFF0000"}}, "CLA INS P1 P2"},
		{"a PEM that is not a certificate", url.Values{"certificate": {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"}, "apdu": {"always"}}, "not an X.509"},
	} {
		st, body := ps.post(page, c.form)
		if st != http.StatusUnprocessableEntity || !strings.Contains(body, c.want) {
			t.Errorf("%s: %d, page lacks %q", c.name, st, c.want)
		}
	}
	d, _ := w.Store.GetDomain(context.Background(), w.EID, w.AID)
	if rules, _ := w.Store.ListAccessRules(context.Background(), d.ID); len(rules) != 0 {
		t.Fatalf("%d rules stored from bad forms", len(rules))
	}
	certPEM, hash := appCertPEM(t)
	if st, _ := ps.post(page, url.Values{"certificate": {certPEM}, "apdu": {"filters"}, "filters": {"80CA0000/FFFF0000 00B00000/00FF0000"}}); st != http.StatusSeeOther {
		t.Fatalf("add: %d", st)
	}
	if _, body := ps.get(page); !strings.Contains(body, hash) || !strings.Contains(body, "PENDING") {
		t.Fatal("the new rule is not listed PENDING")
	}
	if _, err := w.Agent().Session(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, body := ps.get(page)
	if !strings.Contains(body, "ACTIVE") {
		t.Fatal("the rule is not ACTIVE after the card confirmed it")
	}
	rules, _ := w.Store.ListAccessRules(context.Background(), d.ID)
	if len(rules) != 1 || rules[0].State != keyport.RuleActive || rules[0].APDU != "80CA0000FFFF0000,00B0000000FF0000" {
		t.Fatalf("rules %+v", rules)
	}
	if st, _ := ps.post(page+"/"+rules[0].ID+"/delete", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("delete: %d", st)
	}
	if _, body := ps.get(page); !strings.Contains(body, "DELETING") {
		t.Fatal("the rule is not DELETING")
	}
	if _, err := w.Agent().Session(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, body := ps.get(page); !strings.Contains(body, "No app may reach this domain yet") {
		t.Fatal("the deleted rule is still listed")
	}
}

func TestAdminConsoleRetriesAFailedAccessRuleJob(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	ctx := context.Background()
	pw := fixture.AdminUser(ctx, t, w.Svc, "admin@issuer.example")
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 4 && apdu[0]&0x84 == 0x84 && apdu[1] == 0xE2 && apdu[2] == 0x90 {
			return []byte{0x6A, 0x84}
		}
		return nil
	})
	_, hash := appCertPEM(t)
	r, err := keyport.AccessRuleRequest{CertificateSHA256: hash, APDU: []byte(`"always"`)}.Rule()
	if err != nil {
		t.Fatal(err)
	}
	rule, j, err := w.Svc.AddAccessRule(ctx, w.Prov, w.EID, w.AID, r)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	w.Card.SetFault(nil)
	admin := signInPages(t, srv.URL, "admin@issuer.example", pw)
	st, body := admin.get("/admin/jobs?state=FAILED")
	if st != 200 || !strings.Contains(body, j.Ref) || !strings.Contains(body, "/admin/jobs/"+j.Ref+"/retry") || !strings.Contains(body, "access-rule.store") {
		t.Fatalf("admin jobs page %d does not offer the retry", st)
	}
	if st, _ := admin.post("/admin/jobs/"+j.Ref+"/retry", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("retry: %d", st)
	}
	if got, _ := w.Store.GetAccessRule(ctx, rule.ID); got.State != keyport.RulePending {
		t.Fatalf("rule %s after the retry", got.State)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := w.Store.GetAccessRule(ctx, rule.ID); got.State != keyport.RuleActive {
		t.Fatalf("rule %s after the retried job", got.State)
	}
}
