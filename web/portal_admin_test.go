package web_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport/internal/fixture"
)

func TestBrowserAdminImportsAManufacturerFileWithUploadProgressAndFindsTheNewModule(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	eid := fixture.EID(t, 77)
	file := filepath.Join(t.TempDir(), "modules.jsonl")
	if err := os.WriteFile(file, []byte(p.w.ImportLine(t, eid, 2, "")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	admin := newTab()
	login(t, admin, p.srv.URL, p.adminEmail, p.adminPW)
	do(t, admin, chromedp.Navigate(p.srv.URL+"/admin/batches"),
		chromedp.SetUploadFiles(chromedp.ID("file-b1"), []string{file}),
		chromedp.SetValue(chromedp.ID("verify-b1"), "all"),
		chromedp.Click(chromedp.CSS(`form[data-upload] button[type=submit]`)))
	// The page's script uploads with XMLHttpRequest (progress bar) and
	// shows the page the import redirects to.
	waitText(t, admin, "body", "Imported 1 module into batch b1")
	shot.take(admin, "imported")
	if m, err := p.w.Store.GetModule(context.Background(), eid); err != nil || len(m.Domains) != 2 {
		t.Fatalf("imported module: %+v %v", m, err)
	}
	do(t, admin, chromedp.Navigate(p.srv.URL+"/admin/modules?eid="+string(eid)))
	if got := bodyText(t, admin); !strings.Contains(got, string(fixture.AID(2))) {
		t.Fatalf("module page: %q", got)
	}
	shot.take(admin, "module")
}
