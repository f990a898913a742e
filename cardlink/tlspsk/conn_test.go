package tlspsk_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

var suites = []string{"PSK-AES128-CBC-SHA256", "PSK-AES128-CBC-SHA", "PSK-AES256-CBC-SHA"}

var versions = []struct {
	v    uint16
	name string
}{
	{tlspsk.VersionTLS10, "TLSv1"},
	{tlspsk.VersionTLS11, "TLSv1.1"},
	{tlspsk.VersionTLS12, "TLSv1.2"},
}

func TestHandshakeWithEachSuiteAndVersionExchangesDataAndCloseNotify(t *testing.T) {
	for _, suite := range suites {
		for _, ver := range versions {
			if strings.HasSuffix(suite, "SHA256") && ver.v < tlspsk.VersionTLS12 {
				continue // RFC 5487 §3.2: SHA-256 suites are TLS 1.2 only
			}
			t.Run(suite+"/"+ver.name, func(t *testing.T) {
				ccfg := legacyClientConfig()
				ccfg.Ciphers = suite
				ccfg.MinVersion, ccfg.MaxVersion = ver.v, ver.v
				srv, cli := connectedPair(t, legacyServerConfig(), ccfg)

				for _, c := range []*tlspsk.Conn{srv, cli} {
					if c.Cipher() != suite || c.Version() != ver.name {
						t.Errorf("negotiated %s %s, want %s %s", c.Cipher(), c.Version(), suite, ver.name)
					}
				}
				if srv.Identity() != testIdentity {
					t.Errorf("server Identity() = %q, want %q", srv.Identity(), testIdentity)
				}

				req := []byte("POST /server/adminagent?cmd=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
				if _, err := cli.Write(req); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(req))
				if _, err := io.ReadFull(srv, got); err != nil || !bytes.Equal(got, req) {
					t.Fatalf("server read %q, %v", got, err)
				}
				resp := []byte("HTTP/1.1 204 No Content\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\n\r\n")
				if _, err := srv.Write(resp); err != nil {
					t.Fatal(err)
				}
				got = make([]byte, len(resp))
				if _, err := io.ReadFull(cli, got); err != nil || !bytes.Equal(got, resp) {
					t.Fatalf("client read %q, %v", got, err)
				}

				// close_notify: the server sees a clean EOF.
				if err := cli.Close(); err != nil {
					t.Fatalf("client Close: %v", err)
				}
				if n, err := srv.Read(make([]byte, 10)); n != 0 || err != io.EOF {
					t.Fatalf("server Read after client Close = %d, %v; want 0, io.EOF", n, err)
				}
			})
		}
	}
}

func TestServerPrefersItsOwnCipherOrder(t *testing.T) {
	ccfg := legacyClientConfig()
	ccfg.Ciphers = "PSK-AES256-CBC-SHA:PSK-AES128-CBC-SHA:PSK-AES128-CBC-SHA256"
	srv, _ := connectedPair(t, legacyServerConfig(), ccfg)
	if srv.Cipher() != "PSK-AES128-CBC-SHA256" {
		t.Fatalf("cipher %s, want the server's first choice PSK-AES128-CBC-SHA256", srv.Cipher())
	}
	if srv.SSLOptions()&tlspsk.OpCipherServerPreference == 0 {
		t.Fatal("SSL_OP_CIPHER_SERVER_PREFERENCE not set")
	}
}

func TestDefaultsAreTLS12WithGCMThenCCMThenCBCSHA256(t *testing.T) {
	for _, tc := range []struct{ offer, want string }{
		{"", "PSK-AES128-GCM-SHA256"},
		{"PSK-AES128-CBC-SHA256:PSK-AES128-CCM:PSK-AES128-GCM-SHA256", "PSK-AES128-GCM-SHA256"},
		{"PSK-AES128-CBC-SHA256:PSK-AES128-CCM", "PSK-AES128-CCM"},
		{"PSK-AES128-CBC-SHA256", "PSK-AES128-CBC-SHA256"},
	} {
		ccfg := clientConfig()
		ccfg.Ciphers = tc.offer
		srv, cli := connectedPair(t, serverConfig(), ccfg)
		if srv.Cipher() != tc.want || srv.Version() != "TLSv1.2" || cli.Cipher() != tc.want {
			t.Errorf("client offering %q: server %s %s, client %s; want %s over TLSv1.2", tc.offer, srv.Cipher(), srv.Version(), cli.Cipher(), tc.want)
		}
	}
}

