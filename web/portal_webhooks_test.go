package web_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// The admin's providers page shows each provider's webhook delivery: how
// many events wait, the last delivery and the last failure with its error.
func TestBrowserAdminSeesEachProvidersWebhookDeliveryHealth(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	ctx := context.Background()
	healthy, _, _ := p.w.Provider(t, "Healthy Bank", fixture.RSAKeys()[0])
	failing, _, _ := p.w.Provider(t, "Failing Bank", fixture.RSAKeys()[0])
	for pr, url := range map[keyport.Principal]string{healthy: "https://hooks.healthy.example/keyport", failing: "https://hooks.failing.example/keyport"} {
		if _, err := p.w.Svc.SetWebhook(ctx, pr, url); err != nil {
			t.Fatal(err)
		}
	}
	queue := func(pr keyport.Principal) {
		t.Helper()
		exp := time.Now().Add(time.Hour)
		if err := p.w.Store.CreateJob(ctx, &keyport.Job{Ref: keyport.NewID("job"), Kind: keyport.JobWebhook, ProviderID: pr.ProviderID,
			State: keyport.JobQueued, NextRunAt: time.Now().Add(-time.Second), ExpiresAt: &exp, Event: []byte(`{"id":"evt"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	queue(healthy)
	queue(failing)
	hooks, err := p.w.Svc.ClaimWebhooks(ctx, 10)
	if err != nil || len(hooks) != 2 {
		t.Fatalf("claimed %d: %v", len(hooks), err)
	}
	for i := range hooks {
		var sendErr error
		if hooks[i].Job.ProviderID == failing.ProviderID {
			sendErr = errors.New("webhook POST: 503 Service Unavailable")
		}
		if err := p.w.Svc.WebhookSent(ctx, &hooks[i], sendErr); err != nil {
			t.Fatal(err)
		}
	}
	queue(failing) // one more waiting

	admin := newTab()
	login(t, admin, p.srv.URL, p.adminEmail, p.adminPW)
	do(t, admin, chromedp.Navigate(p.srv.URL+"/admin/providers"))
	cell := func(pr keyport.Principal, col int) string {
		return strings.TrimSpace(text(t, admin, `#webhook-health tr[data-provider="`+pr.ProviderID+`"] td:nth-child(`+string(rune('0'+col))+`)`))
	}
	if got := cell(healthy, 2); got != "https://hooks.healthy.example/keyport" {
		t.Errorf("healthy provider's URL %q", got)
	}
	if q, ok, failed := cell(healthy, 3), cell(healthy, 4), cell(healthy, 5); q != "0" || !strings.HasSuffix(ok, "UTC") || failed != "—" {
		t.Errorf("healthy provider: queued %q, last delivered %q, last failure %q", q, ok, failed)
	}
	if q, ok, failed := cell(failing, 3), cell(failing, 4), cell(failing, 5); q != "2" || ok != "—" ||
		!strings.Contains(failed, "UTC") || !strings.Contains(failed, "webhook POST: 503 Service Unavailable") {
		t.Errorf("failing provider: queued %q, last delivered %q, last failure %q", q, ok, failed)
	}
}
