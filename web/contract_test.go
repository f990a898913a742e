package web_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// The REST API's contract is web/openapi.json. The web tests send their
// /api/v1 requests through contractTransport, which checks every request and
// every response against the document with kin-openapi (OpenAPI 3.1: schemas
// are validated as JSON Schema 2020-12, formats asserted).

// contract is the loaded document and a router over its paths.
type contract struct {
	doc    *openapi3.T
	router routers.Router
}

var loadContract = sync.OnceValues(func() (*contract, error) {
	// Bodies the API takes besides JSON: a PEM key and JSON Lines imports,
	// both described as strings. (+json types such as application/jose+json
	// and application/problem+json are decoded as JSON already.)
	openapi3filter.RegisterBodyDecoder("application/x-pem-file", openapi3filter.PlainBodyDecoder)
	openapi3filter.RegisterBodyDecoder("application/x-ndjson", openapi3filter.PlainBodyDecoder)
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("openapi.json")
	if err != nil {
		return nil, fmt.Errorf("load web/openapi.json: %w", err)
	}
	if !doc.IsOpenAPI31OrLater() {
		return nil, fmt.Errorf("web/openapi.json is OpenAPI %s, want 3.1", doc.OpenAPI)
	}
	if err := doc.Validate(loader.Context); err != nil {
		return nil, fmt.Errorf("web/openapi.json is not a valid OpenAPI document: %w", err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route web/openapi.json: %w", err)
	}
	return &contract{doc: doc, router: router}, nil
})

func apiContract(t testing.TB) *contract {
	t.Helper()
	c, err := loadContract()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// token68 is the syntax of a bearer token (RFC 6750, section 2.1).
var token68 = regexp.MustCompile(`^[A-Za-z0-9._~+/-]+=*$`)

// bearerAuth is the document's one security scheme as a client sees it: the
// request carries "Authorization: Bearer <token>". Whether the token is
// good is the server's to say (401 is documented on every operation).
func bearerAuth(_ context.Context, in *openapi3filter.AuthenticationInput) error {
	s := in.SecurityScheme
	if s.Type != "http" || !strings.EqualFold(s.Scheme, "bearer") {
		return in.NewError(fmt.Errorf("security scheme %q is %s %s, which these tests cannot satisfy", in.SecuritySchemeName, s.Type, s.Scheme))
	}
	scheme, token, _ := strings.Cut(in.RequestValidationInput.Request.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") || !token68.MatchString(token) {
		return in.NewError(errors.New("no Authorization: Bearer <token> header"))
	}
	return nil
}

var validationOptions = &openapi3filter.Options{
	AuthenticationFunc: bearerAuth,
	// A status the operation does not list is an error, not "anything goes".
	IncludeResponseStatus: true,
}

// exchange is one request and its response as the document sees them.
type exchange struct {
	method, path string
	status       int
	// route is the documented operation; nil when the document has no
	// operation for the method and path (routeErr says which).
	route    *routers.Route
	routeErr error
	// requestErr is the document's objection to the request, if any.
	requestErr error
	// responseErr is the document's objection to the response, if any.
	responseErr error
}

func (x exchange) String() string { return x.method + " " + x.path + fmt.Sprintf(" (%d)", x.status) }

// check validates one request (whose body is reqBody) and its response.
func (c *contract) check(req *http.Request, reqBody []byte, resp *http.Response, respBody []byte) exchange {
	x := exchange{method: req.Method, path: req.URL.RequestURI(), status: resp.StatusCode}
	vreq := req.Clone(context.Background())
	vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
	vreq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(reqBody)), nil }
	route, params, err := c.router.FindRoute(vreq)
	if err != nil {
		x.routeErr = err
		x.responseErr = c.checkUnrouted(resp, respBody)
		return x
	}
	x.route = route
	in := &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route, Options: validationOptions}
	x.requestErr = openapi3filter.ValidateRequest(context.Background(), in)
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode,
		Header: resp.Header, Options: validationOptions}
	out.SetBodyBytes(respBody)
	x.responseErr = openapi3filter.ValidateResponse(context.Background(), out)
	if x.responseErr == nil {
		// kin-openapi does not look at the body of a response described
		// without content (204): there must be none.
		if r := route.Operation.Responses.Status(resp.StatusCode); r != nil && len(r.Value.Content) == 0 && len(bytes.TrimSpace(respBody)) != 0 {
			x.responseErr = fmt.Errorf("status %d is documented without a body, but the response has %d bytes", resp.StatusCode, len(respBody))
		}
	}
	return x
}

