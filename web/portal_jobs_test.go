package web_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// waitText polls an element's text until it contains want.
func waitText(t *testing.T, ctx context.Context, sel, want string) string {
	t.Helper()
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if got = s; err == nil && strings.Contains(s, want) {
			return s
		}
	}
	t.Fatalf("%s says %q, never %q", sel, got, want)
	return ""
}

func TestBrowserJobPageFollowsTheJobLiveAndShowsTheCardsTranscript(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 2)
	shot := newShots(t)
	ctx := context.Background()
	pr := p.approvedProvider(t, "Live Bank", "ops@live.example", "a long enough password")
	wk, err := p.w.Svc.RegisterWrappingKey(ctx, pr, fixture.PublicPEM(fixture.RSAKeys()[0]))
	if err != nil {
		t.Fatal(err)
	}
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := p.w.Svc.Claim(ctx, pr, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk.ID}); err != nil {
		t.Fatal(err)
	}
	tab := newTab()
	login(t, tab, p.srv.URL, "ops@live.example", "a long enough password")

	// A script that is not keyport sp script's JSON is refused by the field.
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/domains/"+string(eid)+"/"+string(aid)),
		chromedp.SetValue(chromedp.ID("script"), `{"apdus": "not a list"}`))
	clickAndLoad(t, tab, "#send-script")
	if got := text(t, tab, "#script-error"); !strings.Contains(got, "not the JSON") {
		t.Fatalf("script error %q", got)
	}
	shot.take(tab, "script-refused")

	// The module side (card-link) moves a job on; the open page follows.
	d, _ := p.w.Store.GetDomain(ctx, eid, aid)
	j := &keyport.Job{Ref: keyport.NewID("job"), Kind: keyport.JobSecondKey, DomainID: d.ID, ModuleID: d.ModuleID,
		ProviderID: pr.ProviderID, State: keyport.JobQueued, NextRunAt: time.Now(),
		SecondKey: &keyport.SecondKeyPayload{EID: eid, AID: aid, APDUs: []string{"80500000"}, PutKey: 0, InitUpdate: -1,
			Expect: keyport.Expectation{KVN: 49, KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "AAAAAA", keyport.UsageMAC: "BBBBBB", keyport.UsageDEK: "CCCCCC"}}}}
	if err := p.w.Store.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/jobs/"+j.Ref))
	waitText(t, tab, "#job-state", "QUEUED")
	shot.take(tab, "job-queued")
	j.State, j.Attempts = keyport.JobSent, 1
	if err := p.w.Store.UpdateJob(ctx, j, keyport.JobQueued, 0); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "#job-state", "SENT")
	j.State, j.Result = keyport.JobDone, &keyport.ScriptResult{ScriptStatus: "ok", Responses: []string{"00112233445566778899AABB9000", "9000"}, Confirmed: true}
	if err := p.w.Store.UpdateJob(ctx, j, keyport.JobSent, 1); err != nil {
		t.Fatal(err)
	}
	waitText(t, tab, "#job-state", "DONE")
	waitText(t, tab, "#job-transcript", "00112233445566778899AABB9000")
	waitText(t, tab, "#job-result", "the card confirmed your new keys")
	shot.take(tab, "job-done")

	admin := newTab()
	login(t, admin, p.srv.URL, p.adminEmail, p.adminPW)
	do(t, admin, chromedp.Navigate(p.srv.URL+"/admin/jobs"))
	if got := text(t, admin, "#jobs"); !strings.Contains(got, j.Ref) || !strings.Contains(got, "DONE") {
		t.Fatalf("admin jobs list %q", got)
	}
	shot.take(admin, "admin-jobs")
}
