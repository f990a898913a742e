package web_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/keywrap"
)

// The acceptance flow of issue 5, in Chromium: a provider signs up, confirms
// its address through the mailed link, an admin (another browser context)
// approves it, the provider registers a key, finds a module by EID, claims a
// domain and downloads the package, which the test unwraps and compares with
// the manufacturer's keys. Every page visited is screenshotted.
func TestBrowserProviderSignsUpIsApprovedClaimsADomainAndUnwrapsTheDownloadedPackage(t *testing.T) {
	start := time.Now()
	newTab := browser(t)
	p := startPortal(t, 2, 3)
	shot := newShots(t)
	base := p.srv.URL
	const email, password = "ops@first-bank.example", "correct horse battery staple"

	// Sign up.
	prov := newTab()
	do(t, prov, chromedp.Navigate(base+"/signup"))
	shot.take(prov, "signup")
	do(t, prov,
		chromedp.SendKeys(chromedp.ID("organisation"), "First Bank"),
		chromedp.SetValue(chromedp.ID("kind"), "bank"),
		chromedp.SendKeys(chromedp.ID("contact"), "Ada Lovelace"),
		chromedp.SendKeys(chromedp.ID("email"), email),
		chromedp.SendKeys(chromedp.ID("password"), password))
	clickAndLoad(t, prov, "form.stack button[type=submit]")
	if got := bodyText(t, prov); !strings.Contains(got, "Check your e-mail") {
		t.Fatalf("after sign-up the page says %q", got)
	}
	shot.take(prov, "signup-done")

	// The admin sees the verification e-mail in the outbox: recipient,
	// subject and state, never the link, which only the mail carries.
	admin := newTab()
	login(t, admin, base, p.adminEmail, p.adminPW)
	if !strings.HasSuffix(location(t, admin), "/admin") {
		t.Fatalf("admin landed on %s", location(t, admin))
	}
	do(t, admin, chromedp.Navigate(base+"/admin/outbox"))
	shot.take(admin, "admin-outbox")
	link := p.mailedLink(t, email)
	outbox := text(t, admin, "main")
	if !strings.Contains(text(t, admin, "article.outbox-message .mail-to"), email) ||
		!strings.Contains(text(t, admin, "article.outbox-message .outbox-state"), "sent") ||
		strings.Contains(outbox, "token=") || strings.Contains(outbox, link[strings.Index(link, "token=")+len("token="):]) {
		t.Fatalf("outbox for %s shows %q", email, outbox)
	}

	// The provider follows the link, confirms, and signs in: pending.
	do(t, prov, chromedp.Navigate(link))
	shot.take(prov, "verify")
	clickAndLoad(t, prov, "#confirm")
	if got := bodyText(t, prov); !strings.Contains(got, "address is confirmed") {
		t.Fatalf("after confirming: %q", got)
	}
	login(t, prov, base, email, password)
	if got := bodyText(t, prov); !strings.Contains(got, "waiting for the issuer's approval") {
		t.Fatalf("pending provider sees %q", got)
	}
	shot.take(prov, "pending")

	// The admin approves.
	do(t, admin, chromedp.Navigate(base+"/admin/providers"))
	shot.take(admin, "admin-providers")
	clickAndLoad(t, admin, `button[data-approve="`+email+`"]`)
	if got := bodyText(t, admin); !strings.Contains(got, "is now approved") {
		t.Fatalf("after approving: %q", got)
	}

	// The provider registers its wrapping key; the fingerprint is shown.
	do(t, prov, chromedp.Navigate(base+"/portal"))
	shot.take(prov, "dashboard-empty")
	key := fixture.RSAKeys()[0]
	do(t, prov, chromedp.Navigate(base+"/portal/keys"), chromedp.SetValue(chromedp.ID("pem"), string(fixture.PublicPEM(key))))
	clickAndLoad(t, prov, "#register-key")
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	sum := sha256.Sum256(der)
	fp := hex.EncodeToString(sum[:])
	if got := text(t, prov, "#keys .fingerprint"); strings.ReplaceAll(got, ":", "") != fp {
		t.Fatalf("fingerprint shown %q, want %s", got, fp)
	}
	shot.take(prov, "keys")

	// Find the module by EID and claim its first domain, with confirmation.
	eid, aid := fixture.EID(t, 1), fixture.AID(1)
	do(t, prov, chromedp.Navigate(base+"/portal/modules"), chromedp.SendKeys(chromedp.ID("eid"), string(eid)))
	clickAndLoad(t, prov, "#lookup")
	shot.take(prov, "lookup")
	clickAndLoad(t, prov, "#module-domains a.button")
	if got := bodyText(t, prov); !strings.Contains(got, string(aid)) || !strings.Contains(got, "about to claim") {
		t.Fatalf("confirmation page: %q", got)
	}
	shot.take(prov, "claim-confirm")
	clickAndLoad(t, prov, "#confirm-claim")
	if got := text(t, prov, "#domain-state"); got != string(keyport.Assigned) {
		t.Fatalf("domain state after claim %q", got)
	}
	shot.take(prov, "domain")

	// Download the key package with the browser's session and unwrap it.
	pkgText, err := chromedp.Run(prov, chromedp.Evaluate[string](
		`fetch(document.getElementById("download").href).then(r => r.ok ? r.text() : "HTTP " + r.status)`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := p.w.Svc.JWKS(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	pkg, err := keyport.VerifyKeyPackage([]byte(pkgText), jwks)
	if err != nil {
		t.Fatalf("downloaded package %.80q: %v", pkgText, err)
	}
	if pkg.EID != eid || pkg.AID != aid || len(pkg.Keys) != 3 || pkg.Wrapping.PublicKeySHA256 != fp {
		t.Fatalf("package is for %s/%s with %d keys to %s", pkg.EID, pkg.AID, len(pkg.Keys), pkg.Wrapping.PublicKeySHA256)
	}
	for _, k := range pkg.Keys {
		clear, err := keywrap.UnwrapRSAAES(key, k.Wrapped, fixture.OAEPHash(t, pkg.Wrapping.OAEPHash))
		if err != nil {
			t.Fatalf("unwrap %s: %v", k.Usage, err)
		}
		if want := p.w.Keys[eid][aid][k.Usage]; !bytes.Equal(clear, want) {
			t.Fatalf("%s key differs from the manufacturer's", k.Usage)
		}
		kcv, err := gp.KCV(clear)
		if err != nil || fmt.Sprintf("%X", kcv) != k.KCV {
			t.Fatalf("%s KCV %X, package says %s (%v)", k.Usage, kcv, k.KCV, err)
		}
	}

	// The remaining pages of both sides render; one screenshot each.
	do(t, prov, chromedp.Navigate(base+"/portal"))
	if !strings.Contains(text(t, prov, "#domains"), string(aid)) {
		t.Fatal("dashboard does not list the claimed domain")
	}
	shot.take(prov, "dashboard")
	do(t, prov, chromedp.Navigate(base+"/portal/tokens"), chromedp.SendKeys(chromedp.ID("name"), "payments-prod"),
		chromedp.SendKeys(chromedp.ID("current_password"), password))
	clickAndLoad(t, prov, "#create-token")
	tok := text(t, prov, "#new-token")
	if pr, err := p.w.Svc.Authenticate(context.Background(), tok); err != nil || pr.ProviderID == "" {
		t.Fatalf("the token shown does not authenticate: %v", err)
	}
	shot.take(prov, "tokens-created")
	do(t, prov, chromedp.Navigate(base+"/portal/tokens"))
	if strings.Contains(bodyText(t, prov), tok) {
		t.Fatal("the token is shown a second time")
	}
	for _, page := range []string{"/portal/webhook", "/portal/audit", "/portal/security"} {
		do(t, prov, chromedp.Navigate(base+page))
		shot.take(prov, strings.TrimPrefix(page, "/"))
	}
	for _, page := range []string{"/admin", "/admin/batches", "/admin/modules?eid=" + string(eid), "/admin/audit", "/admin/hsm"} {
		do(t, admin, chromedp.Navigate(base+page))
		name := strings.NewReplacer("/", "-", "?", "-", "=", "-").Replace(strings.TrimPrefix(page, "/"))
		shot.take(admin, name[:min(len(name), 24)])
	}
	if got := text(t, admin, "#hsm-keys"); !strings.Contains(got, "keyport/receipt") || !strings.Contains(got, "keyport/batch/b1/transport") {
		t.Fatalf("HSM page lists %q", got)
	}
	do(t, admin, chromedp.Navigate(base+"/admin/audit"))
	clickAndLoad(t, admin, "#verify")
	if got := text(t, admin, "#verify-result"); !strings.Contains(got, "The chain verifies") || !strings.Contains(got, "keyed head proves the log ends") {
		t.Fatalf("audit verification: %q", got)
	}
	shot.take(admin, "admin-audit-verified")
	t.Logf("flow with %d screenshots in %s (%s)", shot.n, shot.dir, time.Since(start).Round(time.Millisecond))
}
