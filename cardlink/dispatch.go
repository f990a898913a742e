package cardlink

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/keyport/keyport"
)

// Dispatcher is card-link's worker: on every tick it wakes the modules of
// due jobs (keyport.Service.WakeDue, with backoff), expires jobs whose
// module never answered, and delivers signed webhooks with retries. Every
// step works on the jobs table with conditional updates, so any number of
// replicas may run one.
type Dispatcher struct {
	Service *keyport.Service
	// Tick is the polling period (default 1 s).
	Tick time.Duration
	// HTTP sends webhooks (default: a client with a 10 s timeout).
	HTTP *http.Client
	Log  *slog.Logger
}

// Run ticks until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	tick := d.Tick
	if tick <= 0 {
		tick = time.Second
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if err := d.RunOnce(ctx); err != nil && ctx.Err() == nil {
			d.log().Warn("card-link dispatch", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (d *Dispatcher) log() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.New(slog.DiscardHandler)
}

// RunOnce does one round of wake-ups, expiries and webhooks.
func (d *Dispatcher) RunOnce(ctx context.Context) error {
	if _, err := d.Service.WakeDue(ctx, 200); err != nil {
		return fmt.Errorf("cardlink: wake due jobs: %w", err)
	}
	if _, err := d.Service.ExpireSent(ctx, 200); err != nil {
		return fmt.Errorf("cardlink: expire jobs: %w", err)
	}
	hooks, err := d.Service.ClaimWebhooks(ctx, 50)
	for i := range hooks {
		sendErr := d.post(ctx, &hooks[i])
		if sendErr != nil {
			d.log().Info("webhook not delivered", "job", hooks[i].Job.Ref, "attempt", hooks[i].Job.Attempts, "err", sendErr)
		}
		if err := d.Service.WebhookSent(ctx, &hooks[i], sendErr); err != nil {
			return fmt.Errorf("cardlink: record webhook: %w", err)
		}
	}
	if err != nil {
		return fmt.Errorf("cardlink: claim webhooks: %w", err)
	}
	return nil
}

// post sends one webhook: the event JSON, signed (keyport.WebhookSignatureHeader).
// Any 2xx is delivery; anything else is retried.
func (d *Dispatcher) post(ctx context.Context, w *keyport.WebhookDelivery) error {
	client := d.HTTP
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(w.Body))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(keyport.WebhookSignatureHeader, w.Signature)
	req.Header.Set("User-Agent", "keyport-webhook/1")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook POST: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook POST: %s", resp.Status)
	}
	return nil
}
