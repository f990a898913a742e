package web_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// layoutProbe measures the page: grouped values (EIDs, fingerprints,
// commands) whose groups a line split, grouped values that do wrap (between
// groups), elements still styled word-break: break-all, and sideways
// scrolling.
const layoutProbe = `(() => {
  const split = [], breakAll = [];
  let groups = 0, wrapped = 0;
  for (const box of document.querySelectorAll(".groups")) {
    groups++;
    const tops = new Set();
    for (const g of box.querySelectorAll(".grp")) {
      const rects = g.getClientRects();
      if (rects.length > 1) split.push(g.textContent);
      if (rects.length > 0) tops.add(Math.round(rects[0].top));
    }
    if (tops.size > 1) wrapped++;
  }
  for (const el of document.querySelectorAll("body *")) {
    if (getComputedStyle(el).wordBreak === "break-all") breakAll.push(el.tagName + "." + el.className);
  }
  const sideways = document.documentElement.scrollWidth > document.documentElement.clientWidth + 1;
  return JSON.stringify({groups, wrapped, split, breakAll: breakAll.slice(0, 5), sideways});
})()`

type layout struct {
	Groups, Wrapped int
	Split, BreakAll []string
	Sideways        bool
}

func probeLayout(t *testing.T, tab context.Context) layout {
	t.Helper()
	s, err := chromedp.Run(tab, chromedp.Evaluate[string](layoutProbe))
	if err != nil {
		t.Fatal(err)
	}
	var l layout
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		t.Fatal(err)
	}
	return l
}

// steadyText is text, read again if the document was replaced between
// finding the node and reading it (a navigation finishing).
func steadyText(t *testing.T, tab context.Context, sel string) string {
	t.Helper()
	var err error
	for range 5 {
		var s string
		if s, err = chromedp.Run(tab, chromedp.Text(chromedp.CSS(sel))); err == nil {
			return s
		}
		if !strings.Contains(err.Error(), "No node") {
			break
		}
		if _, werr := chromedp.Run(tab, chromedp.WaitReady(chromedp.CSS("body"))); werr != nil {
			t.Fatal(werr)
		}
	}
	t.Fatalf("text of %s: %v", sel, err)
	return ""
}

