package web_test

import (
	"context"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
	"github.com/keyport/keyport/web/views"
)

// chromiumPath is Debian's Chromium; the browser tests need it.
const chromiumPath = "/usr/bin/chromium"

// chromiumInstall is the line that installs it.
const chromiumInstall = "apt-get update && apt-get install -y chromium"

// portal is a running keyport (real SoftHSM, real SQLite store, the imported
// fixture batch) with an issuer-admin user, served on 127.0.0.1.
type portal struct {
	w          *fixture.World
	srv        *httptest.Server
	base       string // the URL browsers use
	adminEmail string
	adminPW    string
}

func startPortal(t *testing.T, modules, domains int) *portal {
	t.Helper()
	return startPortalAt(t, modules, domains, false)
}

// startPortalAt is startPortal; with onLocalhost the portal's public URL is
// http://localhost:<port> (a host name WebAuthn accepts over plain HTTP),
// and the browser is to use p.base rather than the 127.0.0.1 address.
func startPortalAt(t *testing.T, modules, domains int, onLocalhost bool) *portal {
	t.Helper()
	return startPortalOnAt(t, storetest.Open(t, storetest.SQLitePath(t)), modules, domains, onLocalhost)
}

// startPortalOn is startPortal on the store s.
func startPortalOn(t *testing.T, s *store.Store, modules, domains int) *portal {
	t.Helper()
	return startPortalOnAt(t, s, modules, domains, false)
}

// startPortalOnAt is startPortalAt on the store s.
func startPortalOnAt(t *testing.T, s *store.Store, modules, domains int, onLocalhost bool) *portal {
	t.Helper()
	w := fixture.New(t, s, modules, domains)
	w.Svc.Sealer = w.HSM
	pw := fixture.AdminUser(context.Background(), t, w.Svc, "admin@issuer.example")
	// Plain HTTP on 127.0.0.1: the documented development override of the
	// Secure cookie flag (Chromium would keep Secure cookies on loopback
	// anyway, but the __Host- prefix needs https).
	hsmStatus := func(ctx context.Context) (views.HSMStatus, error) {
		st, err := w.HSM.Status(ctx)
		if err != nil {
			return views.HSMStatus{}, err
		}
		out := views.HSMStatus{Token: st.Token, OAEPHash: st.OAEPHash}
		for _, k := range st.Keys {
			out.Keys = append(out.Keys, views.HSMKey{Label: k.Label, Class: k.Class, Type: k.Type})
		}
		return out, nil
	}
	srv := httptest.NewUnstartedServer(nil)
	opts := web.Options{InsecureCookies: true, SpoolDir: t.TempDir(), HSMStatus: hsmStatus}
	base := ""
	if onLocalhost {
		base = "http://localhost:" + strconv.Itoa(srv.Listener.Addr().(*net.TCPAddr).Port)
		opts.PublicURL = base
	}
	srv.Config.Handler = web.New(w.Svc, opts)
	srv.Start()
	t.Cleanup(srv.Close)
	if base == "" {
		base = srv.URL
	}
	return &portal{w: w, srv: srv, base: base, adminEmail: "admin@issuer.example", adminPW: pw}
}

// browser starts headless Chromium for the test and returns a function
// opening a tab in a fresh browser context (own cookies: another person).
func browser(t *testing.T) func() context.Context {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("Chromium is not installed at %s; install it with: %s", chromiumPath, chromiumInstall)
	}
	if testing.Short() {
		t.Skip("browser tests skipped in -short mode")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 900),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancelRoot := chromedp.NewContext(alloc)
	if err := chromedp.Do(root); err != nil {
		cancelRoot()
		cancelAlloc()
		t.Fatalf("start Chromium: %v", err)
	}
	t.Cleanup(func() { cancelRoot(); cancelAlloc() })
	return func() context.Context {
		ctx, cancel := chromedp.NewContext(root, chromedp.WithNewBrowserContext())
		ctx, cancelT := context.WithTimeout(ctx, 90*time.Second)
		t.Cleanup(func() { cancelT(); cancel() })
		return ctx
	}
}

// shots saves full-page PNG screenshots, numbered in order, under
// $KEYPORT_SCREENSHOT_DIR/<test> or the test's artifact directory
// (go test -artifacts keeps them).
type shots struct {
	t   *testing.T
	dir string
	n   int
}

func newShots(t *testing.T) *shots {
	dir := t.ArtifactDir()
	if d := os.Getenv("KEYPORT_SCREENSHOT_DIR"); d != "" {
		dir = filepath.Join(d, t.Name())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &shots{t: t, dir: dir}
}

func (s *shots) take(ctx context.Context, name string) {
	s.t.Helper()
	s.t.Logf("%s screenshot %s", time.Now().Format("15:04:05.000"), name)
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		s.t.Fatalf("screenshot %s: %v", name, err)
	}
	s.n++
	p := filepath.Join(s.dir, strings.ReplaceAll(name, " ", "-"))
	p = filepath.Join(s.dir, filepath.Base(p))
	if err := os.WriteFile(filepath.Join(s.dir, twoDigits(s.n)+"-"+filepath.Base(p)+".png"), png, 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func twoDigits(n int) string { return string([]byte{byte('0' + n/10%10), byte('0' + n%10)}) }

// do runs browser steps or fails the test.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// clickAndLoad clicks and waits for the page the click leads to.
func clickAndLoad(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.WaitEvent(page.LoadEventFired, nil, chromedp.Click(chromedp.CSS(sel)))); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func bodyText(t *testing.T, ctx context.Context) string { return text(t, ctx, "body") }

func location(t *testing.T, ctx context.Context) string {
	t.Helper()
	u, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// login signs in through the form.
func login(t *testing.T, ctx context.Context, base, email, password string) {
	t.Helper()
	do(t, ctx, chromedp.Navigate(base+"/login"),
		chromedp.SendKeys(chromedp.ID("email"), email),
		chromedp.SendKeys(chromedp.ID("password"), password))
	clickAndLoad(t, ctx, "#signin")
}

var linkRE = regexp.MustCompile(`https?://\S+\?token=\S+`)

// mailedLink returns the link of the newest e-mail to the address, as the
// Mailer got it (the outbox keeps no link).
func (p *portal) mailedLink(t *testing.T, to string) string {
	t.Helper()
	p.w.Svc.Drain() // a reset link is sent after the answer
	// The newest with a link: a lock notice may have arrived after it.
	em, ok := p.w.Mail.NewestWith(to, "token=")
	link := linkRE.FindString(em.Body)
	if !ok || link == "" {
		t.Fatalf("no e-mail with a link to %s", to)
	}
	return link
}

// approvedProvider signs up a provider through the service, verifies its
// address and approves it, and returns its principal.
func (p *portal) approvedProvider(t *testing.T, org, email, password string) keyport.Principal {
	t.Helper()
	ctx := context.Background()
	prov, err := p.w.Svc.SignUpProvider(ctx, keyport.SignUp{Organisation: org, Kind: keyport.KindBank, Contact: "Test Person",
		Email: email, Password: password}, p.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	link := p.mailedLink(t, email)
	token := link[strings.Index(link, "token=")+len("token="):]
	if _, err := p.w.Svc.VerifyEmail(ctx, token); err != nil {
		t.Fatal(err)
	}
	if err := p.w.Svc.SetProviderStatus(ctx, fixture.Admin, prov.ID, keyport.ProviderApproved); err != nil {
		t.Fatal(err)
	}
	return keyport.Principal{ProviderID: prov.ID, Name: email}
}
