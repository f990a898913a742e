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
	// lease is how long an admin session holds its module without a
	// request; wakeWait and wakeCheck bound the agents' long poll and its
	// database polling (replicas.go).
	lease, wakeWait, wakeCheck time.Duration
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
	if err := bindReplicaFlags(fs, cf); err != nil {
		return nil, err
	}
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
	if cf.lease <= 0 || cf.wakeWait <= 0 || cf.wakeCheck <= 0 {
		return nil, nil, fmt.Errorf("serve: --admin-lease, --wake-wait and --wake-check must be positive, got %s, %s, %s", cf.lease, cf.wakeWait, cf.wakeCheck)
	}
	hub := cardlink.NewWakeHub()
	// Wake-ups cross replicas on the database's bus (PostgreSQL), nil on SQLite.
	bus := a.store.WakeBus()
	wake := cardlink.ReplicaWake{Hub: hub, Bus: bus}
	a.svc.Trigger = wake
	if a.sms != nil {
		a.svc.Trigger = cardlink.Triggers{SMS: a.sms, Fallback: wake}
	}
	a.svc.Delivery.Lease = cf.lease
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
	if bus != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hub.Follow(ctx, bus, a.log)
		}()
	}
	var srv *cardlink.AdminServer
	if a.cfg.AdminAddr != "" {
		srv = cardlink.NewAdminServer(cardlink.AdminServerConfig{Service: a.svc, Wake: hub, Log: a.log,
			WakeWait: cf.wakeWait, WakeCheck: cf.wakeCheck,
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