func eval[T any](t *testing.T, tab context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(tab, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

// The polish of issue 13, walked in Chromium: a provider signs up (the
// confirmation names the address), the console shows the address as not
// confirmed and neither offers nor accepts its approval, names providers
// rather than their IDs, links outbox recipients, labels kinds, writes
// KVNs in hex and counts in the right number; EIDs, fingerprints and
// commands break between groups only, at 390 and 1280 px; a command copies;
// the chart's last label fits; the import form stands outside the table;
// the bad-EID message is the server's, word for word.
func TestBrowserPortalPolishAtPhoneAndDesktopWidth(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 2, 2)
	shot := newShots(t)
	base := p.srv.URL
	ctx := context.Background()
	const email, password = "ops@polish-bank.example", "a long enough password"
	phone := chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2))
	desktop := chromedp.EmulateViewport(1280, 900)

	prov := newTab()
	do(t, prov, phone, chromedp.Navigate(base+"/signup"))
	if got := eval[string](t, prov, `document.querySelector("#kind option[value=bank]").textContent`); got != "Bank" {
		t.Errorf("the kind option reads %q, want the label Bank", got)
	}
	do(t, prov,
		chromedp.SendKeys(chromedp.ID("organisation"), "Polish Bank"),
		chromedp.SetValue(chromedp.ID("kind"), "bank"),
		chromedp.SendKeys(chromedp.ID("contact"), "Ada"),
		chromedp.SendKeys(chromedp.ID("email"), email),
		chromedp.SendKeys(chromedp.ID("password"), password))
	clickAndLoad(t, prov, "form.stack button[type=submit]")
	if got := steadyText(t, prov, "#signup-sent"); !strings.Contains(got, "confirmation link to "+email+".") {
		t.Errorf("the sign-up confirmation says %q; want it to name %s", got, email)
	}
	shot.take(prov, "phone-signup-done")
	u, err := p.w.Store.GetUserByEmail(ctx, email)
	if err != nil {
		t.Fatal(err)
	}
	id := u.ProviderID

	admin := newTab()
	do(t, admin, desktop)
	login(t, admin, base, p.adminEmail, p.adminPW)
	do(t, admin, chromedp.Navigate(base+"/admin"))
	if got := steadyText(t, admin, "body"); !strings.Contains(got, "1 provider sign-up waits for approval") {
		t.Errorf("dashboard: %q; want \"1 provider sign-up waits for approval\"", got)
	}
	do(t, admin, chromedp.Navigate(base+"/admin/providers"))
	row := `#providers tr[data-provider="` + id + `"]`
	if got := steadyText(t, admin, row); !strings.Contains(got, "not confirmed yet") || !strings.Contains(got, "Bank") || strings.Contains(got, "bank\t") {
		t.Errorf("providers row %q; want the kind label and the address not confirmed yet", got)
	}
	if n := eval[int](t, admin, `document.querySelectorAll('button[data-approve="`+email+`"]').length`); n != 0 {
		t.Error("an unconfirmed provider has an Approve button")
	}
	if n := eval[int](t, admin, `document.querySelectorAll('[data-unapprovable="`+email+`"]').length`); n != 1 {
		t.Error("the row does not say why the provider cannot be approved")
	}
	shot.take(admin, "desktop-providers-unconfirmed")
	// The server refuses the approval a stale page (or a hand-made POST) asks for.
	answer, err := chromedp.Run(admin, chromedp.Evaluate[string](`fetch("/admin/providers/`+id+`/approve", {method: "POST", body: new URLSearchParams({csrf: document.querySelector("input[name=csrf]").value})}).then(r => r.text())`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(answer, "cannot be approved yet") {
		t.Errorf("a forced approval of an unconfirmed provider answers:\n%.400s", answer)
	}
	if pr, _ := p.w.Store.GetProvider(ctx, id); pr.Status != keyport.ProviderPending {
		t.Fatalf("the unconfirmed provider is %s", pr.Status)
	}

	// The outbox: the recipient links to the provider, the topic filters.
	do(t, admin, chromedp.Navigate(base+"/admin/outbox"))
	shot.take(admin, "desktop-outbox")
	clickAndLoad(t, admin, `a.mail-to[href$="#provider-`+id+`"]`)
	if got := location(t, admin); !strings.HasSuffix(got, "/admin/providers#provider-"+id) {
		t.Errorf("the outbox recipient leads to %s", got)
	}
	do(t, admin, chromedp.Navigate(base+"/admin/outbox"))
	clickAndLoad(t, admin, "a.outbox-topic")
	if got := steadyText(t, admin, "#outbox-topics"); !strings.HasSuffix(location(t, admin), "?topic=email") || !strings.Contains(got, "Show all") {
		t.Errorf("after the topic link: %s, %q", location(t, admin), got)
	}

	// Confirmed, approved: the notice names the provider.
	do(t, prov, chromedp.Navigate(p.mailedLink(t, email)))
	clickAndLoad(t, prov, "#confirm")
	do(t, admin, chromedp.Navigate(base+"/admin/providers"))
	if got := steadyText(t, admin, row+" .email-state"); got != "confirmed" {
		t.Errorf("after confirming the row says %q", got)
	}
	clickAndLoad(t, admin, `button[data-approve="`+email+`"]`)
	if got := steadyText(t, admin, ".flash"); got != "Polish Bank is now approved." {
		t.Errorf("approval notice %q; want the provider's name", got)
	}

	// The provider's pages: fingerprint, KVN, plural, commands.
	login(t, prov, base, email, password)
	key := fixture.RSAKeys()[0]
	do(t, prov, chromedp.Navigate(base+"/portal/keys"), chromedp.SetValue(chromedp.ID("pem"), string(fixture.PublicPEM(key))))
	clickAndLoad(t, prov, "#register-key")
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	sum := sha256.Sum256(der)
	if got := eval[int](t, prov, `document.querySelectorAll("#keys .fingerprint .grp").length`); got != 16 {
		t.Errorf("the fingerprint has %d groups, want 16", got)
	}
	if got := steadyText(t, prov, "#keys .fingerprint"); strings.ReplaceAll(got, ":", "") != hex.EncodeToString(sum[:]) {
		t.Errorf("fingerprint %q", got)
	}
	e := fixture.EID(t, 1)
	do(t, prov, chromedp.Navigate(base+"/portal/modules?eid="+string(e)))
	if got := steadyText(t, prov, "#module-domains td.kvn"); got != "0x30" {
		t.Errorf("lookup KVN %q, want 0x30", got)
	}
	clickAndLoad(t, prov, "#module-domains a.button")
	clickAndLoad(t, prov, "#confirm-claim")
	domainPage := location(t, prov)
	if got := steadyText(t, prov, "dd.kvn"); got != "0x30" {
		t.Errorf("domain page KVN %q, want 0x30", got)
	}
	want := "keyport sp script --package pkg.json --key sp.pem --jwks jwks.json --generate --counter 0 --out script.json"
	if got := steadyText(t, prov, "#script-command"); got != want {
		t.Errorf("script command %q, want %q", got, want)
	}
	do(t, prov, chromedp.Click(chromedp.CSS(`button[data-copy="script-command"]`)))
	if got := eval[string](t, prov, `window.getSelection().toString().replace(/\s+/g, " ").trim()`); got != want {
		t.Errorf("the copy button selected %q", got)
	}
	if _, err := chromedp.Run(prov, chromedp.WaitVisible(chromedp.CSS(`#script-command ~ .copy-status`))); err != nil {
		t.Fatal(err)
	}
	do(t, prov, chromedp.Navigate(base+"/portal"))
	if got := steadyText(t, prov, "#domains caption"); !strings.HasPrefix(got, "1 domain,") {
		t.Errorf("dashboard caption %q", got)
	}
	if got := steadyText(t, prov, "#domains td.kvn"); got != "0x30" {
		t.Errorf("dashboard KVN %q", got)
	}

	// The bad-EID messages as you type are the server's, word for word.
	good := string(fixture.EID(t, 0))
	for _, bad := range []string{"8904 9032", good[:31] + "A", good[:31] + string('0'+(good[31]-'0'+1)%10)} {
		_, perr := keyport.ParseEID(bad)
		var ie *keyport.InvalidError
		if !errors.As(perr, &ie) {
			t.Fatalf("ParseEID(%q): %v", bad, perr)
		}
		do(t, prov, chromedp.Navigate(base+"/portal/modules"), chromedp.SendKeys(chromedp.ID("eid"), bad))
		if got := steadyText(t, prov, "#eid-error"); got != ie.Reason {
			t.Errorf("typing %q the page says %q, the server %q", bad, got, ie.Reason)
		}
		if strings.Contains(ie.Reason, "modulo") {
			t.Errorf("message %q", ie.Reason)
		}
	}
	if _, err := keyport.ParseEID(good[:31] + string('0'+(good[31]-'0'+1)%10)); err == nil || !strings.Contains(err.Error(), keyport.EIDCheckMessage) {
		t.Errorf("wrong check digits: %v", err)
	}

	// The console: owner by name, KVN, chart, import form.
	do(t, admin, chromedp.Navigate(base+"/admin/modules?eid="+string(e)))
	if got := steadyText(t, admin, "td.owner"); !strings.Contains(got, "Polish Bank") || !strings.Contains(got, id) {
		t.Errorf("owner cell %q; want the name, with the ID second", got)
	}
	if got := steadyText(t, admin, "td.kvn"); got != "0x30" {
		t.Errorf("console KVN %q", got)
	}
	do(t, admin, chromedp.Navigate(base+"/admin"))
	right := eval[float64](t, admin, `(() => { const ts = document.querySelectorAll("#claims-chart text"); const b = ts[ts.length-1].getBBox(); return b.x + b.width; })()`)
	if last := eval[string](t, admin, `[...document.querySelectorAll("#claims-chart text")].pop().textContent`); last != time.Now().UTC().Format("01-02") || right > 600.5 {
		t.Errorf("the chart's last label %q ends at %.1f of 600", last, right)
	}
	do(t, admin, chromedp.Navigate(base+"/admin/batches"))
	if n, inCell := eval[int](t, admin, `document.querySelectorAll("form[data-upload]").length`), eval[int](t, admin, `document.querySelectorAll("td form, td input[type=file]").length`); n == 0 || inCell != 0 {
		t.Errorf("%d import forms, %d form parts inside table cells", n, inCell)
	}

	// Both widths: no group split, no break-all, no sideways scrolling.
	pages := []struct {
		tab  context.Context
		path string
	}{
		{prov, "/portal"}, {prov, "/portal/keys"}, {prov, "/portal/modules?eid=" + string(e)}, {prov, strings.TrimPrefix(domainPage, base)},
		{admin, "/admin"}, {admin, "/admin/modules?eid=" + string(e)}, {admin, "/admin/providers"}, {admin, "/admin/batches"},
		{admin, "/admin/outbox"}, {admin, "/admin/jobs"}, {admin, "/admin/approvals"},
	}
	for _, width := range []int{390, 1280} {
		for _, tab := range []context.Context{prov, admin} {
			do(t, tab, chromedp.EmulateViewport(int64(width), 900))
		}
		wrappedAtPhone := 0
		for _, pg := range pages {
			do(t, pg.tab, chromedp.Navigate(base+pg.path))
			l := probeLayout(t, pg.tab)
			if len(l.Split) > 0 || len(l.BreakAll) > 0 || l.Sideways {
				t.Errorf("%d px %s: groups split %q, break-all on %q, scrolls sideways %v", width, pg.path, l.Split, l.BreakAll, l.Sideways)
			}
			if pg.path == strings.TrimPrefix(domainPage, base) && l.Groups < 3 {
				t.Errorf("%d px domain page: %d grouped values, want the EID and two commands", width, l.Groups)
			}
			wrappedAtPhone += l.Wrapped
			shot.take(pg.tab, fmt.Sprintf("%d%s", width, strings.NewReplacer("/", "-", "?", "-", "=", "-").Replace(pg.path))[:min(40, len(fmt.Sprintf("%d%s", width, pg.path)))])
		}
		t.Logf("%d px: grouped values wrapping between groups: %d", width, wrappedAtPhone)
		if width == 390 && wrappedAtPhone == 0 {
			t.Error("at 390 px no grouped value wraps at all: the check above measured nothing")
		}
	}
}
