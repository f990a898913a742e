package cardlink_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// hookWorld is a service with providers and their webhook events queued
// directly, as a job change queues them.
type hookWorld struct {
	*fixture.World
}

func newHookWorld(t *testing.T, devLoopback bool) *hookWorld {
	w := &hookWorld{fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)}
	w.Svc.Delivery = keyport.DeliveryPolicy{Backoff: time.Hour, DevLoopbackWebhooks: devLoopback}
	return w
}

func (w *hookWorld) provider(t *testing.T, name, hook string) keyport.Principal {
	t.Helper()
	p, _, _ := w.Provider(t, name, fixture.RSAKeys()[0])
	if _, err := w.Svc.SetWebhook(ctx, p, hook); err != nil {
		t.Fatalf("set webhook %q: %v", hook, err)
	}
	return p
}

// event queues a webhook event with the given ID for the provider and
// returns its job reference.
func (w *hookWorld) event(t *testing.T, p keyport.Principal, id string) string {
	t.Helper()
	b, _ := json.Marshal(keyport.WebhookEvent{ID: id, Type: "job.done", At: time.Now().UTC()})
	exp := time.Now().Add(time.Hour)
	j := &keyport.Job{Ref: keyport.NewID("job"), Kind: keyport.JobWebhook, ProviderID: p.ProviderID, State: keyport.JobQueued,
		NextRunAt: time.Now().UTC().Add(-time.Second), ExpiresAt: &exp, Event: b}
	if err := w.Store.CreateJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	return j.Ref
}

func (w *hookWorld) job(t *testing.T, ref string) *keyport.Job {
	t.Helper()
	j, err := w.Store.GetJob(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// countingListener accepts TCP connections on loopback and counts them.
func countingListener(t *testing.T) (net.Listener, *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln, &n
}

// A public name that resolves to 127.0.0.1 passes the check at save, and
// is refused when dialled: nothing reaches the local listener and the job
// says why. The same resolution with loopback allowed does reach it, so it
// is the dial check that stops the request.
func TestAWebhookNameResolvingToLoopbackIsRefusedAtDial(t *testing.T) {
	ln, accepted := countingListener(t)
	port := ln.Addr().(*net.TCPAddr).Port
	w := newHookWorld(t, false)
	p := w.provider(t, "Bank", "https://hooks.bank.example:"+strconv.Itoa(port)+"/keyport")
	resolve := func(_ context.Context, host string) ([]netip.Addr, error) {
		if host != "hooks.bank.example" {
			t.Errorf("resolved %q", host)
		}
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	ref := w.event(t, p, "evt_1")
	d := &cardlink.Dispatcher{Service: w.Svc, HTTP: cardlink.NewWebhookClient(cardlink.WebhookClientOptions{Resolve: resolve})}
	if err := d.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	j := w.job(t, ref)
	if j.State != keyport.JobQueued || j.Attempts != 1 || !strings.Contains(j.LastError, "refusing to connect to 127.0.0.1:"+strconv.Itoa(port)) ||
		!strings.Contains(j.LastError, "loopback") {
		t.Fatalf("job after the refused dial: %s attempts %d error %q", j.State, j.Attempts, j.LastError)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("the loopback listener accepted %d connections", n)
	}

	// Control: with loopback allowed the same name connects.
	due := *j
	due.NextRunAt = time.Now().UTC().Add(-time.Second)
	if err := w.Store.UpdateJob(ctx, &due, j.State, j.Attempts); err != nil {
		t.Fatal(err)
	}
	d2 := &cardlink.Dispatcher{Service: w.Svc, HTTP: cardlink.NewWebhookClient(cardlink.WebhookClientOptions{Resolve: resolve, AllowLoopback: true})}
	if err := d2.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	d2.Wait()
	if n := accepted.Load(); n == 0 {
		t.Fatalf("with loopback allowed nothing connected; job error %q", w.job(t, ref).LastError)
	}
}

// A URL saved before the check (or under another policy) to an address
// literal is refused when sent, without a connection.
func TestAStoredLoopbackWebhookURLIsNotSentWithoutTheOptIn(t *testing.T) {
	ln, accepted := countingListener(t)
	w := newHookWorld(t, false)
	p := w.provider(t, "Bank", "https://bank.example/keyport")
	if err := w.Store.SetWebhookURL(ctx, p.ProviderID, "http://"+ln.Addr().String()+"/keyport"); err != nil {
		t.Fatal(err)
	}
	ref := w.event(t, p, "evt_1")
	d := &cardlink.Dispatcher{Service: w.Svc}
	if err := d.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	if j := w.job(t, ref); j.State != keyport.JobQueued || !strings.Contains(j.LastError, "webhook URL refused") {
		t.Fatalf("job: %s %q", j.State, j.LastError)
	}
	if accepted.Load() != 0 {
		t.Fatal("a connection was made")
	}
}

// The provider's endpoint answers 307 to another local server: the
// redirect is not followed, and the delivery failed with the 307.
func TestAWebhookRedirectIsNotFollowed(t *testing.T) {
	var second atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		second.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	defer other.Close()
	var first atomic.Int32
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first.Add(1)
		http.Redirect(w, r, other.URL+"/stolen", http.StatusTemporaryRedirect)
	}))
	defer endpoint.Close()
	w := newHookWorld(t, true)
	p := w.provider(t, "Bank", endpoint.URL+"/keyport")
	ref := w.event(t, p, "evt_1")
	d := &cardlink.Dispatcher{Service: w.Svc}
	if err := d.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	if first.Load() != 1 || second.Load() != 0 {
		t.Fatalf("endpoint got %d requests, the redirect target %d", first.Load(), second.Load())
	}
	j := w.job(t, ref)
	if j.State != keyport.JobQueued || !strings.Contains(j.LastError, "307") || !strings.Contains(j.LastError, "not followed") {
		t.Fatalf("job after the redirect: %s %q", j.State, j.LastError)
	}
}

