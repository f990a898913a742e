package web_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// upload starts a campaign upload with token whose body comes from the
// returned pipe, and returns the answer once the body ends. It writes
// more blank lines (which the parser skips) than the sockets between
// client and server buffer, so that once it returns the handler is
// reading this upload.
func upload(t *testing.T, p *portal, token string) (*io.PipeWriter, <-chan *http.Response) {
	t.Helper()
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", p.srv.URL+"/api/v1/campaigns?op=data-script", pr)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Authorization", "Bearer "+token)
	// A test that fails before it ends the body must not leave the
	// server's handler waiting for the rest of it.
	t.Cleanup(func() { pw.CloseWithError(io.ErrUnexpectedEOF) })
	answered := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			close(answered) // finish reports it, if the test still runs
			return
		}
		answered <- resp
	}()
	if _, err := pw.Write(bytes.Repeat([]byte("\n"), 32<<20)); err != nil {
		t.Fatal(err)
	}
	return pw, answered
}

// finish ends an upload with a line that is not a script and returns its
// answer's status.
func finish(t *testing.T, pw *io.PipeWriter, answered <-chan *http.Response) int {
	t.Helper()
	pw.Write([]byte("{\"eid\":\"x\"\n"))
	pw.Close()
	resp := <-answered
	if resp == nil {
		t.Fatal("no answer")
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func post(t *testing.T, p *portal, token, body string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", p.srv.URL+"/api/v1/campaigns?op=data-script", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// A provider sends at most two campaign uploads at once, with any of its
// tokens: each may take up to its size of the spool directory for up to an
// hour. Another provider is not held up by it, and a slot comes back when
// an upload ends.
func TestAProviderSendsAtMostTwoCampaignUploadsAtOnce(t *testing.T) {
	p := startPortal(t, 2, 1)
	ctx := context.Background()
	a := p.approvedProvider(t, "Upload Bank", "ops@upload.example", "a long enough password")
	b := p.approvedProvider(t, "Other Bank", "ops@other.example", "a long enough password")
	var toks []string
	for _, name := range []string{"one", "two", "three"} {
		tok, _, err := p.w.Svc.CreateAPIToken(ctx, a, name)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	tokB, _, err := p.w.Svc.CreateAPIToken(ctx, b, "b")
	if err != nil {
		t.Fatal(err)
	}
	pw1, ans1 := upload(t, p, toks[0])
	pw2, ans2 := upload(t, p, toks[1])
	if got := post(t, p, toks[2], "{\"eid\":\"x\"\n"); got != http.StatusTooManyRequests {
		t.Fatalf("a third upload at once: %d, want 429", got)
	}
	if got := post(t, p, tokB, "{\"eid\":\"x\"\n"); got != http.StatusUnprocessableEntity {
		t.Fatalf("another provider's upload: %d, want 422 (read and refused for its line)", got)
	}
	if got := finish(t, pw1, ans1); got != http.StatusUnprocessableEntity {
		t.Fatalf("the first upload: %d, want 422", got)
	}
	if got := post(t, p, toks[2], "{\"eid\":\"x\"\n"); got != http.StatusUnprocessableEntity {
		t.Fatalf("an upload after one ended: %d, want 422", got)
	}
	if got := finish(t, pw2, ans2); got != http.StatusUnprocessableEntity {
		t.Fatalf("the second upload: %d, want 422", got)
	}
}

// An upload whose token is revoked while it comes in is refused once it is
// in, before it is read as a campaign: a long upload acts with what its
// credential allows at its end, not at its start.
func TestAnUploadWhoseTokenIsRevokedWhileItComesInIsRefused(t *testing.T) {
	p := startPortal(t, 2, 1)
	ctx := context.Background()
	a := p.approvedProvider(t, "Upload Bank", "ops@upload.example", "a long enough password")
	tok, row, err := p.w.Svc.CreateAPIToken(ctx, a, "uploads")
	if err != nil {
		t.Fatal(err)
	}
	pw, ans := upload(t, p, tok)
	if err := p.w.Svc.RevokeAPIToken(ctx, a, row.ID); err != nil {
		t.Fatal(err)
	}
	if got := finish(t, pw, ans); got != http.StatusUnauthorized {
		t.Fatalf("an upload whose token was revoked meanwhile: %d, want 401", got)
	}
}
