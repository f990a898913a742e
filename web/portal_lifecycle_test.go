package web_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

// The provider locks and unlocks its domain from the domain page, and
// releases it only with the confirm box ticked; the state changes only when
// the card confirms. The issuer's module page does the same for any domain.
// Refusals come back on the page and store nothing.
func TestPortalLockUnlockAndReleaseButtonsQueueIssuerJobsTheCardConfirms(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	ctx := context.Background()
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	ps := signInPages(t, srv.URL, w.Email, w.Password)
	page := "/portal/domains/" + string(w.EID) + "/" + string(w.AID)
	state := func() keyport.DomainState {
		t.Helper()
		d, err := w.Store.GetDomain(ctx, w.EID, w.AID)
		if err != nil {
			t.Fatal(err)
		}
		return d.State
	}
	jobs := func() int {
		t.Helper()
		js, err := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobIssuer, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		return len(js)
	}
	if st, body := ps.get(page); st != 200 || !strings.Contains(body, `id="lock"`) || !strings.Contains(body, `id="release"`) || strings.Contains(body, `id="unlock"`) {
		t.Fatalf("domain page %d lacks the lock and release forms", st)
	}

	st, _ := ps.post(page+"/lock", url.Values{})
	if st != http.StatusSeeOther {
		t.Fatalf("lock: %d", st)
	}
	if state() != keyport.Personalized {
		t.Fatalf("domain %s before the card confirmed the lock", state())
	}
	// A second card change while the first is pending is refused on the page.
	before := jobs()
	if st, _ := ps.post(page+"/release", url.Values{"confirm": {"yes"}}); st != http.StatusSeeOther {
		t.Fatalf("release while a lock is pending: %d", st)
	}
	if _, body := ps.get(page); !strings.Contains(body, "Not done, nothing was changed") || jobs() != before || state() != keyport.Personalized {
		t.Fatalf("a release during a pending lock was not refused on the page (jobs %d → %d, %s)", before, jobs(), state())
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if state() != keyport.Locked {
		t.Fatalf("domain %s after the card confirmed the lock", state())
	}
	if _, body := ps.get(page); !strings.Contains(body, `id="unlock"`) || strings.Contains(body, `id="release"`) {
		t.Fatal("a locked domain's page does not offer unlock (only)")
	}
	if st, _ := ps.post(page+"/unlock", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("unlock: %d", st)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if state() != keyport.Personalized {
		t.Fatalf("domain %s after the card confirmed the unlock", state())
	}

	// Release without the confirm box: refused, nothing queued.
	before = jobs()
	if st, _ := ps.post(page+"/release", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("unconfirmed release: %d", st)
	}
	if _, body := ps.get(page); !strings.Contains(body, "tick the box") || jobs() != before || state() != keyport.Personalized {
		t.Fatal("an unconfirmed release was not refused")
	}

	// The issuer locks the provider's domain from the module page; the
	// provider cannot unlock the issuer's lock.
	pw := fixture.AdminUser(ctx, t, w.Svc, "admin@issuer.example")
	admin := signInPages(t, srv.URL, "admin@issuer.example", pw)
	if _, body := admin.get("/admin/modules?eid=" + string(w.EID)); !strings.Contains(body, "/admin/domains/"+string(w.EID)+"/"+string(w.AID)+"/lock") {
		t.Fatal("the module page offers no lock for the domain")
	}
	st, _ = admin.post("/admin/domains/"+string(w.EID)+"/"+string(w.AID)+"/lock", url.Values{})
	if st != http.StatusSeeOther {
		t.Fatalf("admin lock: %d", st)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if state() != keyport.Locked {
		t.Fatalf("domain %s after the issuer's lock", state())
	}
	before = jobs()
	ps.post(page+"/unlock", url.Values{})
	if _, body := ps.get(page); !strings.Contains(body, "only the issuer unlocks it") || jobs() != before {
		t.Fatal("the provider's unlock of the issuer's lock was not refused on the page")
	}
	if st, _ := admin.post("/admin/domains/"+string(w.EID)+"/"+string(w.AID)+"/unlock", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("admin unlock: %d", st)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}

	// The confirmed release: RELEASING at once, UNASSIGNED once the card
	// proved the re-created domain; the provider loses it.
	if st, _ := ps.post(page+"/release", url.Values{"confirm": {"yes"}}); st != http.StatusSeeOther {
		t.Fatalf("release: %d", st)
	}
	if state() != keyport.Releasing {
		t.Fatalf("domain %s after the release request", state())
	}
	for i := 0; i < 4 && state() == keyport.Releasing; i++ {
		if _, err := w.Agent().Session(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if state() != keyport.Unassigned {
		t.Fatalf("domain %s after the release sessions", state())
	}
	if st, _ := ps.get(page); st != http.StatusNotFound {
		t.Fatalf("the former owner's domain page answers %d", st)
	}
}