func TestDefaultServerRefusesTLS10AndCBCSHAAndLegacyAcceptsThem(t *testing.T) {
	for name, ccfg := range map[string]*tlspsk.ClientConfig{
		"TLS 1.0": {Identity: testIdentity, PSK: testPSK, Legacy: true, MinVersion: tlspsk.VersionTLS10, MaxVersion: tlspsk.VersionTLS10},
		"TLS 1.1": {Identity: testIdentity, PSK: testPSK, Legacy: true, MinVersion: tlspsk.VersionTLS11, MaxVersion: tlspsk.VersionTLS11},
		"CBC-SHA": {Identity: testIdentity, PSK: testPSK, Legacy: true, Ciphers: "PSK-AES128-CBC-SHA:PSK-AES256-CBC-SHA"},
	} {
		srv, cli, serr, cerr := handshakePair(t, serverConfig(), ccfg)
		srv.Close()
		cli.Close()
		if serr == nil || cerr == nil {
			t.Errorf("%s: default server handshake succeeded (server %v, client %v)", name, serr, cerr)
		}
		srv, cli, serr, cerr = handshakePair(t, legacyServerConfig(), ccfg)
		srv.Close()
		cli.Close()
		if serr != nil || cerr != nil {
			t.Errorf("%s: legacy server: server %v, client %v", name, serr, cerr)
		}
	}
}

func TestConnectionOptionsDisableTicketsEncryptThenMACRenegotiationCompression(t *testing.T) {
	srv, cli := connectedPair(t, serverConfig(), clientConfig())
	want := uint64(tlspsk.OpNoTicket | tlspsk.OpNoEncryptThenMAC | tlspsk.OpNoRenegotiation |
		tlspsk.OpNoCompression | tlspsk.OpDontInsertEmptyFragment)
	for name, c := range map[string]*tlspsk.Conn{"server": srv, "client": cli} {
		if got := c.SSLOptions(); got&want != want {
			t.Errorf("%s options %#x lack %#x", name, got, want&^got)
		}
	}
}

func TestWrongPSKFailsOnBothSidesWithoutData(t *testing.T) {
	ccfg := clientConfig()
	ccfg.PSK = mustHex("00000000000000000000000000000001")
	srv, cli, serr, cerr := handshakePair(t, serverConfig(), ccfg)
	defer srv.Close()
	defer cli.Close()
	if !errors.Is(serr, tlspsk.ErrPSKMismatch) {
		t.Errorf("server error %v, want ErrPSKMismatch", serr)
	}
	if !errors.Is(cerr, tlspsk.ErrPSKMismatch) {
		t.Errorf("client error %v, want ErrPSKMismatch", cerr)
	}
	var e *tlspsk.Error
	if !errors.As(serr, &e) || e.OpenSSL == "" || !strings.HasPrefix(serr.Error(), "tlspsk: handshake") {
		t.Errorf("server error %q lacks the op or OpenSSL's text", serr)
	}
	errorsMentionNoKey(t, testPSK, serr, cerr)
	errorsMentionNoKey(t, ccfg.PSK, serr, cerr)

	if _, err := cli.Write([]byte("secret")); err == nil {
		t.Error("client Write after a failed handshake succeeded")
	}
	if n, err := srv.Read(make([]byte, 10)); n != 0 || err == nil {
		t.Errorf("server Read after a failed handshake = %d, %v", n, err)
	}
}

