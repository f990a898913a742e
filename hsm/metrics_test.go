package hsm_test

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyport/keyport/hsm/hsmtest"
)

// gather returns the registry's metrics by name.
func gather(t *testing.T, reg *prometheus.Registry) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// series returns the metric of family mf whose labels are all of want.
func series(mf *dto.MetricFamily, want map[string]string) *dto.Metric {
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		for k, v := range want {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

func TestCollectorTimesMechanismsAndCountsLostSessions(t *testing.T) {
	h, c, err := openCounting(t, hsmtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Init(ctx); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(h.Collector())
	if _, err := h.SignES256(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.SignES256(ctx, []byte("y")); err != nil {
		t.Fatal(err)
	}
	mfs := gather(t, reg)
	sign := series(mfs["keyport_hsm_operation_seconds"], map[string]string{"call": "sign", "mechanism": "CKM_ECDSA"})
	if sign == nil || sign.GetHistogram().GetSampleCount() != 2 {
		t.Fatalf("CKM_ECDSA sign histogram after two signatures: %v", sign)
	}
	if m := series(mfs["keyport_hsm_sessions"], map[string]string{"state": "in_use"}); m == nil || m.GetGauge().GetValue() != 0 {
		t.Errorf("sessions in use while idle: %v", m)
	}
	if m := series(mfs["keyport_hsm_sessions"], map[string]string{"state": "idle"}); m == nil || m.GetGauge().GetValue() < 1 {
		t.Errorf("idle sessions after two signatures: %v", m)
	}
	lost := func() float64 {
		m := series(gather(t, reg)["keyport_hsm_session_errors_total"], map[string]string{"cause": "session_lost"})
		if m == nil {
			t.Fatal("no session_lost series")
		}
		return m.GetCounter().GetValue()
	}
	before := lost()
	c.breakNextSign.Store(true)
	if _, err := h.SignES256(ctx, []byte("z")); err != nil {
		t.Fatal(err)
	}
	if d := lost() - before; d != 1 {
		t.Errorf("session_lost moved by %v over one broken session, want 1", d)
	}
}
