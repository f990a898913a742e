package web_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

func TestMain(m *testing.M) { storetest.Main(m) }

type apiEnv struct {
	w     *fixture.World
	srv   *httptest.Server
	cl    *http.Client // checks every exchange against web/openapi.json
	token string
	wk    string
	admin string
}

func newAPI(t *testing.T) *apiEnv { t.Helper(); return newAPIWith(t, storetest.SQLitePath(t), nil) }

// newAPIWith is newAPI on the database dsn, with the server's options (and
// the world) set up by setup before the server starts.
func newAPIWith(t *testing.T, dsn string, setup func(w *fixture.World, o *web.Options)) *apiEnv {
	t.Helper()
	w := fixture.New(t, storetest.Open(t, dsn), 2, 2)
	_, token, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	admin, _, err := w.Svc.CreateAdminToken(context.Background(), fixture.Admin, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	opts := web.Options{Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}
	if setup != nil {
		setup(w, &opts)
	}
	srv := httptest.NewServer(web.New(w.Svc, opts))
	t.Cleanup(srv.Close)
	return &apiEnv{w: w, srv: srv, cl: newContractTransport(t).client(), token: token, wk: wk, admin: admin}
}

// do sends a request; hdr holds header name/value pairs.
func (e *apiEnv) do(t *testing.T, token, method, path, ctype string, body []byte, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

type problem struct {
	Type, Title, Detail, Field string
	Status                     int
}

func wantProblem(t *testing.T, name string, resp *http.Response, body []byte, status int, typ, detail string) {
	t.Helper()
	var p problem
	if resp.StatusCode != status || resp.Header.Get("Content-Type") != "application/problem+json" || json.Unmarshal(body, &p) != nil {
		t.Errorf("%s: %d %s %s; want %d problem+json", name, resp.StatusCode, resp.Header.Get("Content-Type"), body, status)
		return
	}
	if p.Type != "urn:keyport:problem:"+typ || p.Status != status || !strings.Contains(p.Detail, detail) {
		t.Errorf("%s: problem %+v; want type %s, detail containing %q", name, p, typ, detail)
	}
}

func pemKey(t *testing.T, pub any) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func TestBadInputGetsAClearProblemAndChangesNothing(t *testing.T) {
	e := newAPI(t)
	small, _ := rsa.GenerateKey(rand.Reader, 2048)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	eid := string(fixture.EID(t, 1))
	unknown := string(fixture.EID(t, 99))
	claim := func(body string) []byte { return []byte(body) }
	cases := []struct {
		name, method, path, ctype string
		body                      []byte
		status                    int
		typ, detail               string
	}{
		{"malformed EID", "GET", "/api/v1/modules/8904903212345", "", nil, 422, "invalid", "32 digits"},
		{"EID with bad check digits", "GET", "/api/v1/modules/89049032123451234512345678901234", "", nil, 422, "invalid", "check digits"},
		{"unknown EID", "GET", "/api/v1/modules/" + unknown, "", nil, 404, "not-found", ""},
		{"malformed AID", "GET", "/api/v1/domains/" + eid + "/A0ZZ", "", nil, 422, "invalid", "hexadecimal"},
		{"short AID", "GET", "/api/v1/domains/" + eid + "/A000", "", nil, 422, "invalid", "5 to 16 bytes"},
		{"2048-bit key", "POST", "/api/v1/wrapping-keys", "application/x-pem-file", pemKey(t, &small.PublicKey), 422, "invalid", "too small"},
		{"EC key", "POST", "/api/v1/wrapping-keys", "application/x-pem-file", pemKey(t, &ec.PublicKey), 422, "invalid", "only to RSA"},
		{"garbage PEM", "POST", "/api/v1/wrapping-keys", "application/x-pem-file", []byte("-----BEGIN PUBLIC KEY-----\nnot base64\n"), 422, "invalid", "damaged"},
		{"key in JSON with unknown field", "POST", "/api/v1/wrapping-keys", "application/json", []byte(`{"pem":"x"}`), 422, "invalid", "unknown field"},
		{"body over the limit", "POST", "/api/v1/claims", "application/json", bytes.Repeat([]byte(" "), 100<<10), 413, "too-large", ""},
		{"claim as form", "POST", "/api/v1/claims", "application/x-www-form-urlencoded", claim("eid=1"), 415, "unsupported-media-type", "application/json"},
		{"claim not JSON", "POST", "/api/v1/claims", "application/json", claim(`{"eid":`), 422, "invalid", "ends in the middle"},
		{"claim with an unknown field", "POST", "/api/v1/claims", "application/json", claim(`{"eid":"` + eid + `","x":1}`), 422, "invalid", `unknown field "x"`},
		{"claim of a malformed EID", "POST", "/api/v1/claims", "application/json", claim(`{"eid":"12","wrapping_key_id":"` + e.wk + `"}`), 422, "invalid", "32 digits"},
		{"claim of an unknown EID", "POST", "/api/v1/claims", "application/json", claim(`{"eid":"` + unknown + `","wrapping_key_id":"` + e.wk + `"}`), 404, "not-found", ""},
		{"claim without a key", "POST", "/api/v1/claims", "application/json", claim(`{"eid":"` + eid + `"}`), 422, "invalid", "wrapping_key_id"},
		{"claim with another's key id", "POST", "/api/v1/claims", "application/json", claim(`{"eid":"` + eid + `","wrapping_key_id":"wk_nope"}`), 422, "invalid", "no wrapping key"},
		{"two JSON values", "POST", "/api/v1/claims", "application/json", claim(`{} {}`), 422, "invalid", "more than one"},
		{"no such route", "GET", "/api/v1/nothing", "", nil, 404, "no-route", ""},
		{"admin route as provider", "GET", "/api/v1/admin/audit", "", nil, 403, "forbidden", ""},
	}
	for _, c := range cases {
		resp, body := e.do(t, e.token, c.method, c.path, c.ctype, c.body)
		wantProblem(t, c.name, resp, body, c.status, c.typ, c.detail)
	}
	resp, body := e.do(t, "", "GET", "/api/v1/domains", "", nil)
	wantProblem(t, "no token", resp, body, 401, "unauthenticated", "Bearer")
	resp, body = e.do(t, "kp_forged", "GET", "/api/v1/domains", "", nil)
	wantProblem(t, "forged token", resp, body, 401, "unauthenticated", "")
	// Nothing changed: no domain claimed, only the fixture's audit events.
	for _, d := range mustModule(t, e, 1).Domains {
		if d.State != keyport.Unassigned {
			t.Errorf("domain %s is %s after bad requests", d.AID, d.State)
		}
	}
	if n := e.w.CountAudit(t, "claim"); n != 0 {
		t.Errorf("%d claim events after bad requests", n)
	}
}

func mustModule(t *testing.T, e *apiEnv, n int) *keyport.Module {
	m, err := e.w.Store.GetModule(context.Background(), fixture.EID(t, n))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestImportOverHTTPRejectsAFileWithBadLinesAndNamesThem(t *testing.T) {
	e := newAPI(t)
	good := e.w.ImportLine(t, fixture.EID(t, 50), 1, "")
	body := []byte(good + "\n{\"eid\":\"1\"}\n" + good + "\n")
	resp, b := e.do(t, e.admin, "POST", "/api/v1/admin/batches/b1/modules", "application/x-ndjson", body)
	var p struct {
		Type  string
		Lines []struct{ Line int }
	}
	json.Unmarshal(b, &p)
	if resp.StatusCode != 422 || p.Type != "urn:keyport:problem:invalid-import" || len(p.Lines) != 1 || p.Lines[0].Line != 2 {
		t.Fatalf("import with a bad line: %d %s", resp.StatusCode, b)
	}
	if _, err := e.w.Store.GetModule(context.Background(), fixture.EID(t, 50)); err == nil {
		t.Error("module of a rejected file was imported")
	}
	resp, b = e.do(t, e.admin, "POST", "/api/v1/admin/batches/b1/modules", "application/x-ndjson", []byte(good+"\n"))
	if resp.StatusCode != 201 || !strings.Contains(string(b), `"modules":1`) {
		t.Errorf("good import: %d %s", resp.StatusCode, b)
	}
}

// tokenSlot finds the slot of the test token from a second PKCS#11 context.
func tokenSlot(t *testing.T, p *pkcs11.Ctx, label string) uint {
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if ti, err := p.GetTokenInfo(s); err == nil && strings.TrimSpace(ti.Label) == label {
			return s
		}
	}
	t.Fatalf("token %s not found", label)
	return 0
}

func TestClaimsAnswer503WhileTheHSMIsDownAndSucceedAfterItRecoversWithoutRestart(t *testing.T) {
	e := newAPI(t)
	p := pkcs11.New(hsmtest.ModulePath)
	if p == nil {
		t.Fatal("cannot load the PKCS#11 module")
	}
	claimBody := []byte(fmt.Sprintf(`{"eid":"%s","aid":"%s","wrapping_key_id":"%s"}`, fixture.EID(t, 0), fixture.AID(1), e.wk))

	// Sessions closed underneath the pool by another context: the next
	// claim still works, on new sessions.
	tok := e.w.Token.Label
	if err := p.CloseAllSessions(tokenSlot(t, p, tok)); err != nil {
		t.Fatal(err)
	}
	if resp, b := e.do(t, e.token, "POST", "/api/v1/claims", "application/json", claimBody); resp.StatusCode != 201 {
		t.Fatalf("claim after C_CloseAllSessions: %d %s", resp.StatusCode, b)
	}

	// The whole library finalized: the token cannot serve.
	if err := p.Finalize(); err != nil {
		t.Fatal(err)
	}
	defer p.Initialize() // never leave the process without its module
	claim2 := []byte(fmt.Sprintf(`{"eid":"%s","aid":"%s","wrapping_key_id":"%s"}`, fixture.EID(t, 0), fixture.AID(2), e.wk))
	resp, b := e.do(t, e.token, "POST", "/api/v1/claims", "application/json", claim2)
	wantProblem(t, "claim while the HSM is down", resp, b, 503, "unavailable", "nothing was changed")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	d, err := e.w.Store.GetDomain(context.Background(), fixture.EID(t, 0), fixture.AID(2))
	if err != nil || d.State != keyport.Unassigned {
		t.Fatalf("domain after the failed claim: %+v %v", d, err)
	}
	if n := e.w.CountAudit(t, "claim"); n != 1 {
		t.Errorf("%d claim events, want 1", n)
	}
	if resp, _ := e.do(t, "", "GET", "/readyz", "", nil); resp.StatusCode != 503 {
		t.Errorf("readyz while down: %d", resp.StatusCode)
	}
	if resp, _ := e.do(t, "", "GET", "/healthz", "", nil); resp.StatusCode != 200 {
		t.Errorf("healthz (liveness, no dependency) while the HSM is down: %d", resp.StatusCode)
	}

	// The module comes back: the same server serves again.
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	if resp, b := e.do(t, e.token, "POST", "/api/v1/claims", "application/json", claim2); resp.StatusCode != 201 {
		t.Fatalf("claim after recovery: %d %s", resp.StatusCode, b)
	}
}

// testLog sends the server's log to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
