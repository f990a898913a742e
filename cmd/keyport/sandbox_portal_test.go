package main

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

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// pages is a signed-in browser without a browser.
type pages struct {
	t    *testing.T
	base string
	cl   *http.Client
	csrf string
}

func signInTo(t *testing.T, base, email, password string) *pages {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	p := &pages{t: t, base: base, cl: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	p.get("/login")
	u, _ := url.Parse(base)
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "kp_csrf" {
			p.csrf = ck.Value
		}
	}
	if st, body := p.post("/login", url.Values{"email": {email}, "password": {password}}); st != http.StatusSeeOther {
		t.Fatalf("sign in %s: %d %s", email, st, body)
	}
	return p
}

func (p *pages) get(path string) (int, string) {
	p.t.Helper()
	resp, err := p.cl.Get(p.base + path)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (p *pages) post(path string, form url.Values) (int, string) {
	p.t.Helper()
	form.Set("csrf", p.csrf)
	resp, err := p.cl.PostForm(p.base+path, form)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestSandboxPagesSetFaultsAndClaimForTheProviderAndTheIssuer drives the
// provider's /portal/sandbox and the issuer's /admin/sandbox: a bad fault
// comes back with its reason and changes nothing, a good one is set; the
// provider claims a sandbox domain and downloads its package; production
// holds no sandbox domain.
func TestSandboxPagesSetFaultsAndClaimForTheProviderAndTheIssuer(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, st, 1, 1)
	adminPW := fixture.AdminUser(ctx, t, w.Svc, "admin@issuer.example")
	prov, err := w.Svc.SignUpProvider(ctx, keyport.SignUp{Organisation: "Page Bank", Kind: keyport.KindBank, Contact: "Pat",
		Email: "pat@bank.example", Password: "correct horse battery staple"}, "http://x.invalid")
	if err != nil {
		t.Fatal(err)
	}
	em, _ := w.Mail.Newest("pat@bank.example")
	token := em.Body[strings.Index(em.Body, "token=")+len("token="):]
	token = strings.Fields(token)[0]
	tok, _ := url.QueryUnescape(token)
	if _, err := w.Svc.VerifyEmail(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.SetProviderStatus(ctx, fixture.Admin, prov.ID, keyport.ProviderApproved); err != nil {
		t.Fatal(err)
	}
	pp := keyport.Principal{ProviderID: prov.ID, Name: "pat@bank.example"}
	if _, err := w.Svc.RegisterWrappingKey(ctx, pp, fixture.PublicPEM(fixture.RSAKeys()[0])); err != nil {
		t.Fatal(err)
	}

	run := testSandbox(t, w, &sandboxFlags{on: true, hsm: hsmtest.New(t), modules: 2, domains: 2, expiry: time.Minute},
		&cardLinkFlags{webhookTimeout: time.Second}, sandboxOptions{})
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, Sandbox: run.sb}))
	defer srv.Close()
	eid := run.eids[0]

	pr := signInTo(t, srv.URL, "pat@bank.example", "correct horse battery staple")
	code, body := pr.get("/portal/sandbox")
	if code != 200 || !strings.Contains(body, `id="sandbox-banner"`) || !strings.Contains(body, `href="/portal/sandbox"`) {
		t.Fatalf("sandbox page: %d", code)
	}
	code, body = pr.post("/portal/sandbox/modules/"+string(eid)+"/fault", url.Values{"fault": {"sw"}, "command": {"2"}, "sw": {"9000"}})
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "not an error status word") || run.book.Fault(eid).Active() {
		t.Fatalf("a 9000 fault: %d, fault now %+v", code, run.book.Fault(eid))
	}
	if code, _ = pr.post("/portal/sandbox/modules/"+string(eid)+"/fault", url.Values{"fault": {"drift"}, "drift": {"2"}}); code != http.StatusSeeOther || run.book.Fault(eid).Active() {
		t.Fatalf("drift set on a module the provider holds no domain of: %d, fault %+v", code, run.book.Fault(eid))
	}
	if _, body = pr.get("/portal/sandbox"); !strings.Contains(body, "claim a domain of sandbox module") {
		t.Fatalf("the refusal is not shown: %s", body)
	}
	wk, _ := w.Svc.ListWrappingKeys(ctx, pp)
	if code, _ = pr.post("/portal/sandbox/claim", url.Values{"eid": {string(eid)}, "wrapping_key_id": {wk[0].ID}}); code != http.StatusSeeOther {
		t.Fatalf("claim: %d", code)
	}
	if code, _ = pr.post("/portal/sandbox/modules/"+string(eid)+"/fault", url.Values{"fault": {"drift"}, "drift": {"2"}}); code != http.StatusSeeOther {
		t.Fatalf("set drift: %d", code)
	}
	if f := run.book.Fault(eid); f.Kind != keyport.FaultDrift || f.Drift != 2 {
		t.Fatalf("the page set %+v", f)
	}
	_, body = pr.get("/portal/sandbox")
	if !strings.Contains(body, "counter drift: the card&#39;s sequence counter jumps by 2") || !strings.Contains(body, "/key-package") {
		t.Fatalf("the page shows neither the fault nor the claimed domain:\n%s", body)
	}
	doms, _ := run.sb.Domains(ctx, pp)
	if len(doms) != 1 {
		t.Fatalf("sandbox domains: %+v", doms)
	}
	if code, pkg := pr.get("/portal/sandbox/domains/" + string(doms[0].EID) + "/" + string(doms[0].AID) + "/key-package"); code != 200 || !strings.Contains(pkg, "signatures") && !strings.Contains(pkg, "payload") {
		t.Fatalf("key package: %d %s", code, pkg)
	}
	if prodDoms, _ := w.Svc.ListDomains(ctx, pp); len(prodDoms) != 0 {
		t.Fatalf("production lists the sandbox claim: %+v", prodDoms)
	}
	// Release from the page: the domain is RELEASING until its proof.
	release := "/portal/sandbox/domains/" + string(doms[0].EID) + "/" + string(doms[0].AID) + "/release"
	if !strings.Contains(body, `action="`+release+`"`) {
		t.Fatalf("no release button for the ASSIGNED sandbox domain:\n%s", body)
	}
	// Without the confirm box nothing is queued, as in production.
	if code, _ = pr.post(release, url.Values{}); code != http.StatusSeeOther {
		t.Fatalf("release without the confirm box: %d", code)
	}
	if d, err := run.sb.Box.Store.GetDomain(ctx, doms[0].EID, doms[0].AID); err != nil || d.State != keyport.Assigned {
		t.Fatalf("a release without the confirm box changed the domain: %+v %v", d, err)
	}
	if _, body = pr.get("/portal/sandbox"); !strings.Contains(body, "Not released: tick the box") {
		t.Fatalf("no notice that the release was not confirmed:\n%s", body)
	}
	if code, _ = pr.post(release, url.Values{"confirm": {"yes"}}); code != http.StatusSeeOther {
		t.Fatalf("release: %d", code)
	}
	if d, err := run.sb.Box.Store.GetDomain(ctx, doms[0].EID, doms[0].AID); err != nil || d.State != keyport.Releasing {
		t.Fatalf("after the page's release: %+v %v", d, err)
	}
	if _, body = pr.get("/portal/sandbox"); !strings.Contains(body, "Release of sandbox domain "+string(doms[0].AID)) || strings.Contains(body, `action="`+release+`"`) {
		t.Fatalf("after the release the page has no notice, or still a release button:\n%s", body)
	}
	if code, body = pr.post(release, url.Values{"confirm": {"yes"}}); code != http.StatusUnprocessableEntity || !strings.Contains(body, "RELEASING") {
		t.Fatalf("a second release: %d\n%s", code, body)
	}
	// The module's other domain: its Lock button queues the lock.
	if code, _ = pr.post("/portal/sandbox/claim", url.Values{"eid": {string(eid)}, "wrapping_key_id": {wk[0].ID}}); code != http.StatusSeeOther {
		t.Fatalf("second claim: %d", code)
	}
	released := doms[0].AID
	doms, _ = run.sb.Domains(ctx, pp)
	var other keyport.Domain
	for _, d := range doms {
		if d.AID != released && d.State == keyport.Assigned {
			other = d
		}
	}
	lock := "/portal/sandbox/domains/" + string(other.EID) + "/" + string(other.AID) + "/lock"
	if _, body = pr.get("/portal/sandbox"); other.AID == "" || !strings.Contains(body, `action="`+lock+`"`) || strings.Contains(body, "/"+string(other.AID)+`/unlock"`) {
		t.Fatalf("the ASSIGNED domain %q has no Lock button, or an Unlock one:\n%s", other.AID, body)
	}
	if code, _ = pr.post(lock, url.Values{}); code != http.StatusSeeOther {
		t.Fatalf("lock: %d", code)
	}
	if _, body = pr.get("/portal/sandbox"); !strings.Contains(body, "Lock of sandbox domain "+string(other.AID)) {
		t.Fatalf("no notice of the queued lock:\n%s", body)
	}

	ad := signInTo(t, srv.URL, "admin@issuer.example", adminPW)
	if code, body = ad.get("/admin/sandbox"); code != 200 || !strings.Contains(body, "sandbox-modules") {
		t.Fatalf("console: %d", code)
	}
	if code, _ = ad.post("/admin/sandbox/modules/"+string(run.eids[1])+"/fault", url.Values{"fault": {"offline"}}); code != http.StatusSeeOther {
		t.Fatalf("console set offline: %d", code)
	}
	if run.book.Fault(run.eids[1]).Kind != keyport.FaultOffline {
		t.Fatalf("console fault: %+v", run.book.Fault(run.eids[1]))
	}
	// A provider cannot claim through the console's path, nor an admin
	// claim or release.
	if code, _ = ad.post("/admin/sandbox/claim", url.Values{"eid": {string(eid)}}); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Fatalf("console claim: %d", code)
	}
	if code, _ = ad.post("/admin/sandbox/domains/"+string(doms[0].EID)+"/"+string(doms[0].AID)+"/release", url.Values{}); code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
		t.Fatalf("console release: %d", code)
	}
}