// checkUnrouted checks the answer to a request for which the document has no
// operation: the server must refuse it too, as an RFC 9457 problem.
func (c *contract) checkUnrouted(resp *http.Response, body []byte) error {
	if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusMethodNotAllowed {
		return fmt.Errorf("not in the document, yet answered %d", resp.StatusCode)
	}
	return c.checkProblem(resp.Header.Get("Content-Type"), body)
}

// checkProblem checks a body against the document's Problem schema.
func (c *contract) checkProblem(contentType string, body []byte) error {
	if ct, _, _ := strings.Cut(contentType, ";"); strings.TrimSpace(ct) != "application/problem+json" {
		return fmt.Errorf("content type %q, want application/problem+json", contentType)
	}
	v, err := openapi3filter.JSONBodyDecoder(bytes.NewReader(body), nil, nil, nil)
	if err != nil {
		return fmt.Errorf("problem body: %w", err)
	}
	if err := c.doc.ValidateSchemaJSON(c.doc.Components.Schemas["Problem"].Value, v, openapi3.VisitAsResponse(), openapi3.EnableJSONSchema2020()); err != nil {
		return fmt.Errorf("problem body does not match #/components/schemas/Problem: %w", err)
	}
	return nil
}

// err is what is wrong with the exchange for a test that only talks to the
// API (and may send requests the document rejects on purpose): the response
// must fit the document, and a request the document rejects must be refused.
func (x exchange) err() error {
	var sec *openapi3filter.SecurityRequirementsError
	switch {
	case x.responseErr != nil:
		return x.responseErr
	case x.requestErr != nil && (x.status < 400 || x.status > 499):
		return fmt.Errorf("served a request the document rejects (%v)", x.requestErr)
	case errors.As(x.requestErr, &sec) && x.status != http.StatusUnauthorized:
		return fmt.Errorf("answered %d to a request without the bearer token the document asks for, want 401", x.status)
	}
	return nil
}

// contractTransport sends requests like http.DefaultTransport and checks each
// /api/v1 exchange, and each of the probes and /metrics, against the
// document, failing the test on a mismatch.
type contractTransport struct {
	t testing.TB
	c *contract

	mu  sync.Mutex
	log []exchange
}

func newContractTransport(t testing.TB) *contractTransport {
	return &contractTransport{t: t, c: apiContract(t)}
}

// client returns an HTTP client over the transport.
func (tr *contractTransport) client() *http.Client { return &http.Client{Transport: tr} }

func (tr *contractTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasPrefix(req.URL.Path, "/api/v1/") && !rootPaths[req.URL.Path] {
		return http.DefaultTransport.RoundTrip(req)
	}
	var reqBody []byte
	if req.Body != nil && req.Body != http.NoBody {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		reqBody = b
		req = req.Clone(req.Context())
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(respBody))
	x := tr.c.check(req, reqBody, resp, respBody)
	tr.mu.Lock()
	tr.log = append(tr.log, x)
	tr.mu.Unlock()
	if err := x.err(); err != nil {
		tr.t.Errorf("web/openapi.json: %v: %v\nresponse: %.300s", x, err, respBody)
	}
	return resp, nil
}

// rootPaths are the documented paths outside /api/v1 (their own servers
// in the document): the probes, and /metrics on the metrics listener.
var rootPaths = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// exchanges returns what the transport has checked so far.
func (tr *contractTransport) exchanges() []exchange {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]exchange(nil), tr.log...)
}
