package cardlink

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/keyport/keyport"
)

// WebhookClientOptions tune NewWebhookClient.
type WebhookClientOptions struct {
	// Timeout bounds one request, from dial to the end of the answer
	// (default 5 s).
	Timeout time.Duration
	// AllowLoopback lets requests reach loopback addresses: a development
	// receiver on this machine (--dev-allow-loopback-webhooks). Every other
	// non-public address stays refused.
	AllowLoopback bool
	// Resolve returns a host name's addresses (default the system
	// resolver). Whatever it returns is checked when dialled.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// RootCAs, if set, are the only roots an HTTPS receiver's certificate
	// may chain to (default the system's): a test receiver's own CA.
	RootCAs *x509.CertPool
}

// ErrWebhookAddress is why a webhook connection was refused: the address
// is not public (keyport.WebhookAddrAllowed), or the port is not one a
// receiver may use (keyport.WebhookPortAllowed).
var ErrWebhookAddress = errors.New("webhook address not allowed")

// NewWebhookClient returns the HTTP client webhooks go out with. It only
// connects to public addresses, on 443 or a port from 1024 (loopback, when
// allowed, on any port): the dialer's Control checks the address of every
// connection, after name resolution, so a public name that resolves
// (or is re-bound) to 127.0.0.1, a private network or the cloud metadata
// address fails. It takes no proxy from the environment and follows no
// redirect: the 3xx is the answer, and a failed delivery.
func NewWebhookClient(o WebhookClientOptions) *http.Client {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	dialer := &net.Dialer{Timeout: timeout, Control: func(network, address string, _ syscall.RawConn) error {
		return checkWebhookDial(address, o.AllowLoopback)
	}}
	resolve := o.Resolve
	if resolve == nil {
		resolve = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if ips, err = resolve(ctx, host); err != nil {
			return nil, err
		} else if len(ips) == 0 {
			return nil, fmt.Errorf("webhook: %s has no address", host)
		}
		var errs []error
		for _, ip := range ips {
			c, err := dialer.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
			if err == nil {
				return c, nil
			}
			errs = append(errs, err)
		}
		return nil, errors.Join(errs...)
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           dial,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   timeout,
			ResponseHeaderTimeout: timeout,
			MaxIdleConnsPerHost:   2,
			TLSClientConfig:       &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
			IdleConnTimeout:       90 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// checkWebhookDial is the dialer's Control: address is the ip:port about
// to be connected.
func checkWebhookDial(address string, allowLoopback bool) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("webhook: refusing to connect to %s: %w", address, ErrWebhookAddress)
	}
	ip := ap.Addr().Unmap()
	if allowLoopback && ip.IsLoopback() {
		return nil
	}
	if err := keyport.WebhookAddrAllowed(ip); err != nil {
		return fmt.Errorf("webhook: refusing to connect to %s, a %v: %w", address, err, ErrWebhookAddress)
	}
	if err := keyport.WebhookPortAllowed(strconv.Itoa(int(ap.Port()))); err != nil {
		return fmt.Errorf("webhook: refusing to connect to %s: %v: %w", address, err, ErrWebhookAddress)
	}
	return nil
}
