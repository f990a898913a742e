package cardlink_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
)

// waitStat polls the server's stats until cond holds: the server counts a
// connection's end on its own goroutine, after the client saw it.
func waitStat(t *testing.T, w *cardlinktest.World, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s never happened: %+v", what, w.Link.Server.Stats())
		}
	}
}

func TestAdminCollectorCountsSessionsAndHandshakeFailuresByCause(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(w.Link.Server.Collector())
	fails := func(cause string) uint64 { return w.Link.Server.Stats().HandshakeFailures[cause] }

	if c, err := tlspsk.Dial(ctx, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: make([]byte, 16)}); err == nil {
		c.Close()
		t.Fatal("a wrong PSK completed the handshake")
	}
	waitStat(t, w, "the wrong PSK counted", func() bool { return fails("psk_mismatch") == 1 })

	base := fmt.Sprintf("89049032%022d", 777)
	cd, err := keyport.EIDCheckDigits(base)
	if err != nil {
		t.Fatal(err)
	}
	stranger := base + cd
	if c, err := tlspsk.Dial(ctx, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: stranger, PSK: w.PSK}); err == nil {
		c.Close()
		t.Fatal("an unknown identity completed the handshake")
	}
	waitStat(t, w, "the unknown identity counted", func() bool { return fails("unknown_identity") == 1 })

	r := dial(t, w)
	if resp := r.do(firstPOST); resp.StatusCode != 200 {
		t.Fatalf("first POST: %d", resp.StatusCode)
	}
	st := w.Link.Server.Stats()
	if st.Active != 1 || st.Sessions != 1 || st.HandshakeFailures["psk_mismatch"] != 1 || st.HandshakeFailures["timeout"] != 0 {
		t.Fatalf("stats during a session: %+v", st)
	}
	if n := gathered(t, reg, "keyport_admin_sessions_active")[0].GetGauge().GetValue(); n != 1 {
		t.Errorf("keyport_admin_sessions_active = %v during a session", n)
	}
	r.c.Close()
	waitStat(t, w, "the session's end", func() bool { return w.Link.Server.Stats().Active == 0 })
	if n := len(gathered(t, reg, "keyport_admin_handshake_failures_total")); n != 5 {
		t.Errorf("%d handshake failure series, want one per cause (5)", n)
	}
}

// gathered returns the series of the registry's metric name.
func gathered(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// hookCounts is a keyport.Metrics that counts webhook deliveries only.
type hookCounts struct {
	mu sync.Mutex
	n  map[keyport.Result]int
}

func (h *hookCounts) Claimed(keyport.Result)          {}
func (h *hookCounts) KeyPackageServed(keyport.Result) {}
func (h *hookCounts) ImportStarted()                  {}
func (h *hookCounts) ImportLine()                     {}
func (h *hookCounts) ImportEnded(keyport.Result, int) {}
func (h *hookCounts) WebhookDelivered(r keyport.Result) {
	h.mu.Lock()
	h.n[r]++
	h.mu.Unlock()
}

func TestWebhookDeliveriesAreCountedByResult(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }))
	t.Cleanup(ok.Close)
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	t.Cleanup(broken.Close)
	w := newHookWorld(t, true)
	counts := &hookCounts{n: map[keyport.Result]int{}}
	w.Svc.Metrics = counts
	a := w.provider(t, "Bank A", ok.URL+"/hook")
	b := w.provider(t, "Bank B", broken.URL+"/hook")
	w.event(t, a, "evt_a")
	w.event(t, b, "evt_b")
	d := &cardlink.Dispatcher{Service: w.Svc}
	if err := d.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	if counts.n[keyport.ResultOK] != 1 || counts.n[keyport.ResultError] != 1 || len(counts.n) != 2 {
		t.Fatalf("webhook deliveries by result: %v, want one ok and one error", counts.n)
	}
}
