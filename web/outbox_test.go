package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store/storetest"
)

// Acceptance of the outbox rule: after a verification and a reset e-mail
// went out, no working token is anywhere in the database (every text and
// blob column of every table, read past the store) nor on any page the
// portal served, the outbox page included; the outbox keeps each e-mail's
// recipient and subject with the link withheld.
func TestNoMailedTokenIsInTheDatabaseOrOnAnyPageAfterSending(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		p := startPortalOn(t, storetest.Open(t, dsn), 1, 1)
		base := p.srv.URL
		const email = "ops@leaky.example"
		var pages []string
		cl, csrf := client(t, base)
		status, _, body := postForm(t, cl, base+"/signup", url.Values{"csrf": {csrf}, "organisation": {"Leaky Bank"},
			"kind": {"bank"}, "contact": {"Lee"}, "email": {email}, "password": {"a long enough password"}})
		if status != http.StatusSeeOther {
			t.Fatalf("sign-up: %d %s", status, body)
		}
		verifyLink := p.mailedLink(t, email)
		_, _, body = getPage(t, cl, base+"/signup/done")
		pages = append(pages, body)
		status, _, body = postForm(t, cl, base+"/reset", url.Values{"csrf": {csrf}, "email": {email}})
		if status != http.StatusOK {
			t.Fatalf("reset request: %d", status)
		}
		pages = append(pages, body)
		resetLink := p.mailedLink(t, email)
		if resetLink == verifyLink {
			t.Fatal("one link for two mails")
		}
		admin, _ := signedIn(t, base, p.adminEmail, p.adminPW)
		status, _, body = getPage(t, admin, base+"/admin/outbox")
		if status != http.StatusOK || strings.Count(body, email) != 2 || !strings.Contains(body, "Reset your keyport password") ||
			!strings.Contains(body, "Confirm your e-mail address") {
			t.Fatalf("outbox page (%d) does not list both mails to %s:\n%s", status, email, body)
		}
		pages = append(pages, body)
		dump := storetest.DumpText(t, dsn)
		withheld := 0
		for _, v := range dump {
			if strings.HasPrefix(v, "outbox.") && strings.Contains(v, email) && strings.Contains(v, keyport.LinkWithheld) {
				withheld++
			}
		}
		if withheld != 2 {
			t.Fatalf("%d redacted outbox rows for %s, want 2 (the scan must see the outbox)", withheld, email)
		}
		for _, link := range []string{verifyLink, resetLink} {
			raw := link[strings.Index(link, "token=")+len("token="):]
			token, err := url.QueryUnescape(raw)
			if err != nil || len(token) < 40 {
				t.Fatalf("token of %s: %q %v", link, token, err)
			}
			for _, v := range dump {
				if strings.Contains(v, token) || strings.Contains(v, raw) {
					t.Errorf("the database holds a mailed token: %.120s", v)
				}
			}
			for i, pg := range pages {
				if strings.Contains(pg, token) || strings.Contains(pg, raw) {
					t.Errorf("page %d shows a mailed token", i)
				}
			}
		}
		// The tokens still work: what was scanned for was live.
		if status, _, _ := postForm(t, cl, base+"/verify", url.Values{"csrf": {csrf}, "token": {tokenOf(verifyLink)}}); status != http.StatusSeeOther {
			t.Fatalf("verify with the mailed token: %d", status)
		}
		if status, _, _ := postForm(t, cl, base+"/reset/confirm", url.Values{"csrf": {csrf}, "token": {tokenOf(resetLink)},
			"password": {"another long password"}}); status != http.StatusSeeOther {
			t.Fatalf("reset with the mailed token: %d", status)
		}
	})
}

func tokenOf(link string) string {
	tok, _ := url.QueryUnescape(link[strings.Index(link, "token=")+len("token="):])
	return tok
}