func TestUnknownIdentityIsRefusedOnTheServerAndLooksLikeAWrongPSKToTheClient(t *testing.T) {
	ccfg := clientConfig()
	ccfg.Identity = "card-not-provisioned"
	srv, cli, serr, cerr := handshakePair(t, serverConfig(), ccfg)
	defer srv.Close()
	defer cli.Close()
	if !errors.Is(serr, tlspsk.ErrUnknownIdentity) || !strings.Contains(serr.Error(), "unknown PSK identity") {
		t.Errorf("server error %v, want ErrUnknownIdentity", serr)
	}
	if !strings.Contains(serr.Error(), `no key for "card-not-provisioned"`) {
		t.Errorf("server error %q does not carry the lookup's cause", serr)
	}
	// No unknown_psk_identity alert: the client cannot tell an unknown
	// identity from a registered one with another key.
	if !errors.Is(cerr, tlspsk.ErrPSKMismatch) || errors.Is(cerr, tlspsk.ErrUnknownIdentity) {
		t.Errorf("client error %v, want ErrPSKMismatch as for a wrong PSK", cerr)
	}
	if srv.Identity() != "card-not-provisioned" {
		t.Errorf("server Identity() = %q after refusal, want the refused identity", srv.Identity())
	}
}

func TestPSKLookupPanicRefusesTheIdentity(t *testing.T) {
	scfg := &tlspsk.ServerConfig{PSK: func(string) ([]byte, error) { panic("key store exploded") }}
	srv, cli, serr, cerr := handshakePair(t, scfg, clientConfig())
	defer srv.Close()
	defer cli.Close()
	if !errors.Is(serr, tlspsk.ErrUnknownIdentity) || !strings.Contains(serr.Error(), "panicked") {
		t.Errorf("server error %v", serr)
	}
	if cerr == nil {
		t.Error("client handshake succeeded")
	}
}

func TestHandshakeTimesOutWithASilentClient(t *testing.T) {
	sc, cc := tcpPair(t)
	defer cc.Close() // connected, says nothing
	scfg := serverConfig()
	scfg.HandshakeTimeout = 100 * time.Millisecond
	srv := tlspsk.Server(sc, scfg)
	defer srv.Close()
	err := srv.Handshake(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Handshake = %v, want context.DeadlineExceeded", err)
	}
	// The failure is final, also for Read.
	if _, rerr := srv.Read(make([]byte, 1)); !errors.Is(rerr, context.DeadlineExceeded) {
		t.Fatalf("Read after a timed-out handshake = %v", rerr)
	}
}

func TestHandshakeStopsWhenTheContextIsCancelled(t *testing.T) {
	sc, cc := tcpPair(t)
	defer sc.Close()
	cli := tlspsk.Client(cc, clientConfig())
	defer cli.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if err := cli.Handshake(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Handshake = %v, want context.Canceled", err)
	}
}

func TestReadTimeoutLeavesTheConnectionUsable(t *testing.T) {
	srv, cli := connectedPair(t, serverConfig(), clientConfig())
	srv.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := srv.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read = %v, want a timeout", err)
	}
	srv.SetReadDeadline(time.Time{})
	if _, err := cli.Write([]byte("late")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "late" {
		t.Fatalf("Read after timeout = %q, %v", buf, err)
	}
}

func TestCloseUnblocksAConcurrentRead(t *testing.T) {
	srv, _ := connectedPair(t, serverConfig(), clientConfig())
	done := make(chan error, 1)
	go func() {
		_, err := srv.Read(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	srv.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after Close")
	}
	if err := srv.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close = %v, want net.ErrClosed", err)
	}
}

