package web_test

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// Every visible form control of the page has a <label for>, and the page
// does not scroll sideways at 390 px (a phone).
const usabilityProbe = `(() => {
  const bad = [];
  for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    if (!el.id || !document.querySelector('label[for="' + el.id + '"]')) bad.push("unlabelled " + (el.name || el.outerHTML.slice(0, 40)));
  }
  if (document.documentElement.scrollWidth > document.documentElement.clientWidth + 1) {
    bad.push("scrolls sideways: " + document.documentElement.scrollWidth + " > " + document.documentElement.clientWidth);
  }
  return bad.join("; ");
})()`

func TestBrowserPagesHaveLabelsFitAPhoneScreenAndShowKeyboardFocus(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 2)
	shot := newShots(t)
	p.approvedProvider(t, "Phone Bank", "ops@phone.example", "a long enough password")
	tab := newTab()
	do(t, tab, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	check := func(path string) {
		t.Helper()
		do(t, tab, chromedp.Navigate(p.srv.URL+path))
		problems, err := chromedp.Run(tab, chromedp.Evaluate[string](usabilityProbe))
		if err != nil {
			t.Fatal(err)
		}
		if problems != "" {
			t.Errorf("%s: %s", path, problems)
		}
		shot.take(tab, "phone"+strings.NewReplacer("/", "-", "?", "-", "=", "-").Replace(path))
	}
	check("/signup")
	check("/login")
	check("/reset")

	// Keyboard: the first Tab reaches the skip link, and focus is drawn.
	do(t, tab, chromedp.Navigate(p.srv.URL+"/login"), chromedp.KeyEvent(kb.Tab))
	focus, err := chromedp.Run(tab, chromedp.Evaluate[string](
		`document.activeElement.className + "|" + getComputedStyle(document.activeElement).outlineStyle`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(focus, "skip|") || strings.HasSuffix(focus, "|none") {
		t.Fatalf("after one Tab the focus is %q: want the visible skip link", focus)
	}

	login(t, tab, p.srv.URL, "ops@phone.example", "a long enough password")
	for _, path := range []string{"/portal", "/portal/keys", "/portal/modules?eid=1234", "/portal/tokens", "/portal/webhook", "/portal/audit"} {
		check(path)
	}
	admin := newTab()
	do(t, admin, chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	login(t, admin, p.srv.URL, p.adminEmail, p.adminPW)
	tab = admin
	for _, path := range []string{"/admin", "/admin/batches", "/admin/providers", "/admin/modules", "/admin/jobs", "/admin/hsm"} {
		check(path)
	}
}
