package main

import (
	"context"
	"errors"
	"net"
	"sync"

	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/tlspsk"
)

// startCardLink wires card-link into `keyport serve`: module PSKs from the
// HSM, the handset agents' wake-up channel as the push trigger, the delivery
// worker (wake-ups, expiry, webhooks) and, when KEYPORT_ADMIN_ADDR is set,
// the GP Amendment B admin server on it. stop ends them all. accepting
// reports the admin server's listener for /healthz and /readyz (nil when
// there is no admin server).
func startCardLink(ctx context.Context, a *app) (stop func(), accepting func() error, err error) {
	hub := cardlink.NewWakeHub()
	a.svc.Link = a.hsm
	a.svc.Trigger = hub
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		(&cardlink.Dispatcher{Service: a.svc, Log: a.log}).Run(ctx)
	}()
	var srv *cardlink.AdminServer
	if a.cfg.AdminAddr != "" {
		srv = cardlink.NewAdminServer(cardlink.AdminServerConfig{Service: a.svc, Wake: hub, Log: a.log,
			TLS: tlspsk.ServerConfig{Legacy: a.cfg.AdminLegacyTLS}})
		ln, err := tlspsk.Listen("tcp", a.cfg.AdminAddr, srv.TLSConfig())
		if err != nil {
			cancel()
			wg.Wait()
			return nil, nil, err
		}
		a.log.Info("card-link admin server", "addr", ln.Addr().String(), "protocol", cardlink.Protocol,
			"legacy_tls", a.cfg.AdminLegacyTLS)
		accepting = srv.Accepting
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
	}, accepting, nil
}
