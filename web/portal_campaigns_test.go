package web_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// The provider's portal shows its own campaigns with their progress and
// failure report, and pauses, resumes and cancels them; another provider's
// campaign is not found. The issuer's console shows every campaign.
func TestCampaignPagesShowProgressAndControlOnlyOwnCampaigns(t *testing.T) {
	p := startPortal(t, 2, 1)
	ctx := context.Background()
	a := p.approvedProvider(t, "Campaign Bank", "ops@campaign.example", "a long enough password")
	b := p.approvedProvider(t, "Other Bank", "ops@other.example", "another long password")
	eid := string(fixture.EID(t, 0))
	mine, err := p.w.Svc.CreateCampaign(ctx, a, keyport.CampaignRequest{Op: keyport.CampaignLock, Targets: keyport.CampaignTargets{EIDs: []string{eid}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := p.w.Svc.CreateCampaign(ctx, b, keyport.CampaignRequest{Op: keyport.CampaignUnlock, Targets: keyport.CampaignTargets{EIDs: []string{eid}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ps := signInPages(t, p.srv.URL, "ops@campaign.example", "a long enough password")
	if st, body := ps.get("/portal/campaigns"); st != 200 || !strings.Contains(body, mine.ID) || strings.Contains(body, theirs.ID) {
		t.Fatalf("list %d: mine shown %v, theirs shown %v", st, strings.Contains(body, mine.ID), strings.Contains(body, theirs.ID))
	} else if !strings.Contains(body, `class="started-by">ops@campaign.example<`) {
		t.Fatalf("the portal's list does not name who started the campaign: %.3000s", body)
	}
	page := "/portal/campaigns/" + mine.ID
	st, body := ps.get(page)
	if st != 200 || !strings.Contains(body, `id="count-REFUSED">1<`) || !strings.Contains(body, "not yours") || !strings.Contains(body, `id="pause"`) {
		t.Fatalf("campaign page %d: %.2000s", st, body)
	}
	// Started by the address the provider signed in with, not an ID.
	if !strings.Contains(body, `id="campaign-started-by">ops@campaign.example, `) {
		t.Fatalf("the portal's campaign page does not name who started it: %.2000s", body)
	}
	if st, _ := ps.get("/portal/campaigns/" + theirs.ID); st != http.StatusNotFound {
		t.Fatalf("another's campaign: %d", st)
	}
	if st, _ := ps.post("/portal/campaigns/"+theirs.ID+"/cancel", url.Values{}); st != http.StatusNotFound {
		t.Fatalf("cancel another's campaign: %d", st)
	}
	if v, _ := p.w.Svc.GetCampaign(ctx, b, theirs.ID); v.State != keyport.CampaignRunning {
		t.Fatalf("another's campaign is %s", v.State)
	}
	if st, _ := ps.post(page+"/pause", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("pause: %d", st)
	}
	if _, body := ps.get(page); !strings.Contains(body, `id="campaign-state">PAUSED<`) || !strings.Contains(body, `id="resume"`) {
		t.Fatal("not paused on the page")
	}
	ps.post(page+"/pause", url.Values{})
	if _, body := ps.get(page); !strings.Contains(body, "Not done") {
		t.Fatal("a second pause is not refused on the page")
	}
	if st, _ := ps.post(page+"/cancel", url.Values{}); st != http.StatusSeeOther {
		t.Fatalf("cancel: %d", st)
	}
	if v, _ := p.w.Svc.GetCampaign(ctx, a, mine.ID); v.State != keyport.CampaignCancelled {
		t.Fatalf("after cancel: %s", v.State)
	}
	ad := signInPages(t, p.srv.URL, p.adminEmail, p.adminPW)
	if st, body := ad.get("/admin/campaigns"); st != 200 || !strings.Contains(body, mine.ID) || !strings.Contains(body, theirs.ID) {
		t.Fatalf("console list %d", st)
	} else if !strings.Contains(body, `class="started-by">Campaign Bank, ops@campaign.example<`) ||
		!strings.Contains(body, `class="started-by">Other Bank, ops@other.example<`) {
		t.Fatalf("the console's list does not name each campaign's provider and who started it: %.3000s", body)
	}
	if st, body := ad.get("/admin/campaigns/" + theirs.ID); st != 200 || !strings.Contains(body, `id="campaign-op">unlock<`) ||
		!strings.Contains(body, `id="campaign-started-by">Other Bank, ops@other.example, `) {
		t.Fatalf("console campaign %d (the provider named by name?): %.2000s", st, body)
	}
}

// TestCampaignsStartFromThePortalAndTheConsoleAndBadInputKeepsTheForm: the
// list page's form starts a campaign as the API does (a provider's over
// EIDs, the issuer's over a batch); a bad number, a rule campaign without
// its rule, or a provider's operation in the console come back with the
// form as sent and store nothing.
func TestCampaignsStartFromThePortalAndTheConsoleAndBadInputKeepsTheForm(t *testing.T) {
	p := startPortal(t, 2, 2)
	ctx := context.Background()
	a := p.approvedProvider(t, "Form Bank", "ops@form.example", "a long enough password")
	eid := string(fixture.EID(t, 0))
	count := func(pr keyport.Principal) int {
		l, err := p.w.Svc.ListCampaigns(ctx, pr, 0)
		if err != nil {
			t.Fatal(err)
		}
		return len(l)
	}
	ps := signInPages(t, p.srv.URL, "ops@form.example", "a long enough password")
	if st, body := ps.get("/portal/campaigns"); st != 200 || !strings.Contains(body, `id="new-campaign"`) || !strings.Contains(body, `value="access-rule.add"`) {
		t.Fatalf("portal list %d: %.1500s", st, body)
	}
	st, body := ps.post("/portal/campaigns", url.Values{"op": {"lock"}, "target": {"eids"}, "eids": {eid + "\n"}, "rate": {"fast"}})
	if st != http.StatusUnprocessableEntity || !strings.Contains(body, "a whole number") || !strings.Contains(body, eid) || count(a) != 0 {
		t.Fatalf("a bad rate: %d, %d campaigns: %.1500s", st, count(a), body)
	}
	st, body = ps.post("/portal/campaigns", url.Values{"op": {"access-rule.add"}, "target": {"all"}, "apdu": {"always"}})
	if st != http.StatusUnprocessableEntity || count(a) != 0 {
		t.Fatalf("a rule campaign without its rule: %d, %d campaigns: %.1500s", st, count(a), body)
	}
	if st, _ := ps.post("/portal/campaigns", url.Values{"op": {"lock"}, "target": {"eids"}, "eids": {eid}, "rate": {"5"}, "busy": {"skip"}}); st != http.StatusSeeOther {
		t.Fatalf("start: %d", st)
	}
	l, _ := p.w.Svc.ListCampaigns(ctx, a, 0)
	if len(l) != 1 || l[0].Op != keyport.CampaignLock || l[0].Rate != 5 || l[0].Busy != keyport.BusySkip || l[0].Total != 1 {
		t.Fatalf("started: %+v", l)
	}
	if _, body := ps.get("/portal/campaigns/" + l[0].ID); !strings.Contains(body, "started over 1 domain.") {
		t.Fatalf("no notice on the campaign page: %.1500s", body)
	}

	// A batch campaign's targets are the batch's claimed domains.
	wk, err := p.w.Svc.RegisterWrappingKey(ctx, a, fixture.PublicPEM(fixture.RSAKeys()[0]))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.w.Svc.Claim(ctx, a, keyport.ClaimRequest{EID: keyport.EID(eid), WrappingKeyID: wk.ID}); err != nil {
		t.Fatal(err)
	}
	ad := signInPages(t, p.srv.URL, p.adminEmail, p.adminPW)
	if st, body := ad.get("/admin/campaigns"); st != 200 || !strings.Contains(body, `value="batch"`) || strings.Contains(body, `value="access-rule.add"`) {
		t.Fatalf("console list %d", st)
	}
	if st, _ := ad.post("/admin/campaigns", url.Values{"op": {"access-rule.add"}, "target": {"batch"}, "batch": {"b1"}}); st != http.StatusUnprocessableEntity || count(fixture.Admin) != 1 {
		t.Fatalf("a provider's operation in the console: %d", st)
	}
	if st, body := ad.post("/admin/campaigns", url.Values{"op": {"release"}, "target": {"batch"}, "batch": {"b1"}}); st != http.StatusSeeOther {
		t.Fatalf("console start: %d %.3000s", st, body)
	}
	all, _ := p.w.Svc.ListCampaigns(ctx, fixture.Admin, 0)
	if len(all) != 2 || (all[0].Op != keyport.CampaignRelease || all[0].Total != 1) && (all[1].Op != keyport.CampaignRelease || all[1].Total != 1) {
		t.Fatalf("console campaigns: %+v", all)
	}
}
