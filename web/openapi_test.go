package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

// echoParam is a path parameter of an echo route (":eid").
var echoParam = regexp.MustCompile(`:([a-z]+)`)

func TestOpenAPIDocumentDescribesEveryAPIRouteAndNoOther(t *testing.T) {
	c := apiContract(t)
	e := web.New(nil, web.Options{})
	served := map[string]bool{}
	// /metrics is served by MetricsHandler on its own listener.
	served["GET /metrics"] = true
	for _, r := range e.Routes() {
		if r.Method == echo.RouteNotFound || !strings.HasPrefix(r.Path, "/api/v1/") && !rootPaths[r.Path] {
			continue
		}
		tmpl := echoParam.ReplaceAllString(strings.TrimPrefix(r.Path, "/api/v1"), "{$1}")
		served[r.Method+" "+tmpl] = true
		item := c.doc.Paths.Value(tmpl)
		if item == nil || item.GetOperation(r.Method) == nil {
			t.Errorf("route %s %s is missing from web/openapi.json", r.Method, r.Path)
			continue
		}
		// The validator's router takes a concrete path of the route to
		// this operation, not to another template.
		route, _, err := c.router.FindRoute(httptest.NewRequest(r.Method, echoParam.ReplaceAllString(r.Path, "x1"), nil))
		if err != nil || route.Path != tmpl {
			t.Errorf("route %s %s: the document routes it to %v (%v), want %s", r.Method, r.Path, route, err, tmpl)
		}
	}
	for tmpl, item := range c.doc.Paths.Map() {
		for m := range item.Operations() {
			if !served[m+" "+tmpl] {
				t.Errorf("web/openapi.json documents %s %s, which is not served", m, tmpl)
			}
		}
	}
}

