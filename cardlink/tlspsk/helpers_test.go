package tlspsk_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

// Test keys: the identity format of GP Amd B session parameter tag 85
// ("Test123" in ram_http.json) with a 16-byte AES key of type '85'.
var (
	testIdentity = "Test123"
	testPSK      = mustHex("404142434445464748494a4b4c4d4e4f")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// keyring is a PSK lookup over a fixed map, as an admin server's key store
// would be.
func keyring(keys map[string][]byte) func(string) ([]byte, error) {
	return func(identity string) ([]byte, error) {
		k, ok := keys[identity]
		if !ok {
			return nil, fmt.Errorf("no key for %q", identity)
		}
		return bytes.Clone(k), nil // tlspsk wipes what it is given
	}
}

func serverConfig() *tlspsk.ServerConfig {
	return &tlspsk.ServerConfig{PSK: keyring(map[string][]byte{testIdentity: testPSK})}
}

func clientConfig() *tlspsk.ClientConfig {
	return &tlspsk.ClientConfig{Identity: testIdentity, PSK: testPSK}
}

// legacyServerConfig and legacyClientConfig turn Legacy on: TLS 1.0 and
// 1.1 and the CBC-SHA suites, which the defaults refuse.
func legacyServerConfig() *tlspsk.ServerConfig {
	c := serverConfig()
	c.Legacy = true
	return c
}

func legacyClientConfig() *tlspsk.ClientConfig {
	c := clientConfig()
	c.Legacy = true
	return c
}

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t testing.TB) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.c, client
}

// handshakePair runs both handshakes concurrently and returns both errors.
func handshakePair(t testing.TB, scfg *tlspsk.ServerConfig, ccfg *tlspsk.ClientConfig) (srv, cli *tlspsk.Conn, serr, cerr error) {
	t.Helper()
	sc, cc := tcpPair(t)
	srv, cli = tlspsk.Server(sc, scfg), tlspsk.Client(cc, ccfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Handshake(ctx) }()
	cerr = cli.Handshake(ctx)
	if cerr != nil {
		// The server may be waiting for more; a closed client ends it.
		cli.Close()
	}
	serr = <-done
	return srv, cli, serr, cerr
}

// connectedPair returns two Conns with a completed handshake, closed at
// the end of the test.
func connectedPair(t testing.TB, scfg *tlspsk.ServerConfig, ccfg *tlspsk.ClientConfig) (srv, cli *tlspsk.Conn) {
	t.Helper()
	srv, cli, serr, cerr := handshakePair(t, scfg, ccfg)
	t.Cleanup(func() { srv.Close(); cli.Close() })
	if serr != nil || cerr != nil {
		t.Fatalf("handshake: server %v, client %v", serr, cerr)
	}
	return srv, cli
}

// errorsMentionNoKey fails if an error text carries the PSK in hex or raw.
func errorsMentionNoKey(t *testing.T, psk []byte, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err == nil {
			continue
		}
		msg := err.Error()
		if bytes.Contains([]byte(msg), psk) ||
			bytes.Contains(bytes.ToLower([]byte(msg)), []byte(hex.EncodeToString(psk))) {
			t.Errorf("error text contains the PSK: %q", msg)
		}
	}
}

func isErr(err, target error) bool { return errors.Is(err, target) }
