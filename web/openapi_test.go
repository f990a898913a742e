package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

// A small JSON Schema checker for the subset web/openapi.json uses: $ref to
// components, type (one or a list), properties, required,
// additionalProperties (bool or schema), items, enum, oneOf, pattern and
// format date-time. Anything else in a schema fails the test, so the
// document cannot silently use a keyword nobody checks.

type openAPIDoc struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]map[string]any `json:"schemas"`
	} `json:"components"`
}

type operation struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema map[string]any `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

var checkedKeywords = map[string]bool{"$ref": true, "type": true, "properties": true, "required": true,
	"additionalProperties": true, "items": true, "enum": true, "oneOf": true, "pattern": true, "format": true,
	"description": true, "minimum": true, "maximum": true, "maxLength": true}

func (d *openAPIDoc) check(path string, schema map[string]any, v any) error {
	for k := range schema {
		if !checkedKeywords[k] {
			return fmt.Errorf("%s: schema keyword %q is not supported by this checker", path, k)
		}
	}
	if r, ok := schema["$ref"].(string); ok {
		name := strings.TrimPrefix(r, "#/components/schemas/")
		s, ok := d.Components.Schemas[name]
		if !ok {
			return fmt.Errorf("%s: unknown $ref %s", path, r)
		}
		return d.check(path, s, v)
	}
	if t, ok := schema["type"]; ok {
		var types []string
		switch t := t.(type) {
		case string:
			types = []string{t}
		case []any:
			for _, x := range t {
				types = append(types, x.(string))
			}
		}
		match := false
		for _, ty := range types {
			match = match || hasType(ty, v)
		}
		if !match {
			return fmt.Errorf("%s: %T %v is not of type %v", path, v, v, types)
		}
	}
	if en, ok := schema["enum"].([]any); ok {
		found := false
		for _, e := range en {
			found = found || e == v
		}
		if !found {
			return fmt.Errorf("%s: %v is not one of %v", path, v, en)
		}
	}
	if s, ok := v.(string); ok {
		if p, ok := schema["pattern"].(string); ok && !regexp.MustCompile(p).MatchString(s) {
			return fmt.Errorf("%s: %q does not match %s", path, s, p)
		}
		if schema["format"] == "date-time" {
			if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
				return fmt.Errorf("%s: %q is not a date-time", path, s)
			}
		}
	}
	if one, ok := schema["oneOf"].([]any); ok {
		n := 0
		for _, alt := range one {
			if d.check(path, alt.(map[string]any), v) == nil {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%s: matches %d of oneOf, want 1", path, n)
		}
	}
	if obj, ok := v.(map[string]any); ok {
		props, _ := schema["properties"].(map[string]any)
		if req, ok := schema["required"].([]any); ok {
			for _, r := range req {
				if _, ok := obj[r.(string)]; !ok {
					return fmt.Errorf("%s: required %q missing", path, r)
				}
			}
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if ps, ok := props[k]; ok {
				if err := d.check(path+"."+k, ps.(map[string]any), obj[k]); err != nil {
					return err
				}
				continue
			}
			switch ap := schema["additionalProperties"].(type) {
			case bool:
				if !ap {
					return fmt.Errorf("%s: property %q is not in the document", path, k)
				}
			case map[string]any:
				if err := d.check(path+"."+k, ap, obj[k]); err != nil {
					return err
				}
			}
		}
	}
	if arr, ok := v.([]any); ok {
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range arr {
				if err := d.check(path+"["+strconv.Itoa(i)+"]", items, x); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func hasType(t string, v any) bool {
	switch t {
	case "null":
		return v == nil
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	}
	return false
}

func loadOpenAPI(t *testing.T) *openAPIDoc {
	t.Helper()
	b, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var d openAPIDoc
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return &d
}

// templateRE turns "/domains/{eid}/{aid}" into a regexp of concrete paths.
func templateRE(tmpl string) *regexp.Regexp {
	parts := strings.Split(tmpl, "/")
	for i, p := range parts {
		if strings.HasPrefix(p, "{") {
			parts[i] = `[^/]+`
		} else {
			parts[i] = regexp.QuoteMeta(p)
		}
	}
	return regexp.MustCompile("^/api/v1" + strings.Join(parts, "/") + "$")
}

// validate checks one real response against the document: the operation
// exists, documents the status, and the body fits the schema.
func (d *openAPIDoc) validate(method, path string, status int, contentType string, body []byte) error {
	var op *operation
	// Literal templates win over ones with parameters, as in the router.
	tmpls := make([]string, 0, len(d.Paths))
	for tmpl := range d.Paths {
		tmpls = append(tmpls, tmpl)
	}
	sort.Slice(tmpls, func(i, j int) bool { return strings.Count(tmpls[i], "{") < strings.Count(tmpls[j], "{") })
	for _, tmpl := range tmpls {
		if !templateRE(tmpl).MatchString(path) {
			continue
		}
		raw, ok := d.Paths[tmpl][strings.ToLower(method)]
		if !ok {
			continue
		}
		op = &operation{}
		if err := json.Unmarshal(raw, op); err != nil {
			return err
		}
		break
	}
	if op == nil {
		return fmt.Errorf("%s %s is not in the document", method, path)
	}
	r, ok := op.Responses[strconv.Itoa(status)]
	if !ok {
		return fmt.Errorf("%s %s: status %d is not documented", method, path, status)
	}
	if len(r.Content) == 0 {
		if len(bytes.TrimSpace(body)) != 0 {
			return fmt.Errorf("%s %s: %d has a body the document does not describe", method, path, status)
		}
		return nil
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	c, ok := r.Content[mt]
	if !ok {
		return fmt.Errorf("%s %s: %d content type %s is not documented", method, path, status, mt)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("%s %s: body is not JSON: %v", method, path, err)
	}
	return d.check(method+" "+path, c.Schema, v)
}

func TestOpenAPIDocumentDescribesEveryAPIRouteAndNoOther(t *testing.T) {
	d := loadOpenAPI(t)
	e := web.New(nil, web.Options{})
	served := map[string]bool{}
	for _, r := range e.Routes() {
		if r.Method == echo.RouteNotFound || !strings.HasPrefix(r.Path, "/api/v1/") {
			continue
		}
		tmpl := regexp.MustCompile(`:([a-z]+)`).ReplaceAllString(strings.TrimPrefix(r.Path, "/api/v1"), "{$1}")
		key := strings.ToLower(r.Method) + " " + tmpl
		served[key] = true
		if _, ok := d.Paths[tmpl][strings.ToLower(r.Method)]; !ok {
			t.Errorf("route %s %s is missing from web/openapi.json", r.Method, r.Path)
		}
	}
	for tmpl, ops := range d.Paths {
		for m := range ops {
			if m != "parameters" && !served[m+" "+tmpl] {
				t.Errorf("web/openapi.json documents %s %s, which is not served", strings.ToUpper(m), tmpl)
			}
		}
	}
}

func TestRealAPIResponsesMatchTheOpenAPIDocument(t *testing.T) {
	d := loadOpenAPI(t)
	p := startPortal(t, 2, 3)
	ctx := context.Background()
	a := p.approvedProvider(t, "Schema Bank", "ops@schema.example", "a long enough password")
	tokA, _, err := p.w.Svc.CreateAPIToken(ctx, a, "schema")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := p.w.Svc.CreateAdminToken(ctx, "schema")
	if err != nil {
		t.Fatal(err)
	}
	eid := string(fixture.EID(t, 0))
	aid := string(fixture.AID(1))
	pemJSON, _ := json.Marshal(map[string]string{"public_key_pem": string(fixture.PublicPEM(fixture.RSAKeys()[0]))})
	var wkID, tokID string
	n := 0
	call := func(token, method, path, body string, want int, header ...string) map[string]any {
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
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		n++
		if resp.StatusCode != want {
			t.Errorf("%s %s: status %d, want %d: %.300s", method, path, resp.StatusCode, want, b)
		}
		if err := d.validate(method, req.URL.Path, resp.StatusCode, resp.Header.Get("Content-Type"), b); err != nil {
			t.Errorf("%v\nbody: %.300s", err, b)
		}
		var v map[string]any
		_ = json.Unmarshal(b, &v)
		return v
	}
	call("", http.MethodGet, "/openapi.json", "", 200)
	call("", http.MethodGet, "/domains", "", 401)
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
	call(admin, http.MethodPost, "/admin/audit/verify", "", 200)
	call(admin, http.MethodGet, "/admin/jobs", "", 200)
	call(admin, http.MethodGet, "/admin/jobs?state=NOPE", "", 422)
	call(admin, http.MethodPost, "/admin/batches", `{"name":"derived-1","aid_prefix":"A000000151535042"}`, 201)
	call(admin, http.MethodPost, "/admin/batches", `{"name":"derived-1"}`, 409)
	t.Logf("%d real responses validated against web/openapi.json", n)
}