// TestRealAPIResponsesMatchTheOpenAPIDocument calls every operation and
// checks each request and response against web/openapi.json. Besides what
// contractTransport checks for any test, here every request must be one the
// document describes, except those sent through reject, which the document
// must refuse (and the server too).
func TestRealAPIResponsesMatchTheOpenAPIDocument(t *testing.T) {
	tr := newContractTransport(t)
	cl := tr.client()
	p := startPortal(t, 2, 3)
	ctx := context.Background()
	a := p.approvedProvider(t, "Schema Bank", "ops@schema.example", "a long enough password")
	tokA, _, err := p.w.Svc.CreateAPIToken(ctx, a, "schema")
	if err != nil {
		t.Fatal(err)
	}
	admin, _, err := p.w.Svc.CreateAdminToken(ctx, fixture.Admin, "schema", 0)
	if err != nil {
		t.Fatal(err)
	}
	eid := string(fixture.EID(t, 0))
	aid := string(fixture.AID(1))
	pemJSON, _ := json.Marshal(map[string]string{"public_key_pem": string(fixture.PublicPEM(fixture.RSAKeys()[0]))})
	var wkID, tokID string
	n := 0
	send := func(conforming bool, token, method, path, body string, want int, header ...string) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, p.srv.URL+"/api/v1"+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		n++
		if resp.StatusCode != want {
			t.Errorf("%s %s: status %d, want %d: %.300s", method, path, resp.StatusCode, want, b)
		}
		xs := tr.exchanges()
		if len(xs) != n {
			t.Fatalf("%s %s: %d exchanges checked after %d requests", method, path, len(xs), n)
		}
		switch x := xs[n-1]; {
		case x.route == nil:
			t.Errorf("%v is not in the document: %v", x, x.routeErr)
		case conforming && x.requestErr != nil:
			t.Errorf("%v: the document rejects the request: %v", x, x.requestErr)
		case !conforming && x.requestErr == nil:
			t.Errorf("%v: the document accepts a request it should reject", x)
		}
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		return v
	}
	call := func(token, method, path, body string, want int, header ...string) map[string]any {
		t.Helper()
		return send(true, token, method, path, body, want, header...)
	}
	reject := func(token, method, path, body string, want int, header ...string) {
		t.Helper()
		send(false, token, method, path, body, want, header...)
	}
	call("", http.MethodGet, "/openapi.json", "", 200)
	reject("", http.MethodGet, "/domains", "", 401)
	reject("", http.MethodPost, "/claims", `{"eid":"`+eid+`"}`, 401)
	call(tokA, http.MethodPost, "/admin/batches", `{"name":"x"}`, 403)
	wkID, _ = call(tokA, http.MethodPost, "/wrapping-keys", string(pemJSON), 201)["id"].(string)
	call(tokA, http.MethodPost, "/wrapping-keys", `{"public_key_pem":"garbage"}`, 422)
	call(tokA, http.MethodGet, "/wrapping-keys", "", 200)
	call(tokA, http.MethodGet, "/modules/"+eid, "", 200)
	call(tokA, http.MethodGet, "/modules/"+eid[:31]+"0", "", 422)
	claim := `{"eid":"` + eid + `","aid":"` + aid + `","wrapping_key_id":"` + wkID + `"}`
	call(tokA, http.MethodPost, "/claims", claim, 201, "Idempotency-Key", "k1")
	call(tokA, http.MethodPost, "/claims", claim, 200, "Idempotency-Key", "k1")
	call(tokA, http.MethodPost, "/claims", claim, 409)
	call(tokA, http.MethodGet, "/domains", "", 200)
	call(tokA, http.MethodGet, "/domains/"+eid+"/"+aid, "", 200)
	call(tokA, http.MethodGet, "/domains/"+eid+"/"+string(fixture.AID(2)), "", 404)
	call(tokA, http.MethodGet, "/domains/"+eid+"/"+aid+"/key-package", "", 200)
	call(tokA, http.MethodPost, "/domains/"+eid+"/"+aid+"/scripts", `{"apdus":["00"],"expect":{"kvn":49,"kcv":{}}}`, 422)
	call(tokA, http.MethodPost, "/domains/"+eid+"/"+aid+"/data-scripts", `{"apdus":["8050300008AABBCCDDEEFF0011","8482130010AABBCCDDEEFF00112233445566778899","84CA010100"]}`, 422)
	reject(tokA, http.MethodPost, "/domains/"+eid+"/"+aid+"/data-scripts", `{"apdus":["8050"],"expect":{}}`, 422)
	call(tokA, http.MethodGet, "/jobs/job_unknown", "", 404)
	call(tokA, http.MethodPost, "/jobs/job_unknown/cancel", "", 404)
	tokID, _ = call(tokA, http.MethodPost, "/tokens", `{"name":"second"}`, 201)["id"].(string)
	call(tokA, http.MethodPost, "/tokens", `{"name":""}`, 422)
	call(tokA, http.MethodGet, "/tokens", "", 200)
	call(tokA, http.MethodDelete, "/tokens/"+tokID, "", 204)
	call(tokA, http.MethodDelete, "/tokens/tok_other", "", 404)
	call(tokA, http.MethodPut, "/webhook", `{"url":"https://bank.example/hook"}`, 200)
	call(tokA, http.MethodPut, "/webhook", `{"url":"ftp://bank.example/hook"}`, 422)
	call(tokA, http.MethodGet, "/webhook", "", 200)
	call(tokA, http.MethodGet, "/audit", "", 200)
	call(admin, http.MethodGet, "/webhook", "", 403)
	call(admin, http.MethodGet, "/admin/audit", "", 200)
	call(tokA, http.MethodPut, "/admin/modules/"+eid+"/msisdn", `{"msisdn":"+4915200000001"}`, 403)
	call(admin, http.MethodPut, "/admin/modules/"+eid+"/msisdn", `{"msisdn":"+4915200000001"}`, 204)
	call(admin, http.MethodPut, "/admin/modules/"+eid+"/msisdn", `{"msisdn":"12ab"}`, 422)
	if v := call(admin, http.MethodPut, "/admin/modules/"+string(fixture.EID(t, 1))+"/msisdn", `{"msisdn":"4915200000001"}`, 409); !strings.Contains(fmt.Sprint(v["detail"]), "+**********001") ||
		strings.Contains(fmt.Sprint(v["detail"]), "4915200000001") {
		t.Errorf("PUT of another module's MSISDN: detail %v; want it to name the number, masked", v["detail"])
	}
	if v := call(admin, http.MethodGet, "/modules/"+eid, "", 200); v["msisdn"] != "4915200000001" {
		t.Errorf("module lookup after PUT msisdn: %v", v["msisdn"])
	}
	if v := call(tokA, http.MethodGet, "/modules/"+eid, "", 200); v["msisdn"] != nil {
		t.Errorf("a provider sees the MSISDN: %v", v["msisdn"])
	}
	call(admin, http.MethodDelete, "/admin/modules/"+eid+"/msisdn", "", 204)
	if v := call(admin, http.MethodGet, "/modules/"+eid, "", 200); v["msisdn"] != nil {
		t.Errorf("module lookup after DELETE msisdn: %v", v["msisdn"])
	}
	call(admin, http.MethodPost, "/admin/audit/verify", "", 200)
	call(admin, http.MethodGet, "/admin/jobs", "", 200)
	call(admin, http.MethodGet, "/admin/jobs?state=NOPE", "", 422)
	call(admin, http.MethodPost, "/admin/batches", `{"name":"derived-1","aid_prefix":"A000000151535042"}`, 201)
	call(admin, http.MethodPost, "/admin/batches", `{"name":"derived-1"}`, 409)
	// Dual control with two admin tokens of different names.
	admin2, _, err := p.w.Svc.CreateAdminToken(ctx, keyport.Principal{Admin: true, Name: "second@issuer.example"}, "schema-2", 0)
	if err != nil {
		t.Fatal(err)
	}
	p.w.Svc.DualControl = keyport.DualControl{Admins: 2}
	maker, _ := json.Marshal(string(fixture.PublicPEM(fixture.RSAKeys()[1])))
	call(admin, http.MethodPost, "/admin/batches", `{"name":"imp-2","manufacturer_public_key_pem":`+string(maker)+`}`, 403)
	apr, _ := call(admin, http.MethodPost, "/admin/approvals", `{"operation":"module.psk-export","target":"`+eid+`","reason":"agent"}`, 201)["id"].(string)
	call(admin, http.MethodPost, "/admin/approvals", `{"operation":"hsm.destroy","target":"x"}`, 422)
	call(admin, http.MethodPost, "/admin/approvals", `{"operation":"module.psk-export","target":"`+string(fixture.EID(t, 99))+`"}`, 404)
	call(tokA, http.MethodGet, "/admin/approvals", "", 403)
	call(admin, http.MethodPost, "/admin/approvals/"+apr+"/approve", "", 403)
	call(admin2, http.MethodPost, "/admin/approvals/"+apr+"/approve", "", 200)
	call(admin2, http.MethodPost, "/admin/approvals/"+apr+"/approve", "", 409)
	call(admin2, http.MethodPost, "/admin/approvals/"+apr+"/execute", "", 403)
	if out := call(admin, http.MethodPost, "/admin/approvals/"+apr+"/execute", "", 200); len(fmt.Sprint(out["psk_hex"])) != 32 {
		t.Errorf("execute: %v", out)
	}
	call(admin, http.MethodPost, "/admin/approvals/"+apr+"/execute", "", 409)
	call(admin, http.MethodPost, "/admin/approvals/"+apr+"/cancel", "", 409)
	call(admin, http.MethodPost, "/admin/approvals/apr_nope/approve", "", 404)
	other, _ := call(admin2, http.MethodPost, "/admin/approvals", `{"operation":"admin.token-create","target":"ci"}`, 201)["id"].(string)
	call(admin2, http.MethodPost, "/admin/approvals/"+other+"/cancel", "", 204)
	if list := call(admin, http.MethodGet, "/admin/approvals", "", 200); len(list["approvals"].([]any)) != 2 {
		t.Errorf("approvals: %v", list)
	}
	// Requests the document rejects, refused by the server as well.
	reject(tokA, http.MethodGet, "/modules/"+eid[:13], "", 422)
	reject(tokA, http.MethodGet, "/domains/"+eid+"/A0ZZ", "", 422)
	reject(tokA, http.MethodPost, "/claims", `{"eid":"`+eid+`"}`, 422)
	reject(tokA, http.MethodPost, "/tokens", `{"name":"x","scope":"all"}`, 422)
	reject(tokA, http.MethodPost, "/wrapping-keys", `{"public_key_pem":7}`, 422)
	reject(tokA, http.MethodPut, "/webhook", `{}`, 422)
	reject(tokA, http.MethodPost, "/tokens", "name,third", 415, "Content-Type", "text/csv")
	call(tokA, http.MethodPost, "/tokens", `{"name":"`+strings.Repeat("x", 65<<10)+`"}`, 413)
	t.Logf("%d real requests and responses validated against web/openapi.json", n)
}
