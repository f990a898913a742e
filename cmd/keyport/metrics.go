package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/web"
)

// readyChecks are /readyz's checks of the database besides the HSM's and
// the admin listener's, which web adds itself.
func readyChecks(a *app) []web.ReadyCheck {
	return []web.ReadyCheck{
		{Name: "database", Check: a.store.Ping},
		{Name: "migrations", Check: a.store.CheckSchema},
	}
}

// metricsRegistry is serve's one registry: the Go runtime and the process,
// the use cases' counters (a.svc.Metrics, a *web.ServiceMetrics), and each
// adapter's own collector.
func metricsRegistry(a *app, admin *cardlink.AdminServer) (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		a.hsm.Collector(),
		a.store.Collector(),
	}
	if sm, ok := a.svc.Metrics.(*web.ServiceMetrics); ok {
		cs = append(cs, sm)
	}
	if admin != nil {
		cs = append(cs, admin.Collector())
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("serve: metrics: %w", err)
		}
	}
	return reg, nil
}

// startMetrics serves /metrics on --metrics-addr, when set, until stop.
// Without it nothing is registered and the HSM and store stay untimed.
func startMetrics(a *app, admin *cardlink.AdminServer) (stop func(), err error) {
	if a.cfg.MetricsAddr == "" {
		return func() {}, nil
	}
	reg, err := metricsRegistry(a, admin)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("serve: metrics listener: %w", err)
	}
	srv := &http.Server{Handler: web.MetricsHandler(reg), ReadHeaderTimeout: web.ReadHeaderTimeout,
		ReadTimeout: web.ReadTimeout, WriteTimeout: web.WriteTimeout, IdleTimeout: web.IdleTimeout,
		MaxHeaderBytes: web.MaxHeaderBytes}
	a.log.Info("metrics serving", "addr", "http://"+ln.Addr().String()+"/metrics")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("metrics listener", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