func TestLargeWritesAreCutInto16KiBRecordsAndReassembled(t *testing.T) {
	srv, cli := connectedPair(t, serverConfig(), clientConfig())
	msg := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80000 bytes
	go func() { srv.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(cli, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
}

func TestConfigErrorsAreReportedBeforeListening(t *testing.T) {
	for name, cfg := range map[string]*tlspsk.ServerConfig{
		"nil PSK":                {},
		"TLS 1.3":                {PSK: keyring(nil), MaxVersion: 0x0304},
		"min above max":          {PSK: keyring(nil), MinVersion: tlspsk.VersionTLS12, MaxVersion: tlspsk.VersionTLS10},
		"unknown cipher":         {PSK: keyring(nil), Ciphers: "NO-SUCH-CIPHER"},
		"TLS 1.0 without Legacy": {PSK: keyring(nil), MinVersion: tlspsk.VersionTLS10},
	} {
		if ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", cfg); err == nil {
			ln.Close()
			t.Errorf("%s: Listen succeeded", name)
		} else if !strings.HasPrefix(err.Error(), "tlspsk: ") {
			t.Errorf("%s: error %q lacks the tlspsk prefix", name, err)
		}
	}
	if _, err := tlspsk.Dial(context.Background(), "tcp", "127.0.0.1:1", &tlspsk.ClientConfig{Identity: "x"}); err == nil ||
		!strings.Contains(err.Error(), "PSK") {
		t.Errorf("Dial without a PSK = %v", err)
	}
}

func TestListenAndDialRunOneAdminExchange(t *testing.T) {
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", serverConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil {
			t.Error(err)
			return
		}
		c.Write(bytes.ToUpper(buf[:n]))
		if id := c.(*tlspsk.Conn).Identity(); id != testIdentity {
			t.Errorf("Identity() = %q", id)
		}
	}()
	cli, err := tlspsk.Dial(context.Background(), "tcp", ln.Addr().String(), clientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	cli.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(cli, buf); err != nil || string(buf) != "HELLO" {
		t.Fatalf("got %q, %v", buf, err)
	}
	wg.Wait()
}

func TestWorksOverAnyNetConnSuchAsNetPipe(t *testing.T) {
	a, b := net.Pipe()
	srv, cli := tlspsk.Server(a, serverConfig()), tlspsk.Client(b, clientConfig())
	defer srv.Close()
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake(context.Background()) }()
	if err := cli.Handshake(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	go cli.Write([]byte("hi"))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v", buf, err)
	}
	// net.Pipe has no buffer: the server must read the close_notify.
	eof := make(chan error, 1)
	go func() { _, err := io.ReadAll(srv); eof <- err }()
	if err := cli.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-eof; err != nil {
		t.Fatalf("server saw %v, want a clean EOF", err)
	}
}

// The key the PSK callback returns is wiped once OpenSSL has copied it, on
// TLS 1.2 and 1.3, after a handshake that succeeds and one that fails, so
// that no clear PSK stays in the Go heap until it is collected.
func TestServerWipesTheKeyItIsGiven(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tls13  bool
		client []byte
	}{
		{"TLS 1.2", false, testPSK},
		{"TLS 1.3", true, testPSK},
		{"TLS 1.2, wrong client key", false, mustHex("00000000000000000000000000000001")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var given [][]byte
			scfg := serverConfig()
			scfg.TLS13 = tc.tls13
			scfg.PSK = func(string) ([]byte, error) {
				k := bytes.Clone(testPSK)
				given = append(given, k)
				return k, nil
			}
			ccfg := clientConfig()
			ccfg.TLS13, ccfg.PSK = tc.tls13, tc.client
			srv, cli, serr, _ := handshakePair(t, scfg, ccfg)
			defer srv.Close()
			defer cli.Close()
			if ok := bytes.Equal(tc.client, testPSK); ok != (serr == nil) {
				t.Fatalf("server handshake: %v", serr)
			}
			if len(given) == 0 {
				t.Fatal("the PSK callback was not called")
			}
			for i, k := range given {
				if !bytes.Equal(k, make([]byte, len(k))) {
					t.Errorf("key %d the callback returned is still %X after the handshake", i+1, k)
				}
			}
		})
	}
}
