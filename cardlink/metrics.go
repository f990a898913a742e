package cardlink

import (
	"context"
	"errors"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/tlspsk"
)

// Handshake failures, by cause: the label values of
// keyport_admin_handshake_failures_total.
const (
	hsUnknownIdentity = iota // no module has the PSK identity (or it is malformed)
	hsPSKUnavailable         // the module is known but its PSK could not be had (HSM, database)
	hsPSKMismatch            // the client holds another key
	hsTimeout                // not done within HandshakeTimeout
	hsOther                  // anything else: a protocol error, a reset
	numHandshakeCauses
)

var handshakeCauses = [numHandshakeCauses]string{"unknown_identity", "psk_unavailable", "psk_mismatch", "timeout", "other"}

// handshakeCause classifies a failed server handshake.
func handshakeCause(err error) int {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return hsTimeout
	case errors.Is(err, keyport.ErrNotFound), errors.Is(err, keyport.ErrInvalid):
		return hsUnknownIdentity
	case errors.Is(err, tlspsk.ErrUnknownIdentity):
		return hsPSKUnavailable
	case errors.Is(err, tlspsk.ErrPSKMismatch):
		return hsPSKMismatch
	}
	return hsOther
}

var (
	adminConnsDesc    = prometheus.NewDesc("keyport_admin_connections", "Open connections of the card-link admin server (handshaking or in a session).", nil, nil)
	adminActiveDesc   = prometheus.NewDesc("keyport_admin_sessions_active", "Admin sessions past their TLS-PSK handshake, now open.", nil, nil)
	adminSessionsDesc = prometheus.NewDesc("keyport_admin_sessions_total", "Admin sessions whose TLS-PSK handshake succeeded.", nil, nil)
	adminRefusedDesc  = prometheus.NewDesc("keyport_admin_refused_total", "Connections closed at accept, by reason: connection_cap (MaxConns, MaxConnsPerAddr) or handshake_rate.",
		[]string{"reason"}, nil)
	adminHandshakeDesc = prometheus.NewDesc("keyport_admin_handshake_failures_total", "Failed TLS-PSK handshakes by cause: unknown_identity, psk_unavailable, psk_mismatch, timeout, other.",
		[]string{"cause"}, nil)
	adminAcceptingDesc = prometheus.NewDesc("keyport_admin_listener_accepting", "1 while a Serve loop of the admin server accepts connections, else 0.", nil, nil)
)

// Collector returns the admin server's Prometheus metrics: open connections
// and sessions, refusals and handshake failures by cause. No label carries
// an identity, EID or address.
func (s *AdminServer) Collector() prometheus.Collector { return adminCollector{s} }

type adminCollector struct{ s *AdminServer }

func (c adminCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{adminConnsDesc, adminActiveDesc, adminSessionsDesc, adminRefusedDesc, adminHandshakeDesc, adminAcceptingDesc} {
		ch <- d
	}
}

func (c adminCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(adminConnsDesc, prometheus.GaugeValue, float64(st.Conns))
	ch <- prometheus.MustNewConstMetric(adminActiveDesc, prometheus.GaugeValue, float64(st.Active))
	ch <- prometheus.MustNewConstMetric(adminSessionsDesc, prometheus.CounterValue, float64(st.Sessions))
	ch <- prometheus.MustNewConstMetric(adminRefusedDesc, prometheus.CounterValue, float64(st.OverCap), "connection_cap")
	ch <- prometheus.MustNewConstMetric(adminRefusedDesc, prometheus.CounterValue, float64(st.OverRate), "handshake_rate")
	for _, cause := range handshakeCauses {
		ch <- prometheus.MustNewConstMetric(adminHandshakeDesc, prometheus.CounterValue, float64(st.HandshakeFailures[cause]), cause)
	}
	accepting := 0.0
	if c.s.Accepting() == nil {
		accepting = 1
	}
	ch <- prometheus.MustNewConstMetric(adminAcceptingDesc, prometheus.GaugeValue, accepting)
}
