package web_test

import (
	"context"
	"encoding/base32"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
)

// reauthPortal is a portal with one approved provider signed in over HTTP.
type reauthPortal struct {
	*portal
	cl    *http.Client
	csrf  string
	email string
	pw    string
}

func newReauthPortal(t *testing.T) *reauthPortal {
	t.Helper()
	p := startPortal(t, 1, 1)
	r := &reauthPortal{portal: p, email: "ops@careful.example", pw: "the current passphrase"}
	p.approvedProvider(t, "Careful Bank", r.email, r.pw)
	r.cl, r.csrf = signedIn(t, p.srv.URL, r.email, r.pw)
	return r
}

func (r *reauthPortal) post(t *testing.T, path string, form url.Values) (int, string) {
	t.Helper()
	form.Set("csrf", r.csrf)
	status, _, body := postForm(t, r.cl, r.srv.URL+path, form)
	return status, body
}

func (r *reauthPortal) user(t *testing.T) *keyport.User {
	t.Helper()
	u, err := r.w.Store.GetUserByEmail(context.Background(), r.email)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// enrolTOTP turns TOTP on through the service (with the password) and
// returns the seed. The enrolment used the current step's code, so a code
// the test expects to be accepted later is the next step's (time.Now()+30 s):
// accepted while the server is in this step or the two after it, so a step
// edge crossed on the way changes nothing.
func (r *reauthPortal) enrolTOTP(t *testing.T) []byte {
	t.Helper()
	ctx := context.Background()
	u := r.user(t)
	en, err := r.w.Svc.BeginTOTP(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(en.Secret)
	if err := r.w.Svc.ConfirmTOTP(ctx, u, keyport.Reauth{Password: r.pw}, en.Sealed, keyport.TOTPCode(seed, time.Now())); err != nil {
		t.Fatal(err)
	}
	return seed
}

func TestChangingTheWebhookTakesTheCurrentPasswordAndAWrongOneCountsAsAFailedSignIn(t *testing.T) {
	r := newReauthPortal(t)
	provID := func() string {
		u := r.user(t)
		prov, err := r.w.Store.GetProvider(context.Background(), u.ProviderID)
		if err != nil {
			t.Fatal(err)
		}
		return prov.WebhookURL
	}
	const hook = "https://events.careful.example/keyport"
	if status, body := r.post(t, "/portal/webhook", url.Values{"webhook_url": {hook}}); status != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "current password is wrong") {
		t.Fatalf("without the password: %d", status)
	}
	if status, body := r.post(t, "/portal/webhook", url.Values{"webhook_url": {hook}, "current_password": {"a wrong guess"}}); status != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "current password is wrong") {
		t.Fatalf("wrong password: %d", status)
	}
	if got := provID(); got != "" {
		t.Fatalf("the webhook changed to %q without the password", got)
	}
	if u := r.user(t); u.FailedLogins != 2 {
		t.Fatalf("failed attempts %d, want 2", u.FailedLogins)
	}
	// A bad URL is refused before the password is tried: no attempt spent.
	if status, _ := r.post(t, "/portal/webhook", url.Values{"webhook_url": {"http://127.0.0.1/x"}, "current_password": {r.pw}}); status != http.StatusUnprocessableEntity {
		t.Fatalf("bad URL: %d", status)
	}
	if u := r.user(t); u.FailedLogins != 2 {
		t.Fatalf("a bad URL counted: %d attempts", u.FailedLogins)
	}
	if status, _ := r.post(t, "/portal/webhook", url.Values{"webhook_url": {hook}, "current_password": {r.pw}}); status != http.StatusSeeOther {
		t.Fatalf("right password: %d", status)
	}
	if got := provID(); got != hook {
		t.Fatalf("webhook %q, want %q", got, hook)
	}
	if u := r.user(t); u.FailedLogins != 0 {
		t.Fatalf("a right password left %d attempts counted", u.FailedLogins)
	}
	evs, _ := r.w.Store.RecentAudit(context.Background(), 20)
	failed := 0
	for _, e := range evs {
		if e.Action == "user.reauth-failed" && strings.Contains(e.Detail, "webhook") {
			failed++
		}
	}
	if failed != 2 {
		t.Fatalf("%d failed re-authentications audited, want 2", failed)
	}
}

