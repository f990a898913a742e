package web_test

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// Dual control end to end in two browsers: admin A asks for a module's PSK,
// cannot approve the request, admin B approves it in another browser
// context, A executes it once and sees the PSK once, and the audit trail
// names each step's admin.
func TestBrowserAPSKExportNeedsASecondAdminAndIsShownOnceToTheRequester(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	ctx := context.Background()
	p.w.Svc.DualControl = keyport.DualControl{Admins: 2}
	pwB := fixture.AdminUser(ctx, t, p.w.Svc, "second@issuer.example")
	eid := string(fixture.EID(t, 0))

	a := newTab()
	login(t, a, p.srv.URL, p.adminEmail, p.adminPW)
	do(t, a, chromedp.Navigate(p.srv.URL+"/admin/approvals"),
		chromedp.SetValue(chromedp.ID("action"), string(keyport.ActionPSKExport)),
		chromedp.SendKeys(chromedp.ID("target"), eid),
		chromedp.SendKeys(chromedp.ID("reason"), "handset agent for the pilot"))
	clickAndLoad(t, a, `form[action="/admin/approvals"] button[type=submit]`)
	waitText(t, a, "body", "another admin approves it")
	reqs, err := p.w.Svc.ListApprovals(ctx, fixture.Admin, 10)
	if err != nil || len(reqs) != 1 {
		t.Fatalf("requests: %+v %v", reqs, err)
	}
	id := reqs[0].ID
	shot.take(a, "requested")
	row := text(t, a, "#apr-"+id)
	if strings.Contains(row, "Approve") || !strings.Contains(row, "pending") {
		t.Fatalf("the requester's row offers approval or is not pending: %q", row)
	}
	// Posting the approval anyway (the form is not on A's page) is refused.
	status, err := chromedp.Run(a, chromedp.Evaluate[int](`(async () => {
		const csrf = document.querySelector('input[name=csrf]').value;
		const r = await fetch('/admin/approvals/`+id+`/approve', {method: 'POST',
			headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf=' + encodeURIComponent(csrf)});
		return r.status;
	})()`, chromedp.EvalAwaitPromise))
	if err != nil || status != 409 {
		t.Fatalf("A approves A's own request: status %d, %v; want 409", status, err)
	}

	b := newTab()
	login(t, b, p.srv.URL, "second@issuer.example", pwB)
	do(t, b, chromedp.Navigate(p.srv.URL+"/admin/approvals"))
	if row := text(t, b, "#apr-"+id); strings.Contains(row, "Execute") {
		t.Fatalf("the approver may execute: %q", row)
	}
	clickAndLoad(t, b, "#apr-"+id+` form[action$="/approve"] button`)
	waitText(t, b, "#apr-"+id, "approved")
	shot.take(b, "approved")

	do(t, a, chromedp.Navigate(p.srv.URL+"/admin/approvals"))
	clickAndLoad(t, a, "#apr-"+id+` form[action$="/execute"] button`)
	got := strings.TrimSpace(text(t, a, "#result-value"))
	if want := hex.EncodeToString(p.w.HandshakePSK(t, fixture.EID(t, 0))); got != want {
		t.Fatalf("shown PSK %q, want the module's", got)
	}
	shot.take(a, "executed")
	// Once: the row says executed and offers nothing more.
	do(t, a, chromedp.Navigate(p.srv.URL+"/admin/approvals"))
	if row := text(t, a, "#apr-"+id); !strings.Contains(row, "executed") || strings.Contains(row, "Execute") {
		t.Fatalf("after execution the row is %q", row)
	}
	if body := bodyText(t, a); strings.Contains(body, got) {
		t.Fatal("the PSK is shown again")
	}
	if n := p.w.CountAudit(t, "module.psk-export"); n != 1 {
		t.Fatalf("%d exports, want 1", n)
	}
	evs, _ := p.w.Store.AuditEvents(ctx, 0, 1000)
	var steps []string
	for _, e := range evs {
		if e.Object == "approval:"+id {
			steps = append(steps, e.Action+" "+e.Actor)
		}
	}
	want := "approval.request admin:" + p.adminEmail + ",approval.approve admin:second@issuer.example,approval.execute admin:" + p.adminEmail
	if strings.Join(steps, ",") != want {
		t.Fatalf("audit trail %v, want %s", steps, want)
	}
}
