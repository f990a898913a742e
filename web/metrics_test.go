package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/miekg/pkcs11"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// metricsEnv is the API with every collector keyport serve wires, and the
// metrics listener.
type metricsEnv struct {
	*apiEnv
	metrics *httptest.Server
	cl      *http.Client
	dsn     string
}

func newMetricsAPI(t *testing.T, dsn string) *metricsEnv {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	e := newAPIWith(t, dsn, func(w *fixture.World, o *web.Options) {
		sm := web.NewServiceMetrics()
		w.Svc.Metrics = sm
		reg.MustRegister(sm, w.HSM.Collector(), w.Store.Collector())
		o.Ready = []web.ReadyCheck{{Name: "database", Check: w.Store.Ping}, {Name: "migrations", Check: w.Store.CheckSchema}}
	})
	m := httptest.NewServer(web.MetricsHandler(reg))
	t.Cleanup(m.Close)
	return &metricsEnv{apiEnv: e, metrics: m, cl: newContractTransport(t).client(), dsn: dsn}
}

// scrape returns /metrics as text and parsed.
func (e *metricsEnv) scrape(t *testing.T) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := e.cl.Get(e.metrics.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(b)))
	if err != nil {
		t.Fatalf("/metrics does not parse as the text format: %v", err)
	}
	return string(b), mfs
}

// value is the value of the series of name whose labels include labels
// ("k=v" pairs), 0 when there is none; a histogram's is its sample count.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	var sum float64
	for _, m := range mfs[name].GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		ok := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			ok = ok && have[k] == v
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func TestMetricsMoveByOneClaimOnePackageDownloadAndOneJobAndNameNoIdentifier(t *testing.T) {
	storetest.EachDSN(t, testMetricsMove)
}

