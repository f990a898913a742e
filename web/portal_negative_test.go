package web_test

import (
	"context"
	"encoding/base32"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// TestBrowserFiveWrongPasswordsLockTheAccountEvenForTheRightPasswordAndTellOnlyItsOwner:
// the page says to a locked account what it says to an unknown address, so
// that it does not tell a stranger who has an account; the owner learns of
// the lock, and when it ends, by e-mail.
func TestBrowserFiveWrongPasswordsLockTheAccountEvenForTheRightPasswordAndTellOnlyItsOwner(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	const email, password = "ops@locked.example", "the right passphrase"
	p.approvedProvider(t, "Locked Ltd", email, password)
	tab := newTab()
	for i := 1; i <= keyport.MaxFailedLogins; i++ {
		login(t, tab, p.srv.URL, email, "wrong password "+string(rune('0'+i)))
		got := bodyText(t, tab)
		if !strings.Contains(got, "Wrong e-mail address or password") || strings.Contains(got, "locked") {
			t.Fatalf("attempt %d says %q", i, got)
		}
		// The same words as for an unknown address: no count of attempts left.
		if strings.Contains(got, "attempts left") {
			t.Fatalf("attempt %d tells the attempts left: %q", i, got)
		}
	}
	shot.take(tab, "locked")
	p.w.Svc.Drain() // the notice is sent after the answer
	em, ok := p.w.Mail.Newest(email)
	if !ok || em.Subject != "Your keyport account is locked" || !strings.Contains(em.Body, "Forgot your password?") {
		t.Fatalf("after %d wrong passwords the owner got %+v", keyport.MaxFailedLogins, em)
	}
	login(t, tab, p.srv.URL, email, password)
	if got := bodyText(t, tab); !strings.Contains(got, "Wrong e-mail address or password") || strings.Contains(got, "locked") {
		t.Fatalf("the right password while locked gives %q", got)
	}
	if strings.Contains(location(t, tab), "/portal") {
		t.Fatal("a locked account was signed in")
	}
}

func TestBrowserInvalidEIDShowsAnInlineErrorAsYouTypeAndAfterSubmitting(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	p.approvedProvider(t, "Typo Bank", "ops@typo.example", "a long enough password")
	tab := newTab()
	login(t, tab, p.srv.URL, "ops@typo.example", "a long enough password")
	good := string(fixture.EID(t, 0))
	bad := good[:31] + string('0'+(good[31]-'0'+1)%10) // last check digit wrong
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/modules"), chromedp.SendKeys(chromedp.ID("eid"), bad))
	if got := text(t, tab, "#eid-error"); !strings.Contains(got, "check digits are wrong") {
		t.Fatalf("as-you-type message %q", got)
	}
	shot.take(tab, "eid-as-you-type")
	clickAndLoad(t, tab, "#lookup")
	if got := text(t, tab, "#eid-error"); !strings.Contains(got, "check digits are wrong") {
		t.Fatalf("server message next to the field %q", got)
	}
	if v, _ := chromedp.Run(tab, chromedp.AttributeValue(chromedp.ID("eid"), "aria-invalid")); v.Value != "true" {
		t.Fatalf("field aria-invalid=%q", v.Value)
	}
	shot.take(tab, "eid-after-submit")
}

func TestBrowserClaimingADomainTakenMeanwhileSaysSoAndChangesNothing(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 2)
	shot := newShots(t)
	ctx := context.Background()
	a, _, wkA := p.w.Provider(t, "Early Bird", fixture.RSAKeys()[0])
	p.approvedProvider(t, "Late Comer", "ops@late.example", "a long enough password")
	tab := newTab()
	login(t, tab, p.srv.URL, "ops@late.example", "a long enough password")
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/keys"), chromedp.SetValue(chromedp.ID("pem"), string(fixture.PublicPEM(fixture.RSAKeys()[0]))))
	clickAndLoad(t, tab, "#register-key")

	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/claim?eid="+string(eid)+"&aid="+string(aid)))
	// While the page is open, another provider takes the domain.
	if _, _, err := p.w.Svc.Claim(ctx, a, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wkA}); err != nil {
		t.Fatal(err)
	}
	auditBefore := p.w.CountAudit(t, "claim")
	clickAndLoad(t, tab, "#confirm-claim")
	shot.take(tab, "claim-conflict")
	if got := bodyText(t, tab); !strings.Contains(got, "no longer free") || !strings.Contains(got, "Nothing was changed") {
		t.Fatalf("the page says %q", got)
	}
	d, err := p.w.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	if d.OwnerID != a.ProviderID || d.State != keyport.Assigned || p.w.CountAudit(t, "claim") != auditBefore {
		t.Fatalf("domain after the refused claim: owner %s state %s", d.OwnerID, d.State)
	}
}

