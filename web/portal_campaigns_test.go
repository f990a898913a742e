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
	}
	page := "/portal/campaigns/" + mine.ID
	st, body := ps.get(page)
	if st != 200 || !strings.Contains(body, `id="count-REFUSED">1<`) || !strings.Contains(body, "not yours") || !strings.Contains(body, `id="pause"`) {
		t.Fatalf("campaign page %d: %.2000s", st, body)
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
	}
	if st, body := ad.get("/admin/campaigns/" + theirs.ID); st != 200 || !strings.Contains(body, `id="campaign-op">unlock<`) {
		t.Fatalf("console campaign %d", st)
	}
}
