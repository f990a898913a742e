package web_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/url"
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

// queuedSecondKeyJob claims a domain for pr and queues a second-key job on
// it, as SubmitScript would; no module connects, so it stays queued.
func queuedSecondKeyJob(t *testing.T, p *portal, pr keyport.Principal) string {
	t.Helper()
	ctx := context.Background()
	wk, err := p.w.Svc.RegisterWrappingKey(ctx, pr, fixture.PublicPEM(fixture.RSAKeys()[0]))
	if err != nil {
		t.Fatal(err)
	}
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := p.w.Svc.Claim(ctx, pr, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk.ID}); err != nil {
		t.Fatal(err)
	}
	d, err := p.w.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	j := &keyport.Job{Ref: keyport.NewID("job"), Kind: keyport.JobSecondKey, DomainID: d.ID, ModuleID: d.ModuleID,
		ProviderID: pr.ProviderID, State: keyport.JobQueued, NextRunAt: time.Now(),
		SecondKey: &keyport.SecondKeyPayload{EID: eid, AID: aid, APDUs: []string{"80500000"}, PutKey: 0, InitUpdate: -1,
			Expect: keyport.Expectation{KVN: 49, KCV: map[keyport.KeyUsage]string{keyport.UsageENC: "AAAAAA", keyport.UsageMAC: "BBBBBB", keyport.UsageDEK: "CCCCCC"}}}}
	if err := p.w.Store.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	return j.Ref
}

// An open job stream is no way around signing out: once the session is
// gone, the stream ends and sends nothing read after it.
func TestTheJobEventStreamEndsWhenTheSessionIsSignedOut(t *testing.T) {
	p := startPortal(t, 1, 1)
	pr := p.approvedProvider(t, "Stream Bank", "ops@stream.example", "a long enough password")
	cl, csrf := signedIn(t, p.srv.URL, "ops@stream.example", "a long enough password")
	ref := queuedSecondKeyJob(t, p, pr)

	resp, err := cl.Get(p.srv.URL + "/portal/jobs/" + ref + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	first, err := rd.ReadString('\n')
	if resp.StatusCode != http.StatusOK || err != nil || first != "event: job\n" {
		t.Fatalf("events: %d, first line %q (%v)", resp.StatusCode, first, err)
	}

	// The same browser signs out; then the job changes.
	if status, _, _ := postForm(t, cl, p.srv.URL+"/logout", url.Values{"csrf": {csrf}}); status != http.StatusSeeOther {
		t.Fatalf("sign out: %d", status)
	}
	if _, err := p.w.Svc.CancelJob(context.Background(), pr, ref); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(rd) // the server ends the stream: no deadline here
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rest), string(keyport.JobCancelled)) {
		t.Fatalf("the stream sent the job's change after sign-out: %q", rest)
	}
	if !strings.HasSuffix(string(rest), "event: end\ndata: {}\n\n") {
		t.Fatalf("the stream did not end with an end event: %q", rest)
	}
}
