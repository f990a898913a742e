package web

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keyport/keyport"
)

// ServiceMetrics is keyport.Metrics for Prometheus: the use cases' counters,
// labelled by result only (keyport.Results). Register it with the registry
// MetricsHandler serves, and set it as Service.Metrics.
type ServiceMetrics struct {
	claims, packages, webhooks, imports *prometheus.CounterVec
	importLines, importModules          prometheus.Counter
	importsRunning                      prometheus.Gauge
}

var _ keyport.Metrics = (*ServiceMetrics)(nil)

// NewServiceMetrics returns the counters, every result's series at 0.
func NewServiceMetrics() *ServiceMetrics {
	byResult := func(name, help string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, []string{"result"})
		for _, r := range keyport.Results {
			v.WithLabelValues(string(r))
		}
		return v
	}
	return &ServiceMetrics{
		claims:   byResult("keyport_claims_total", "Domain claims (API and portal) by result; replayed: an earlier claim returned for its Idempotency-Key."),
		packages: byResult("keyport_key_package_downloads_total", "Key-package downloads by result."),
		webhooks: byResult("keyport_webhook_deliveries_total", "Webhook delivery attempts by result (ok, or error: retried with backoff)."),
		imports:  byResult("keyport_imports_total", "Module imports that ended, by result."),
		importLines: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyport_import_lines_total",
			Help: "Lines of import files checked so far (the progress of running imports)."}),
		importModules: prometheus.NewCounter(prometheus.CounterOpts{Name: "keyport_import_modules_total",
			Help: "Modules stored by imports that succeeded."}),
		importsRunning: prometheus.NewGauge(prometheus.GaugeOpts{Name: "keyport_imports_running",
			Help: "Module imports running now."}),
	}
}

func (m *ServiceMetrics) Claimed(r keyport.Result) { m.claims.WithLabelValues(string(r)).Inc() }
func (m *ServiceMetrics) KeyPackageServed(r keyport.Result) {
	m.packages.WithLabelValues(string(r)).Inc()
}
func (m *ServiceMetrics) WebhookDelivered(r keyport.Result) {
	m.webhooks.WithLabelValues(string(r)).Inc()
}
func (m *ServiceMetrics) ImportStarted() { m.importsRunning.Inc() }
func (m *ServiceMetrics) ImportLine()    { m.importLines.Inc() }

func (m *ServiceMetrics) ImportEnded(r keyport.Result, modules int) {
	m.importsRunning.Dec()
	m.imports.WithLabelValues(string(r)).Inc()
	m.importModules.Add(float64(modules))
}

func (m *ServiceMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.claims, m.packages, m.webhooks, m.imports, m.importLines, m.importModules, m.importsRunning}
}

// Describe and Collect make ServiceMetrics a prometheus.Collector.
func (m *ServiceMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

func (m *ServiceMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// MetricsHandler serves g in the Prometheus text format at GET /metrics,
// and 404 elsewhere. It is meant for its own listen address
// (--metrics-addr), never for the public one: what it shows is for the
// operator's monitoring, not for providers or the internet.
func MetricsHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	return mux
}