func TestTheWebhookClientTakesNoProxyFromTheEnvironment(t *testing.T) {
	tr, ok := cardlink.NewWebhookClient(cardlink.WebhookClientOptions{}).Transport.(*http.Transport)
	if !ok || tr.Proxy != nil {
		t.Fatalf("transport %T with a proxy function", tr)
	}
}

// Provider A's endpoint hangs; provider B's event, queued after, is
// delivered while A's request is still open, and A's next event waits for
// A's first: one request at a time per provider, in order.
func TestAHangingProviderEndpointDelaysNoOtherProvider(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	aEntered := make(chan struct{}, 10)
	var aReturned atomic.Bool
	var mu sync.Mutex
	var aGot []string
	a := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev keyport.WebhookEvent
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &ev)
		mu.Lock()
		aGot = append(aGot, ev.ID)
		mu.Unlock()
		aEntered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		aReturned.Store(true)
	}))
	defer a.Close()
	defer unblock()
	bGot := make(chan string, 10)
	b := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev keyport.WebhookEvent
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &ev)
		bGot <- ev.ID
	}))
	defer b.Close()

	w := newHookWorld(t, true)
	pa := w.provider(t, "Bank A", a.URL+"/keyport")
	pb := w.provider(t, "Bank B", b.URL+"/keyport")
	runCtx, cancel := context.WithCancel(ctx)
	d := &cardlink.Dispatcher{Service: w.Svc, Tick: 10 * time.Millisecond, WebhookTimeout: 10 * time.Minute}
	done := make(chan struct{})
	go func() { d.Run(runCtx); close(done) }()
	defer func() { cancel(); <-done }()

	w.event(t, pa, "evt_a1")
	select {
	case <-aEntered:
	case <-time.After(30 * time.Second):
		t.Fatal("A's first event never reached A")
	}
	w.event(t, pa, "evt_a2")
	w.event(t, pb, "evt_b1")
	select {
	case id := <-bGot:
		if id != "evt_b1" {
			t.Fatalf("B got %q", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("B's event was not delivered while A's endpoint hung")
	}
	if aReturned.Load() {
		t.Fatal("A's handler returned before B got its event")
	}
	mu.Lock()
	got := append([]string(nil), aGot...)
	mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("A got %v while its first request was open", got)
	}

	// A's endpoint answers: its second event follows its first.
	unblock()
	select {
	case <-aEntered:
	case <-time.After(30 * time.Second):
		t.Fatal("A's second event never reached A")
	}
	mu.Lock()
	got = append([]string(nil), aGot...)
	mu.Unlock()
	if len(got) != 2 || got[0] != "evt_a1" || got[1] != "evt_a2" {
		t.Fatalf("A got %v", got)
	}
}

// A public name whose address (an AAAA record, a DNS64 answer) is in a
// prefix that carries an IPv4 address a translator or tunnel would reach,
// or that is special-purpose, is refused when dialled; so is a public
// address on a port no receiver uses. Nothing is connected: the dial
// check refuses before the connection.
func TestWebhookDialRefusesIPv4EmbeddingPrefixesAndLowPorts(t *testing.T) {
	for _, c := range []struct{ addr, port string }{
		{"64:ff9b::a9fe:a9fe", "443"},   // well-known NAT64 of 169.254.169.254
		{"64:ff9b:1::a9fe:a9fe", "443"}, // local-use NAT64 (RFC 8215)
		{"64:ff9b:1::808:808", "443"},
		{"::ffff:0:a9fe:a9fe", "443"},                   // SIIT IPv4-translated
		{"2002:a9fe:a9fe::1", "443"},                    // 6to4
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "443"}, // Teredo
		{"fec0::1", "443"}, {"2001:db8::1", "443"}, {"192.0.2.1", "443"},
		{"93.184.215.14", "22"}, {"93.184.215.14", "6"}, {"2606:4700::1111", "25"},
	} {
		ip := netip.MustParseAddr(c.addr)
		cl := cardlink.NewWebhookClient(cardlink.WebhookClientOptions{Timeout: 2 * time.Second,
			Resolve: func(context.Context, string) ([]netip.Addr, error) { return []netip.Addr{ip}, nil }})
		req, _ := http.NewRequest(http.MethodPost, "https://hooks.bank.example:"+c.port+"/keyport", strings.NewReader("{}"))
		resp, err := cl.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		if !errors.Is(err, cardlink.ErrWebhookAddress) {
			t.Errorf("%s port %s: %v, want ErrWebhookAddress", c.addr, c.port, err)
		}
	}
}
