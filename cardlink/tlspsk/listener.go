package tlspsk

import (
	"context"
	"net"
)

// Listen listens on network and addr (as net.Listen) and returns a listener
// whose connections are the server side of TLS-PSK sessions with cfg. The
// config is checked, and its OpenSSL context built, before listening.
func Listen(network, addr string, cfg *ServerConfig) (net.Listener, error) {
	if err := checkServerConfig(cfg); err != nil {
		return nil, err
	}
	inner, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return &listener{Listener: inner, cfg: cfg}, nil
}

// NewListener wraps inner so that Accept returns the server side of
// TLS-PSK sessions with cfg. Accept does not run the handshake: the first
// Read, Write or Handshake on the returned *Conn does, so a slow card
// never blocks Accept.
func NewListener(inner net.Listener, cfg *ServerConfig) (net.Listener, error) {
	if err := checkServerConfig(cfg); err != nil {
		return nil, err
	}
	return &listener{Listener: inner, cfg: cfg}, nil
}

func checkServerConfig(cfg *ServerConfig) error {
	k, err := cfg.key()
	if err != nil {
		return err
	}
	return checkCtx(k)
}

type listener struct {
	net.Listener
	cfg *ServerConfig
}

// Accept waits for a connection and returns it as a *Conn.
func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return Server(c, l.cfg), nil
}

// Dial connects to addr and runs the client handshake with cfg, bounded by
// ctx and cfg.HandshakeTimeout. On failure the connection is closed.
func Dial(ctx context.Context, network, addr string, cfg *ClientConfig) (*Conn, error) {
	if _, err := cfg.key(); err != nil {
		return nil, err
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := Client(raw, cfg)
	if err := c.Handshake(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
