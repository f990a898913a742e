package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/internal/fixture"
)

// TestCampaignAPIConformsAndRefusesBadInputWith422: the campaign routes,
// every exchange checked against web/openapi.json: bad input is 422 with
// nothing stored, a provider's campaign naming a module it has no domain
// on counts the target "not yours", pause/resume/cancel answer the
// campaign, and each side stays on its own routes.
func TestCampaignAPIConformsAndRefusesBadInputWith422(t *testing.T) {
	tr := newContractTransport(t)
	cl := tr.client()
	p := startPortal(t, 2, 1)
	ctx := context.Background()
	a := p.approvedProvider(t, "Campaign Bank", "ops@campaign.example", "a long enough password")
	tokA, _, err := p.w.Svc.CreateAPIToken(ctx, a, "campaigns")
	if err != nil {
		t.Fatal(err)
	}
	admin, _, err := p.w.Svc.CreateAdminToken(ctx, fixture.Admin, "campaigns", 0)
	if err != nil {
		t.Fatal(err)
	}
	eid := string(fixture.EID(t, 0))
	do := func(token, method, path, ctype, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequest(method, p.srv.URL+"/api/v1"+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d: %.300s", method, path, resp.StatusCode, want, b)
		}
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		return v
	}
	const js = "application/json"
	// Requests 0, 1, 3 and 4 are ones the document itself refuses.
	if v := do(tokA, "POST", "/campaigns", js, `{"op":"erase","targets":{"all_personalized":true}}`, 422); v["field"] != "op" || v["type"] != "urn:keyport:problem:invalid-campaign" {
		t.Fatalf("unknown op: %v", v)
	}
	do(tokA, "POST", "/campaigns", js, `{"op":"lock","targets":{"eids":["`+eid+`"]},"extra":1}`, 422)
	if v := do(tokA, "POST", "/campaigns?op=data-script", "application/x-ndjson", "{\"eid\":\"x\"\n", 422); v["field"] != "line 1" {
		t.Fatalf("bad NDJSON line: %v", v)
	}
	do(tokA, "POST", "/campaigns?op=lock", "application/x-ndjson", "{}\n", 422)
	do(tokA, "POST", "/campaigns", "text/plain", "x", 415)
	if v := do(tokA, "GET", "/campaigns", "", "", 200); len(v["campaigns"].([]any)) != 0 {
		t.Fatalf("bad input stored a campaign: %v", v)
	}
	v := do(tokA, "POST", "/campaigns", js, `{"op":"lock","rate":5,"targets":{"eids":["`+eid+`"]}}`, 201)
	id, _ := v["id"].(string)
	if counts := v["counts"].(map[string]any); counts["REFUSED"] != 1.0 || v["state"] != "RUNNING" {
		t.Fatalf("created: %v", v)
	}
	if v := do(tokA, "GET", "/campaigns/"+id, "", "", 200); v["causes"].([]any)[0].(map[string]any)["cause"] != "not yours" {
		t.Fatalf("report: %v", v)
	}
	do(tokA, "POST", "/campaigns/"+id+"/pause", "", "", 200)
	do(tokA, "POST", "/campaigns/"+id+"/pause", "", "", 409)
	do(tokA, "POST", "/campaigns/"+id+"/resume", "", "", 200)
	if v := do(tokA, "POST", "/campaigns/"+id+"/cancel", "", "", 200); v["state"] != "CANCELLED" {
		t.Fatalf("cancelled: %v", v)
	}
	do(admin, "GET", "/campaigns", "", "", 403)
	do(tokA, "GET", "/admin/campaigns", "", "", 403)
	if v := do(admin, "GET", "/admin/campaigns", "", "", 200); len(v["campaigns"].([]any)) != 1 {
		t.Fatalf("admin list: %v", v)
	}
	do(admin, "GET", "/admin/campaigns/"+id, "", "", 200)
	do(admin, "GET", "/admin/campaigns/cmp_nope", "", "", 404)
	do(admin, "POST", "/admin/campaigns", js, `{"op":"lock","targets":{"batch":"b1"}}`, 422) // no claimed domain
	for i, x := range tr.exchanges() {
		if x.route == nil || x.responseErr != nil || (x.requestErr != nil) != (i < 5 && i != 2) {
			t.Errorf("%v: route %v, request %v, response %v", x, x.routeErr, x.requestErr, x.responseErr)
		}
	}
}

// A campaign's NDJSON upload is read whole before its transaction opens: a
// client that sends half a line and stalls holds no transaction, so the
// deployment's other writes (on SQLite all of them queue for one writer)
// go on. The stalled upload then ends with a bad line: 422, nothing stored.
func TestAStalledCampaignUploadHoldsNoWriteTransaction(t *testing.T) {
	p := startPortal(t, 2, 1)
	ctx := context.Background()
	a := p.approvedProvider(t, "Campaign Bank", "ops@campaign.example", "a long enough password")
	tok, _, err := p.w.Svc.CreateAPIToken(ctx, a, "campaigns")
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", p.srv.URL+"/api/v1/campaigns?op=data-script", pr)
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set("Authorization", "Bearer "+tok)
	answered := make(chan *http.Response, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			close(answered)
			return
		}
		answered <- resp
	}()
	// Blank lines first (skipped by the parser), more than the sockets
	// between client and server buffer: once Write returns, the handler
	// has read most of them, so it is reading the upload now. Then half a
	// line, and the client stalls.
	if _, err := pw.Write(bytes.Repeat([]byte("\n"), 32<<20)); err != nil {
		t.Fatal(err)
	}
	if _, err := pw.Write([]byte(`{"eid":"`)); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		_, _, err := p.w.Svc.CreateAPIToken(ctx, a, "written meanwhile")
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("a write while an upload stalls: %v", err)
		}
	case <-time.After(30 * time.Second):
		pw.CloseWithError(errors.New("test gave up"))
		<-wrote
		t.Fatal("a write waited 30 s behind a stalled upload: the upload holds a write transaction")
	}
	pw.Write([]byte("x\n"))
	pw.Close()
	resp := <-answered
	if resp == nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("the stalled upload's bad line: %d %s, want 422", resp.StatusCode, b)
	}
	if cs, err := p.w.Svc.ListCampaigns(ctx, a, 10); err != nil || len(cs) != 0 {
		t.Fatalf("campaigns after a refused upload: %d %v", len(cs), err)
	}
}