func testMetricsMove(t *testing.T, dsn string) {
	e := newMetricsAPI(t, dsn)
	_, before := e.scrape(t)
	for _, name := range []string{"keyport_claims_total", "keyport_key_package_downloads_total", "keyport_webhook_deliveries_total",
		"keyport_jobs", "keyport_hsm_sessions", "keyport_hsm_session_errors_total", "keyport_imports_total", "keyport_imports_running"} {
		if before[name] == nil {
			t.Errorf("no %s before any request", name)
		}
	}

	path, script := claimedForScripts(t, e.apiEnv) // one claim, through the API
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	resp, b := e.do(t, e.token, "GET", fmt.Sprintf("/api/v1/domains/%s/%s/key-package", eid, aid), "", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("key package: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "POST", "/api/v1/claims", "application/json",
		[]byte(fmt.Sprintf(`{"eid":%q,"aid":%q,"wrapping_key_id":%q}`, eid, aid, e.wk)))
	if resp.StatusCode != 409 {
		t.Fatalf("claim of a taken domain: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "POST", path, "application/json", script)
	var job keyport.JobView
	if json.Unmarshal(b, &job); resp.StatusCode != 201 {
		t.Fatalf("script: %d %s", resp.StatusCode, b)
	}
	text, after := e.scrape(t)

	moved := func(name string, want float64, labels ...string) {
		t.Helper()
		if d := value(after, name, labels...) - value(before, name, labels...); d != want {
			t.Errorf("%s%v moved by %v, want %v", name, labels, d, want)
		}
	}
	moved("keyport_claims_total", 1, "result=ok")
	moved("keyport_claims_total", 1, "result=conflict")
	moved("keyport_claims_total", 2)
	moved("keyport_key_package_downloads_total", 1, "result=ok")
	moved("keyport_key_package_downloads_total", 1)
	moved("keyport_jobs", 1, "kind=second-key", "state=QUEUED")
	moved("keyport_jobs", 1)
	// The claim's HSM work: the domain's keys unwrapped under the transport
	// key, wrapped to the provider, the package signed.
	for _, call := range []string{"unwrap", "wrap", "sign"} {
		if d := value(after, "keyport_hsm_operation_seconds", "call="+call) - value(before, "keyport_hsm_operation_seconds", "call="+call); d < 1 {
			t.Errorf("no HSM %s timed over a claim", call)
		}
	}
	if d := value(after, "keyport_db_query_seconds") - value(before, "keyport_db_query_seconds"); d < 5 {
		t.Errorf("%v statements timed over a claim, a download and a script", d)
	}
	if value(after, "keyport_hsm_sessions", "state=max") < 1 {
		t.Error("keyport_hsm_sessions{state=max} is 0")
	}

	// Nothing identifying: EIDs, AIDs, the provider, its token, key,
	// claim, job and e-mail address appear nowhere in the output.
	prov, err := e.w.Svc.Authenticate(context.Background(), e.token)
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{string(eid), string(aid), string(fixture.EID(t, 1)), e.token, e.admin, e.wk, prov.ProviderID, job.ID, "example.com"}
	if c, err := e.w.Store.GetClaimForDomain(context.Background(), prov.ProviderID, mustDomain(t, e, eid, aid).ID); err == nil {
		secrets = append(secrets, c.ID)
	} else {
		t.Fatal(err)
	}
	for _, s := range secrets {
		if s == "" {
			t.Fatal("an empty identifier to look for")
		}
		if strings.Contains(strings.ToLower(text), strings.ToLower(s)) {
			t.Errorf("/metrics contains %q", s)
		}
	}
}

func mustDomain(t *testing.T, e *metricsEnv, eid keyport.EID, aid keyport.AID) *keyport.Domain {
	t.Helper()
	d, err := e.w.Store.GetDomain(context.Background(), eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestMetricsAreNotOnThePublicListener(t *testing.T) {
	e := newMetricsAPI(t, storetest.SQLitePath(t))
	resp, err := http.Get(e.srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("GET /metrics on the public listener: %d, want 404", resp.StatusCode)
	}
	resp, err = http.Get(e.metrics.URL + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("the metrics listener serves the API: %d", resp.StatusCode)
	}
}

// readyz returns /readyz's status and body.
func (e *metricsEnv) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, b := e.do(t, "", "GET", "/readyz", "", nil)
	return resp.StatusCode, string(b)
}

func TestReadyzNamesTheFailingCheckAndRecoversWithTheHSMAndTheSchema(t *testing.T) {
	storetest.EachDSN(t, testReadyz)
}

func testReadyz(t *testing.T, dsn string) {
	e := newMetricsAPI(t, dsn)
	if code, body := e.readyz(t); code != 200 || body != `{"status":"ok","checks":{"database":"ok","hsm":"ok","migrations":"ok"}}`+"\n" {
		t.Fatalf("/readyz: %d %s", code, body)
	}

	// The PKCS#11 library finalized underneath the pool: not ready, still
	// alive; initialized again, the pool logs in again and serves.
	p := pkcs11.New(hsmtest.ModulePath)
	if p == nil {
		t.Fatal("cannot load the PKCS#11 module")
	}
	if err := p.Finalize(); err != nil {
		t.Fatal(err)
	}
	code, body := e.readyz(t)
	if code != 503 || !strings.Contains(body, `"failing":["hsm"]`) || !strings.Contains(body, `"hsm":"failing"`) {
		t.Errorf("/readyz with the HSM finalized: %d %s", code, body)
	}
	if resp, b := e.do(t, "", "GET", "/healthz", "", nil); resp.StatusCode != 200 {
		t.Errorf("/healthz with the HSM finalized: %d %s", resp.StatusCode, b)
	}
	if err := p.Initialize(); err != nil {
		t.Fatal(err)
	}
	if code, body := e.readyz(t); code != 200 {
		t.Errorf("/readyz after the HSM came back: %d %s", code, body)
	}
	_, mfs := e.scrape(t)
	for _, cause := range []string{"session_lost", "open"} {
		if value(mfs, "keyport_hsm_session_errors_total", "cause="+cause) < 1 {
			t.Errorf("no %s counted after C_Finalize", cause)
		}
	}

	// The schema one step behind the code: not ready, naming migrations.
	last := storetest.ExecSQL(t, e.dsn, `DELETE FROM schema_migrations WHERE version = (SELECT MAX(version) FROM schema_migrations)`)
	if last != 1 {
		t.Fatalf("%d migration rows deleted", last)
	}
	if code, body := e.readyz(t); code != 503 || !strings.Contains(body, `"failing":["migrations"]`) {
		t.Errorf("/readyz with an old schema: %d %s", code, body)
	}
}
