package cardlink

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/wait"
)

// Dispatcher is card-link's worker: on every tick it wakes the modules of
// due jobs (keyport.Service.WakeDue, with backoff), expires jobs whose
// module never answered, and starts the delivery of due signed webhooks,
// with retries. Every step works on the jobs table with conditional
// updates, so any number of replicas may run one.
//
// Webhooks go out on goroutines of their own: the tick never waits for a
// provider's endpoint. At most Concurrency providers are sent to at once,
// and each provider's events one at a time, oldest first.
type Dispatcher struct {
	Service *keyport.Service
	// Tick is the polling period (default 1 s).
	Tick time.Duration
	// HTTP sends webhooks (default NewWebhookClient with WebhookTimeout,
	// allowing loopback only as the service's
	// Delivery.DevLoopbackWebhooks does). A replacement must guard its
	// dials the same way.
	HTTP *http.Client
	// WebhookTimeout bounds one webhook request (default 5 s).
	WebhookTimeout time.Duration
	// Concurrency bounds the providers sent to at once (default 16).
	Concurrency int
	Log         *slog.Logger

	init   sync.Once
	client *http.Client
	mu     sync.Mutex
	busy   map[string]bool // providers whose webhooks are being sent
	wg     sync.WaitGroup
}

// perProviderClaim bounds one provider's webhooks taken in one tick.
const perProviderClaim = 8

// Run ticks until ctx ends, then waits for the webhooks in flight (their
// requests end with ctx).
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.Wait()
	wait.Every(ctx, d.Tick, d.RunOnce, func(err error) { d.log().Warn("card-link dispatch", "err", err) })
	return nil
}

// Wait returns once no webhook is in flight.
func (d *Dispatcher) Wait() { d.wg.Wait() }

func (d *Dispatcher) log() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.New(slog.DiscardHandler)
}

func (d *Dispatcher) setup() {
	d.init.Do(func() {
		d.client = d.HTTP
		if d.client == nil {
			d.client = NewWebhookClient(WebhookClientOptions{Timeout: d.WebhookTimeout, AllowLoopback: d.Service.Delivery.DevLoopbackWebhooks})
		}
		d.busy = map[string]bool{}
	})
}

// RunOnce does one round of wake-ups and expiries, and starts the due
// webhooks of providers that have none in flight; it does not wait for
// them (Wait does).
func (d *Dispatcher) RunOnce(ctx context.Context) error {
	d.setup()
	if _, err := d.Service.WakeDue(ctx, 200); err != nil {
		return fmt.Errorf("cardlink: wake due jobs: %w", err)
	}
	if _, err := d.Service.ExpireSent(ctx, 200); err != nil {
		return fmt.Errorf("cardlink: expire jobs: %w", err)
	}
	if err := d.startWebhooks(ctx); err != nil {
		return fmt.Errorf("cardlink: claim webhooks: %w", err)
	}
	return nil
}

func (d *Dispatcher) startWebhooks(ctx context.Context) error {
	limit := d.Concurrency
	if limit <= 0 {
		limit = 16
	}
	d.mu.Lock()
	busy := make([]string, 0, len(d.busy))
	for p := range d.busy {
		busy = append(busy, p)
	}
	d.mu.Unlock()
	if len(busy) >= limit {
		return nil
	}
	hooks, err := d.Service.ClaimWebhooksFor(ctx, keyport.WebhookClaim{Limit: 50, Busy: busy,
		MaxProviders: limit - len(busy), PerProvider: perProviderClaim})
	// Claimed webhooks are sent even if the claim stopped early: their
	// retries are scheduled already.
	var order []string
	byProvider := map[string][]keyport.WebhookDelivery{}
	for _, h := range hooks {
		if _, ok := byProvider[h.Job.ProviderID]; !ok {
			order = append(order, h.Job.ProviderID)
		}
		byProvider[h.Job.ProviderID] = append(byProvider[h.Job.ProviderID], h)
	}
	for _, p := range order {
		d.mu.Lock()
		d.busy[p] = true
		d.mu.Unlock()
		d.wg.Add(1)
		go func(p string, hooks []keyport.WebhookDelivery) {
			defer d.wg.Done()
			defer func() {
				d.mu.Lock()
				delete(d.busy, p)
				d.mu.Unlock()
			}()
			d.deliver(ctx, hooks)
		}(p, byProvider[p])
	}
	return err
}

// deliver sends one provider's webhooks in order. After a failure the
// rest are not tried now but retried after it, at the time their claim
// scheduled, so that the provider still gets its events in order.
func (d *Dispatcher) deliver(ctx context.Context, hooks []keyport.WebhookDelivery) {
	var failed error
	for i := range hooks {
		h := &hooks[i]
		sendErr := failed
		if sendErr == nil {
			sendErr = d.post(ctx, h)
		} else {
			sendErr = fmt.Errorf("not sent: an earlier event to this provider failed (%v)", failed)
		}
		if ctx.Err() != nil {
			return // shutting down: the claim's retry stands
		}
		if sendErr != nil {
			if failed == nil {
				failed = sendErr
				d.log().Info("webhook not delivered", "job", h.Job.Ref, "provider", h.Job.ProviderID, "attempt", h.Job.Attempts, "err", sendErr)
			}
		}
		if err := d.Service.WebhookSent(ctx, h, sendErr); err != nil {
			d.log().Warn("card-link dispatch: record webhook", "job", h.Job.Ref, "err", err)
		}
	}
}

// post sends one webhook: the event JSON, signed (keyport.WebhookSignatureHeader).
// Any 2xx is delivery; anything else, a redirect included, is retried.
func (d *Dispatcher) post(ctx context.Context, w *keyport.WebhookDelivery) error {
	// The URL was checked when it was set; check it again under this
	// process's policy (it may have been set under another).
	if _, err := keyport.CheckWebhookURL(w.URL, d.Service.Delivery.DevLoopbackWebhooks); err != nil {
		return fmt.Errorf("webhook URL refused: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(w.Body))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(keyport.WebhookSignatureHeader, w.Signature)
	req.Header.Set("User-Agent", "keyport-webhook/1")
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook POST: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		if loc := resp.Header.Get("Location"); resp.StatusCode/100 == 3 && loc != "" {
			return fmt.Errorf("webhook POST: %s (redirect to %.200s not followed)", resp.Status, loc)
		}
		return fmt.Errorf("webhook POST: %s", resp.Status)
	}
	return nil
}
