package web_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

// A demo server (Options.Demo, keyport demo) marks what it serves: a banner
// on the portal's pages and "demo": true in the module and domain answers
// (checked against the OpenAPI document). Without Demo there is neither.
func TestADemoServerMarksItsPagesAndItsModuleAndDomainAnswers(t *testing.T) {
	e := newAPI(t)
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if resp, body := e.do(t, e.token, "POST", "/api/v1/claims", "application/json",
		[]byte(`{"eid":"`+string(eid)+`","aid":"`+string(aid)+`","wrapping_key_id":"`+e.wk+`"}`), "Idempotency-Key", "demo-1"); resp.StatusCode != 201 {
		t.Fatalf("claim: %d %s", resp.StatusCode, body)
	}
	for _, demo := range []bool{false, true} {
		srv := httptest.NewServer(web.New(e.w.Svc, web.Options{Demo: demo, InsecureCookies: true,
			Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}))
		for _, path := range []string{"/api/v1/modules/" + string(eid), "/api/v1/domains/" + string(eid) + "/" + string(aid)} {
			req, _ := http.NewRequest("GET", srv.URL+path, nil)
			req.Header.Set("Authorization", "Bearer "+e.token)
			resp, err := e.cl.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var m map[string]any
			if resp.StatusCode != 200 || json.Unmarshal(body, &m) != nil {
				t.Fatalf("demo=%v %s: %d %s", demo, path, resp.StatusCode, body)
			}
			if got, has := m["demo"]; demo != has || (demo && got != true) {
				t.Fatalf("demo=%v %s answers %s", demo, path, body)
			}
			if strings.HasPrefix(path, "/api/v1/modules/") {
				for _, d := range m["domains"].([]any) {
					if _, has := d.(map[string]any)["demo"]; has != demo {
						t.Fatalf("demo=%v: module's domain %v", demo, d)
					}
				}
			}
		}
		for _, path := range []string{"/login", "/signup"} {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if has := strings.Contains(string(body), `id="demo-banner"`); resp.StatusCode != 200 || has != demo {
				t.Fatalf("demo=%v %s: %d, banner %v", demo, path, resp.StatusCode, has)
			}
		}
		srv.Close()
	}
}