func TestChangingThePasswordTakesTheCurrentOneAndTheTOTPCodeWhenEnrolled(t *testing.T) {
	r := newReauthPortal(t)
	seed := r.enrolTOTP(t)
	const next = "a brand new passphrase"
	if status, body := r.post(t, "/portal/security/password", url.Values{"current_password": {r.pw}, "password": {next}}); status != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "current code from your authenticator app") {
		t.Fatalf("without the code: %d", status)
	}
	if status, _ := r.post(t, "/portal/security/password", url.Values{"current_password": {"wrong one here"},
		"current_code": {keyport.TOTPCode(seed, time.Now().Add(30*time.Second))}, "password": {next}}); status != http.StatusUnprocessableEntity {
		t.Fatalf("wrong password with a code: %d", status)
	}
	if status, _ := r.post(t, "/portal/security/password", url.Values{"current_password": {r.pw}, "current_code": {"000000"}, "password": {next}}); status != http.StatusUnprocessableEntity {
		t.Fatalf("wrong code: %d", status)
	}
	if _, err := r.w.Svc.Login(context.Background(), r.email, next, keyport.TOTPCode(seed, time.Now().Add(30*time.Second))); err == nil {
		t.Fatal("the password changed without the right password and code")
	}
	if status, _ := r.post(t, "/portal/security/password", url.Values{"current_password": {r.pw},
		"current_code": {keyport.TOTPCode(seed, time.Now().Add(30*time.Second))}, "password": {next}}); status != http.StatusSeeOther {
		t.Fatalf("right password and code: %d", status)
	}
	if !keyport.CheckPassword(r.user(t).PasswordHash, next) {
		t.Fatal("the password did not change")
	}
}

func TestTurningTOTPOnOrOffTakesTheCurrentPasswordAndCodeAndLocksAfterTooManyWrongOnes(t *testing.T) {
	r := newReauthPortal(t)
	// On: the enrolment form without the password changes nothing.
	u := r.user(t)
	en, err := r.w.Svc.BeginTOTP(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	seed, _ := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(en.Secret)
	if err := r.w.Svc.ConfirmTOTP(context.Background(), u, keyport.Reauth{Password: "not it at all"}, en.Sealed, keyport.TOTPCode(seed, time.Now())); err == nil {
		t.Fatal("TOTP turned on with a wrong password")
	}
	if r.user(t).TOTPSealed != nil {
		t.Fatal("TOTP is on after a refused enrolment")
	}
	seed = r.enrolTOTP(t)
	// Off: password alone, then a wrong code, are refused.
	if status, body := r.post(t, "/portal/security/totp/disable", url.Values{"current_password": {r.pw}}); status != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "current code") {
		t.Fatalf("off without the code: %d", status)
	}
	if r.user(t).TOTPSealed == nil {
		t.Fatal("TOTP went off without the code")
	}
	// Three more wrong attempts reach the limit of five: locked.
	var status int
	var body string
	for range keyport.MaxFailedLogins - 1 {
		status, body = r.post(t, "/portal/security/totp/disable", url.Values{"current_password": {r.pw}, "current_code": {"000000"}})
	}
	if status != http.StatusForbidden || !strings.Contains(body, "locked") {
		t.Fatalf("after %d wrong attempts: %d", keyport.MaxFailedLogins, status)
	}
	// Locked: even the right password and code are refused, here and at sign-in.
	if status, _ := r.post(t, "/portal/security/totp/disable", url.Values{"current_password": {r.pw}, "current_code": {keyport.TOTPCode(seed, time.Now().Add(30*time.Second))}}); status != http.StatusForbidden {
		t.Fatalf("locked account, right password and code: %d", status)
	}
	if r.user(t).TOTPSealed == nil {
		t.Fatal("TOTP went off on a locked account")
	}
	if _, err := r.w.Svc.Login(context.Background(), r.email, r.pw, keyport.TOTPCode(seed, time.Now().Add(30*time.Second))); err == nil {
		t.Fatal("sign-in works on the account re-authentication locked")
	}
	// Unlocked (as a reset would): the right password and code turn it off.
	if err := r.w.Store.ResetFailedLogins(context.Background(), r.user(t).ID); err != nil {
		t.Fatal(err)
	}
	if status, _ := r.post(t, "/portal/security/totp/disable", url.Values{"current_password": {r.pw}, "current_code": {keyport.TOTPCode(seed, time.Now().Add(30*time.Second))}}); status != http.StatusSeeOther {
		t.Fatalf("right password and code: %d", status)
	}
	if r.user(t).TOTPSealed != nil {
		t.Fatal("TOTP is still on")
	}
}

