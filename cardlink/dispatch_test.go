package cardlink_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
)

// flakyHook fails its first `fail` requests with 500, then records events.
type flakyHook struct {
	mu     sync.Mutex
	fail   int
	calls  int
	events []*keyport.WebhookEvent
	check  func(body []byte, sig string) (*keyport.WebhookEvent, error)
	errs   []error
}

func (h *flakyHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	if h.calls <= h.fail {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	ev, err := h.check(body, r.Header.Get(keyport.WebhookSignatureHeader))
	if err != nil {
		h.errs = append(h.errs, err)
	}
	h.events = append(h.events, ev)
	w.WriteHeader(http.StatusOK)
}

func TestFailedJobIsToldToTheProviderByASignedWebhookRetriedUntilItIsTaken(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{Tick: 20 * time.Millisecond, DevLoopbackWebhooks: true})
	set, err := w.Svc.JWKS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hook := &flakyHook{fail: 2, check: func(b []byte, sig string) (*keyport.WebhookEvent, error) { return keyport.VerifyWebhook(b, sig, set) }}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	if _, err := w.Svc.SetWebhook(ctx, w.Prov, srv.URL); err != nil {
		t.Fatal(err)
	}
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSPutKey {
			return []byte{0x6A, 0x80}
		}
		return nil
	})
	if _, err := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK}, w.Card).Session(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		hook.mu.Lock()
		var failed *keyport.WebhookEvent
		for _, ev := range hook.events {
			if ev != nil && ev.Type == "job.failed" {
				failed = ev
			}
		}
		calls, errs := hook.calls, hook.errs
		hook.mu.Unlock()
		if len(errs) > 0 {
			t.Fatalf("webhook signature: %v", errs)
		}
		if failed != nil {
			if failed.Job.ID != w.Job.Ref || failed.Job.Result == nil || failed.Job.Result.SW != "6A80" || failed.DomainState != keyport.Assigned {
				t.Fatalf("job.failed event %+v %+v", failed, failed.Job.Result)
			}
			if calls < 3 {
				t.Fatalf("%d webhook calls: the two failures were not retried", calls)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no job.failed event after %d calls", calls)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