func TestBrowserFormPostedWithoutItsCSRFTokenIsRefusedWith403AndChangesNothing(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	pr := p.approvedProvider(t, "Forged Inc", "ops@forged.example", "a long enough password")
	tab := newTab()
	login(t, tab, p.srv.URL, "ops@forged.example", "a long enough password")
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/webhook"),
		chromedp.SendKeys(chromedp.ID("webhook_url"), "https://attacker.example/hook"),
		chromedp.Evaluate[chromedp.Void](`document.querySelector("form.stack input[name=csrf]").remove()`))
	resp, err := chromedp.RunResponse(tab, chromedp.Click(chromedp.CSS("form.stack button[type=submit]")))
	if err != nil {
		t.Fatal(err)
	}
	shot.take(tab, "csrf-refused")
	if resp.Status != 403 {
		t.Fatalf("status %d, want 403", resp.Status)
	}
	if got := bodyText(t, tab); !strings.Contains(got, "CSRF") {
		t.Fatalf("the page says %q", got)
	}
	prov, err := p.w.Store.GetProvider(context.Background(), pr.ProviderID)
	if err != nil || prov.WebhookURL != "" {
		t.Fatalf("webhook became %q (%v)", prov.WebhookURL, err)
	}
}

func TestAFormPostLargerThanAMegabyteIsRefusedBeforeItIsRead(t *testing.T) {
	p := startPortal(t, 1, 1)
	big := strings.NewReader("csrf=x&pem=" + strings.Repeat("A", 2<<20))
	resp, err := http.Post(p.srv.URL+"/signup", "application/x-www-form-urlencoded", big)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestBrowserLockedProviderResetsThePasswordThroughTheMailedLinkAndSignsIn(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	const email = "ops@forgetful.example"
	p.approvedProvider(t, "Forgetful Bank", email, "the old passphrase")
	tab := newTab()
	for i := 0; i < keyport.MaxFailedLogins; i++ {
		login(t, tab, p.srv.URL, email, "not it")
	}
	clickAndLoad(t, tab, `a[href="/reset"]`)
	do(t, tab, chromedp.SendKeys(chromedp.ID("email"), email))
	clickAndLoad(t, tab, "form.stack button[type=submit]")
	if got := bodyText(t, tab); !strings.Contains(got, "we sent it a link") {
		t.Fatalf("after asking for a reset: %q", got)
	}
	do(t, tab, chromedp.Navigate(p.mailedLink(t, email)), chromedp.SendKeys(chromedp.ID("password"), "a brand new passphrase"))
	shot.take(tab, "reset-confirm")
	clickAndLoad(t, tab, "form.stack button[type=submit]")
	login(t, tab, p.srv.URL, email, "a brand new passphrase")
	if got := location(t, tab); !strings.HasSuffix(got, "/portal") {
		t.Fatalf("after the reset the new password leads to %s: %q", got, bodyText(t, tab))
	}
}

func TestBrowserProviderTurnsOnTOTPAndThenSignInAsksForTheCode(t *testing.T) {
	newTab := browser(t)
	p := startPortal(t, 1, 1)
	shot := newShots(t)
	const email, password = "ops@careful.example", "a careful passphrase"
	p.approvedProvider(t, "Careful Bank", email, password)
	tab := newTab()
	login(t, tab, p.srv.URL, email, password)
	do(t, tab, chromedp.Navigate(p.srv.URL+"/portal/security"))
	clickAndLoad(t, tab, "main form button[type=submit]")
	secret := text(t, tab, "#totp-secret")
	shot.take(tab, "totp-enrol")
	seed, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret)
	if err != nil {
		t.Fatalf("secret %q: %v", secret, err)
	}
	// The current step's code confirms; the sign-in below uses the next
	// step's (accepted for clock drift), because the code that confirms
	// enrolment may not sign in as well. A code of the next step stays
	// good across a step edge crossed while the browser types it; one of
	// the previous step would not.
	// Turning it on takes the current password in the same form.
	do(t, tab, chromedp.SendKeys(chromedp.ID("code"), keyport.TOTPCode(seed, time.Now())),
		chromedp.SendKeys(chromedp.ID("current_password"), password))
	clickAndLoad(t, tab, "main form.stack button[type=submit]")
	if got := bodyText(t, tab); !strings.Contains(got, "authenticator app is required") {
		t.Fatalf("after confirming: %q", got)
	}
	clickAndLoad(t, tab, "header form button")
	login(t, tab, p.srv.URL, email, password)
	if got := text(t, tab, "#totp-error"); !strings.Contains(got, "6-digit code") {
		t.Fatalf("sign-in without the code says %q", got)
	}
	shot.take(tab, "totp-asked")
	do(t, tab, chromedp.SendKeys(chromedp.ID("password"), password), chromedp.SendKeys(chromedp.ID("totp"), keyport.TOTPCode(seed, time.Now().Add(30*time.Second))))
	clickAndLoad(t, tab, "#signin")
	if got := location(t, tab); !strings.HasSuffix(got, "/portal") {
		t.Fatalf("with the code: %s %q", got, bodyText(t, tab))
	}
}
