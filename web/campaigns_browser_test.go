package web_test

import (
	"context"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// TestAProviderStartsALockCampaignFromThePortalInChromium: in the browser,
// the provider opens the campaigns page, opens the form, sends a rate that
// is out of range (the page comes back with the message and the EIDs as
// typed), corrects it and lands on the new campaign's page with its notice.
func TestAProviderStartsALockCampaignFromThePortalInChromium(t *testing.T) {
	p := startPortal(t, 2, 2)
	a := p.approvedProvider(t, "Browser Bank", "ops@browser.example", "a long enough password")
	tab := browser(t)
	shots := newShots(t)
	ctx := tab()
	login(t, ctx, p.srv.URL, "ops@browser.example", "a long enough password")
	eid := string(fixture.EID(t, 0))
	do(t, ctx, chromedp.Navigate(p.srv.URL+"/portal/campaigns"), chromedp.Click(chromedp.CSS("#start summary")),
		chromedp.WaitVisible(chromedp.CSS("#new-campaign")),
		chromedp.SetValue(chromedp.ID("op"), "lock"),
		chromedp.SendKeys(chromedp.ID("eids"), eid),
		chromedp.SendKeys(chromedp.ID("rate"), "5000"))
	shots.take(ctx, "campaign form")
	clickAndLoad(t, ctx, "#start-campaign")
	if got := text(t, ctx, "#rate-error"); !strings.Contains(got, "1..1000") {
		t.Fatalf("rate error %q", got)
	}
	if got, err := chromedp.Run(ctx, chromedp.Value(chromedp.CSS("#eids"))); err != nil || !strings.Contains(got, eid) {
		t.Fatalf("the EIDs were not kept: %q", got)
	}
	shots.take(ctx, "campaign form refused")
	do(t, ctx, chromedp.SetValue(chromedp.ID("rate"), "5"))
	clickAndLoad(t, ctx, "#start-campaign")
	if loc := location(t, ctx); !strings.Contains(loc, "/portal/campaigns/cmp_") {
		t.Fatalf("after the start: %s", loc)
	}
	if body := bodyText(t, ctx); !strings.Contains(body, "started over 1 domain") {
		t.Fatalf("campaign page: %.800s", body)
	}
	shots.take(ctx, "campaign started")
	l, err := p.w.Svc.ListCampaigns(context.Background(), a, 0)
	if err != nil || len(l) != 1 || l[0].Op != keyport.CampaignLock || l[0].Rate != 5 {
		t.Fatalf("campaigns: %+v %v", l, err)
	}
}
