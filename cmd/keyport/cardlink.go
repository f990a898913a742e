package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/tlspsk"
)

// cardLinkFlags are serve's settings for webhook delivery.
type cardLinkFlags struct {
	webhookTimeout time.Duration
	loopbackHooks  bool
}

// bindCardLinkFlags registers the webhook flags on serve's flag set.
func bindCardLinkFlags(fs *flag.FlagSet) (*cardLinkFlags, error) {
	cf := &cardLinkFlags{}
	timeout, err := env("WEBHOOK_TIMEOUT", "5s")
	if err != nil {
		return nil, err
	}
	d, err := time.ParseDuration(timeout)
	if err != nil || d <= 0 {
		return nil, fmt.Errorf("config: KEYPORT_WEBHOOK_TIMEOUT must be a duration such as 5s, got %q", timeout)
	}
	loopback, err := env("DEV_ALLOW_LOOPBACK_WEBHOOKS", "")
	if err != nil {
		return nil, err
	}
	fs.DurationVar(&cf.webhookTimeout, "webhook-timeout", d, "bound of one webhook request (KEYPORT_WEBHOOK_TIMEOUT)")
	fs.BoolVar(&cf.loopbackHooks, "dev-allow-loopback-webhooks", loopback == "1" || loopback == "true",
		"development only: providers may set webhook URLs to loopback addresses, plain http included, and webhooks are sent there (KEYPORT_DEV_ALLOW_LOOPBACK_WEBHOOKS=1); other non-public addresses stay refused")
	return cf, nil
}

// startCardLink wires card-link into `keyport serve`: module PSKs from the
// HSM, the handset agents' wake-up channel as the push trigger, the delivery
// worker (wake-ups, expiry, webhooks) and, when KEYPORT_ADMIN_ADDR is set,
// the GP Amendment B admin server on it. stop ends them all. admin is the
// admin server (nil when there is none), for the probes and metrics. Webhooks go to public addresses only, unless
// cf allows a development receiver on loopback.
func startCardLink(ctx context.Context, a *app, cf *cardLinkFlags) (stop func(), admin *cardlink.AdminServer, err error) {
	if cf.webhookTimeout <= 0 {
		return nil, nil, fmt.Errorf("serve: --webhook-timeout must be positive, got %s", cf.webhookTimeout)
	}
	hub := cardlink.NewWakeHub()

	a.svc.Trigger = hub
	if a.sms != nil {
		a.svc.Trigger = cardlink.Triggers{SMS: a.sms, Fallback: hub}
	}
	a.svc.Delivery.DevLoopbackWebhooks = cf.loopbackHooks
	if cf.loopbackHooks {
		a.log.Warn("development mode: webhooks may go to loopback addresses (--dev-allow-loopback-webhooks)")
	}
	d := &cardlink.Dispatcher{Service: a.svc, Log: a.log, WebhookTimeout: cf.webhookTimeout}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.Run(ctx)
	}()
	var srv *cardlink.AdminServer
	if a.cfg.AdminAddr != "" {
		srv = cardlink.NewAdminServer(cardlink.AdminServerConfig{Service: a.svc, Wake: hub, Log: a.log,
			TLS: tlspsk.ServerConfig{Legacy: a.cfg.AdminLegacyTLS, TLS13: a.cfg.AdminTLS13}})
		ln, err := tlspsk.Listen("tcp", a.cfg.AdminAddr, srv.TLSConfig())
		if err != nil {
			cancel()
			wg.Wait()
			return nil, nil, err
		}
		if err := a.armSMS(ln.Addr()); err != nil {
			ln.Close()
			cancel()
			wg.Wait()
			return nil, nil, err
		}
		a.log.Info("card-link admin server", "addr", ln.Addr().String(), "protocol", cardlink.Protocol,
			"legacy_tls", a.cfg.AdminLegacyTLS, "tls13", a.cfg.AdminTLS13)
		a.adminAddr = ln.Addr().String()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				a.log.Error("card-link admin server", "err", err)
			}
		}()
	}
	return func() {
		cancel()
		if srv != nil {
			srv.Close()
		}
		wg.Wait()
	}, srv, nil
}