// The admin's security page has the same re-authenticated changes as a
// provider's: changing the password takes the current one, and a wrong one
// counts as a failed sign-in attempt.
func TestTheAdminSecurityPageChangesThePasswordOnlyWithTheCurrentOne(t *testing.T) {
	p := startPortalAt(t, 1, 1, true)
	ctx := context.Background()
	cl, csrf := signedIn(t, p.srv.URL, p.adminEmail, p.adminPW)
	admin := func() *keyport.User {
		u, err := p.w.Store.GetUserByEmail(ctx, p.adminEmail)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	if status, _, body := getPage(t, cl, p.srv.URL+"/admin/security"); status != http.StatusOK ||
		!strings.Contains(body, `href="/admin/security/password"`) {
		t.Fatalf("security page: %d %s", status, body)
	}

	// The password change.
	const next = "the admin's new passphrase"
	if status, _, body := getPage(t, cl, p.srv.URL+"/admin/security/password"); status != http.StatusOK ||
		!strings.Contains(body, `action="/admin/security/password"`) {
		t.Fatalf("password page: %d", status)
	}
	status, _, body := postForm(t, cl, p.srv.URL+"/admin/security/password", url.Values{"csrf": {csrf}, "current_password": {"not it"}, "password": {next}})
	if status != http.StatusUnprocessableEntity || !strings.Contains(body, "current password is wrong") {
		t.Fatalf("wrong current password: %d", status)
	}
	if u := admin(); keyport.CheckPassword(u.PasswordHash, next) || u.FailedLogins != 1 {
		t.Fatalf("after a wrong current password: changed %v, %d failed attempts", keyport.CheckPassword(u.PasswordHash, next), u.FailedLogins)
	}
	status, loc, _ := postForm(t, cl, p.srv.URL+"/admin/security/password", url.Values{"csrf": {csrf}, "current_password": {p.adminPW}, "password": {next}})
	if status != http.StatusSeeOther || loc != "/admin/security" {
		t.Fatalf("right current password: %d to %q", status, loc)
	}
	if u := admin(); !keyport.CheckPassword(u.PasswordHash, next) || u.FailedLogins != 0 {
		t.Fatalf("after the change: new password %v, %d failed attempts", keyport.CheckPassword(u.PasswordHash, next), u.FailedLogins)
	}
}

// Adding a passkey begins only with the current password; a wrong one
// begins no ceremony and counts as a failed sign-in attempt.
func TestAPasskeyEnrolmentBeginsOnlyWithTheCurrentPassword(t *testing.T) {
	p := startPortalAt(t, 1, 1, true)
	ctx := context.Background()
	cl, csrf := signedIn(t, p.srv.URL, p.adminEmail, p.adminPW)
	failed := func() int {
		u, err := p.w.Store.GetUserByEmail(ctx, p.adminEmail)
		if err != nil {
			t.Fatal(err)
		}
		return u.FailedLogins
	}
	if status, _, body := getPage(t, cl, p.srv.URL+"/admin/security"); status != http.StatusOK || !strings.Contains(body, `id="passkey-current_password"`) {
		t.Fatalf("security page: %d", status)
	}
	status, _, body := postForm(t, cl, p.srv.URL+"/admin/security/passkeys/begin", url.Values{"csrf": {csrf}, "current_password": {"not it"}})
	if status != http.StatusUnprocessableEntity || !strings.Contains(body, "current password is wrong") || strings.Contains(body, "data-passkey-create") {
		t.Fatalf("begin with a wrong password: %d", status)
	}
	if n := failed(); n != 1 {
		t.Fatalf("failed attempts %d, want 1", n)
	}
	status, _, body = postForm(t, cl, p.srv.URL+"/admin/security/passkeys/begin", url.Values{"csrf": {csrf}, "current_password": {p.adminPW}})
	if status != http.StatusOK || !strings.Contains(body, "data-passkey-create") {
		t.Fatalf("begin with the password: %d", status)
	}
	if n := failed(); n != 0 {
		t.Fatalf("failed attempts %d after the right password, want 0", n)
	}
}

func TestMakingAnAPITokenInThePortalTakesTheCurrentPasswordAndMakesNoneWithoutIt(t *testing.T) {
	r := newReauthPortal(t)
	ctx := context.Background()
	prov := keyport.Principal{ProviderID: r.user(t).ProviderID}
	tokens := func() int {
		ts, err := r.w.Svc.ListAPITokens(ctx, prov)
		if err != nil {
			t.Fatal(err)
		}
		return len(ts)
	}
	for _, form := range []url.Values{{"name": {"payments-prod"}}, {"name": {"payments-prod"}, "current_password": {"a wrong guess"}}} {
		status, body := r.post(t, "/portal/tokens", form)
		if status != http.StatusUnprocessableEntity || !strings.Contains(body, "current password is wrong") {
			t.Fatalf("password %q: %d", form.Get("current_password"), status)
		}
		if newTokenRE.MatchString(body) || !strings.Contains(body, `value="payments-prod"`) {
			t.Fatalf("password %q: the page shows a token or lost the name", form.Get("current_password"))
		}
	}
	if n := tokens(); n != 0 {
		t.Fatalf("%d tokens made without the password", n)
	}
	if _, _, body := getPage(t, r.cl, r.srv.URL+"/portal/tokens"); !strings.Contains(body, `name="current_password"`) {
		t.Fatal("the token form does not ask for the current password")
	}
	if u := r.user(t); u.FailedLogins != 2 {
		t.Fatalf("failed attempts %d, want 2", u.FailedLogins)
	}
	// A missing name is refused before the password is tried.
	if status, _ := r.post(t, "/portal/tokens", url.Values{"name": {" "}, "current_password": {r.pw}}); status != http.StatusUnprocessableEntity {
		t.Fatalf("no name: %d", status)
	}
	if u := r.user(t); u.FailedLogins != 2 {
		t.Fatalf("a missing name counted: %d attempts", u.FailedLogins)
	}

	status, body := r.post(t, "/portal/tokens", url.Values{"name": {"payments-prod"}, "current_password": {r.pw}})
	m := newTokenRE.FindStringSubmatch(body)
	if status != http.StatusCreated || m == nil {
		t.Fatalf("right password: %d, token shown %v", status, m != nil)
	}
	if p, err := r.w.Svc.Authenticate(ctx, m[1]); err != nil || p.ProviderID != prov.ProviderID {
		t.Fatalf("the token shown does not authenticate: %v", err)
	}
	if n, u := tokens(), r.user(t); n != 1 || u.FailedLogins != 0 {
		t.Fatalf("%d tokens, %d failed attempts; want 1 and 0", n, u.FailedLogins)
	}

	// With TOTP on, the form asks for the code too.
	seed := r.enrolTOTP(t)
	if _, _, body := getPage(t, r.cl, r.srv.URL+"/portal/tokens"); !strings.Contains(body, `name="current_code"`) {
		t.Fatal("with TOTP on, the token form does not ask for the code")
	}
	if status, body := r.post(t, "/portal/tokens", url.Values{"name": {"second"}, "current_password": {r.pw}}); status != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "current code from your authenticator app") {
		t.Fatalf("without the code: %d", status)
	}
	if n := tokens(); n != 1 {
		t.Fatalf("%d tokens after a refusal, want 1", n)
	}
	if status, _ := r.post(t, "/portal/tokens", url.Values{"name": {"second"}, "current_password": {r.pw},
		"current_code": {keyport.TOTPCode(seed, time.Now().Add(30*time.Second))}}); status != http.StatusCreated {
		t.Fatalf("password and code: %d", status)
	}
	if n := tokens(); n != 2 {
		t.Fatalf("%d tokens, want 2", n)
	}
}
