package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/hsm/hsmtest"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeAnswersMetricsOnKEYPORT_METRICS_ADDROnlyAndReadyzChecksEveryDependency(t *testing.T) {
	capture(t)
	dir := t.TempDir()
	addr, adminAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	t.Setenv("KEYPORT_ADMIN_ADDR", adminAddr)
	t.Setenv("KEYPORT_METRICS_ADDR", metricsAddr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data-dir", filepath.Join(dir, "data"), "--hsm", hsmtest.New(t), "--addr", addr})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	// Wait for the admin server (the last to start before the HTTP
	// listeners): an unknown module's handshake fails as a wrong PSK does.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		c, err := tlspsk.Dial(ctx, "tcp", adminAddr, &tlspsk.ClientConfig{Identity: eid(7), PSK: make([]byte, 16)})
		if err == nil {
			c.Close()
			t.Fatal("an unknown module completed the handshake")
		}
		if errors.Is(err, tlspsk.ErrPSKMismatch) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin server on %s: %v", adminAddr, err)
		}
	}
	var code int
	var body string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body = resp.StatusCode, string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the public listener never answered")
		}
	}
	if code != 200 || body != `{"status":"ok","checks":{"admin_listener":"ok","database":"ok","hsm":"ok","migrations":"ok"}}`+"\n" {
		t.Errorf("/readyz: %d %s", code, body)
	}
	if code, _ := httpGet(t, "http://"+addr+"/metrics"); code != 404 {
		t.Errorf("/metrics on the public listener: %d, want 404", code)
	}

	var mfs map[string]*dto.MetricFamily
	var text string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, text = httpGet(t, "http://"+metricsAddr+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics: %d %s", code, text)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		parsed, err := p.TextToMetricFamilies(strings.NewReader(text))
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		mfs = parsed
		// The server counts the failed handshake on its own goroutine.
		if failures(mfs, "unknown_identity") >= 1 || time.Now().After(deadline) {
			break
		}
	}
	if n := failures(mfs, "unknown_identity"); n < 1 {
		t.Errorf("unknown_identity handshake failures: %v, want at least 1", n)
	}
	for _, name := range []string{"keyport_claims_total", "keyport_jobs", "keyport_hsm_sessions", "keyport_hsm_operation_seconds",
		"keyport_db_query_seconds", "keyport_admin_connections", "keyport_admin_listener_accepting", "go_goroutines"} {
		if mfs[name] == nil {
			t.Errorf("no %s", name)
		}
	}
	if strings.Contains(text, eid(7)) {
		t.Error("/metrics names the EID of a handshake")
	}
}

func failures(mfs map[string]*dto.MetricFamily, cause string) float64 {
	for _, m := range mfs["keyport_admin_handshake_failures_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "cause" && l.GetValue() == cause {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
