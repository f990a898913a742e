package web_test

import (
	"io"
	"mime/multipart"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// client returns a cookie-keeping client that does not follow redirects,
// and the CSRF token the portal gave it.
func client(t *testing.T, base string) (*http.Client, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := cl.Get(base + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(base)
	for _, ck := range jar.Cookies(u) {
		if ck.Name == "kp_csrf" {
			return cl, ck.Value
		}
	}
	t.Fatal("no CSRF cookie")
	return nil, ""
}

func signedIn(t *testing.T, base, email, password string) (*http.Client, string) {
	t.Helper()
	cl, csrf := client(t, base)
	resp, err := cl.PostForm(base+"/login", url.Values{"csrf": {csrf}, "email": {email}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign in %s: %d", email, resp.StatusCode)
	}
	return cl, csrf
}

func TestSignInRefusesEveryKnownOpenRedirectAsNext(t *testing.T) {
	p := startPortal(t, 1, 1)
	p.approvedProvider(t, "Next Bank", "ops@next.example", "a long enough password")
	try := func(next string) string {
		cl, csrf := client(t, p.srv.URL)
		resp, err := cl.PostForm(p.srv.URL+"/login", url.Values{"csrf": {csrf}, "email": {"ops@next.example"},
			"password": {"a long enough password"}, "next": {next}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get("Location")
	}
	for _, bad := range []string{"//evil.example/", "/\\evil.example/", "/%09/evil.example/", "/%2F/evil.example/",
		"/%2f/evil.example/", "/%5C/evil.example/", "\\\\evil.example/", "/\t/evil.example/", "/%0d%0aSet-Cookie:x=1",
		"/%0a/evil.example/", "https://evil.example/", "evil.example", "/ /evil.example/", "%2F%2Fevil.example/"} {
		if got := try(bad); got != "/" {
			t.Errorf("next=%q redirects to %q", bad, got)
		}
	}
	if got := try("/portal/keys?x=1"); got != "/portal/keys?x=1" {
		t.Errorf("a local next redirects to %q", got)
	}
}

func TestPagesSendHSTSExceptInPlainHTTPDevelopment(t *testing.T) {
	p := startPortal(t, 1, 1) // development: InsecureCookies
	resp, err := http.Get(p.srv.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := resp.Header.Get("Strict-Transport-Security"); h != "" {
		t.Fatalf("HSTS over plain HTTP in development: %q", h)
	}
	prod := startProductionPortal(t)
	resp, err = http.Get(prod + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := resp.Header.Get("Strict-Transport-Security"); h != "max-age=31536000; includeSubDomains" {
		t.Fatalf("HSTS %q", h)
	}
}

func TestSignUpResetAndVerifyAreRateLimitedPerNetworkAndPerAddress(t *testing.T) {
	p := startPortal(t, 1, 1)
	cl, csrf := client(t, p.srv.URL)
	over := func(path string, form url.Values) int {
		form.Set("csrf", csrf)
		last := 0
		for range 11 {
			resp, err := cl.PostForm(p.srv.URL+path, form)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			last = resp.StatusCode
		}
		return last
	}
	if st := over("/reset", url.Values{"email": {"victim@bank.example"}}); st != http.StatusTooManyRequests {
		t.Fatalf("11th reset request: %d", st)
	}
	if st := over("/verify", url.Values{"token": {"guess"}}); st != http.StatusTooManyRequests {
		t.Fatalf("11th verify: %d", st)
	}
	if st := over("/signup", url.Values{"organisation": {"X"}, "kind": {"bank"}, "contact": {"Y"},
		"email": {"flood@bank.example"}, "password": {"short"}}); st != http.StatusTooManyRequests {
		t.Fatalf("11th sign-up: %d", st)
	}
}

// spoolFiles counts the files and bytes under dir.
func spoolFiles(t *testing.T, dir string) (n int, bytes int64) {
	t.Helper()
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			n++
			bytes += fi.Size()
		}
		return nil
	})
	return n, bytes
}

// postBig sends a 50 MB multipart upload, streamed.
func postBig(t *testing.T, cl *http.Client, target string, header http.Header) int {
	t.Helper()
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		fw, _ := mw.CreateFormFile("file", "modules.jsonl")
		_, err := io.CopyN(fw, zeros{}, 50<<20)
		if err == nil {
			err = mw.Close()
		}
		pw.CloseWithError(err)
	}()
	req, _ := http.NewRequest(http.MethodPost, target, pr)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

func TestAnUploadToAnAdminRouteIsRefusedBeforeAnyOfItIsSpooled(t *testing.T) {
	p := startPortal(t, 1, 1)
	p.approvedProvider(t, "Upload Bank", "ops@upload.example", "a long enough password")
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	target := p.srv.URL + "/admin/batches/b1/import"

	anon, csrf := client(t, p.srv.URL)
	if st := postBig(t, anon, target, nil); st != http.StatusForbidden {
		t.Fatalf("anonymous upload without a token: %d", st)
	}
	// With its own CSRF token an anonymous client is sent to sign in.
	if st := postBig(t, anon, target, http.Header{"X-Csrf-Token": {csrf}}); st != http.StatusSeeOther && st != http.StatusUnauthorized {
		t.Fatalf("anonymous upload with a token: %d", st)
	}
	prov, pcsrf := signedIn(t, p.srv.URL, "ops@upload.example", "a long enough password")
	if st := postBig(t, prov, target+"?csrf="+url.QueryEscape(pcsrf), nil); st != http.StatusForbidden {
		t.Fatalf("a provider's upload to an admin route: %d", st)
	}
	if n, b := spoolFiles(t, tmp); n != 0 || b != 0 {
		t.Fatalf("%d files, %d bytes spooled for refused uploads", n, b)
	}
	// A form field is not read from a multipart body: the token must be in
	// the header or the query.
	admin, acsrf := signedIn(t, p.srv.URL, p.adminEmail, p.adminPW)
	var body strings.Builder
	mw := multipart.NewWriter(&body)
	mw.WriteField("csrf", acsrf)
	mw.Close()
	req, _ := http.NewRequest(http.MethodPost, target, strings.NewReader(body.String()))
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := admin.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("multipart with the token only as a field: %d", resp.StatusCode)
	}
}

// startProductionPortal serves the portal with production settings (Secure
// cookies, so HSTS) and returns its URL.
func startProductionPortal(t *testing.T) string {
	t.Helper()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	srv := httptest.NewServer(web.New(w.Svc, web.Options{SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestTheSignUpAndSignInFormsDoNotTellWhoHasAnAccount: a sign-up with an
// address that has an account is answered as any sign-up (its owner gets a
// message instead), and a locked account as an unknown address, also for
// its right password (its owner is told of the lock by e-mail), so neither
// form lets a stranger find out who has an account.
func TestTheSignUpAndSignInFormsDoNotTellWhoHasAnAccount(t *testing.T) {
	p := startPortal(t, 1, 1)
	base := p.srv.URL
	const known, unknown, password = "known@bank.example", "unknown@bank.example", "the right passphrase"
	p.approvedProvider(t, "Known Bank", known, password)
	cl, csrf := client(t, base)
	signUp := func(email string) (int, string, string) {
		st, loc, _ := postForm(t, cl, base+"/signup", url.Values{"csrf": {csrf}, "organisation": {"Someone Else"},
			"kind": {"bank"}, "contact": {"Eve"}, "email": {email}, "password": {"a long enough password"}})
		_, _, done := getPage(t, cl, base+"/signup/done")
		return st, loc, strings.ReplaceAll(done, email, "ADDRESS")
	}
	st1, loc1, done1 := signUp(known)
	st2, loc2, done2 := signUp(unknown)
	if st1 != st2 || loc1 != loc2 || st1 != http.StatusSeeOther || !strings.Contains(done1, "ADDRESS") {
		t.Fatalf("sign-up with a taken address: %d %s; with a new one: %d %s", st1, loc1, st2, loc2)
	}
	if nonce := regexp.MustCompile(`nonce="[^"]*"`); nonce.ReplaceAllString(done1, "") != nonce.ReplaceAllString(done2, "") {
		t.Fatalf("the pages after the two sign-ups differ:\n%s\n%s", done1, done2)
	}
	if strings.Contains(done1, "exists") || strings.Contains(done1, "already") {
		t.Fatalf("the page after a sign-up with a taken address tells it: %s", done1)
	}
	if em, ok := p.w.Mail.Newest(known); !ok || em.Subject != "Sign-up for keyport with your e-mail address" {
		t.Fatalf("the owner of the taken address got %+v", em)
	}
	signIn := func(email, pw string) (int, string) {
		st, _, body := postForm(t, cl, base+"/login", url.Values{"csrf": {csrf}, "email": {email}, "password": {pw}})
		return st, body
	}
	for i := 1; i <= keyport.MaxFailedLogins+1; i++ {
		pw := "wrong password " + string(rune('0'+i))
		if i > keyport.MaxFailedLogins {
			pw = password // the right one, once locked
		}
		stK, bodyK := signIn(known, pw)
		stU, bodyU := signIn(unknown, pw)
		for _, b := range []string{bodyK, bodyU} {
			if !strings.Contains(b, "Wrong e-mail address or password") || strings.Contains(strings.ToLower(b), "locked") {
				t.Fatalf("attempt %d: the page says %s", i, b)
			}
		}
		if stK != stU || stK != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d for the account, %d for an unknown address", i, stK, stU)
		}
	}
	p.w.Svc.Drain() // the notice is sent after the answer
	if em, ok := p.w.Mail.Newest(known); !ok || em.Subject != "Your keyport account is locked" {
		t.Fatalf("the owner of the locked account got %+v", em)
	}
}
