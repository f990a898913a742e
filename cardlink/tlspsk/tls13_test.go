package tlspsk_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

// TLS 1.3 with an external PSK (RFC 8446 2.2), next to TLS 1.2.

func tls13Server() *tlspsk.ServerConfig {
	c := serverConfig()
	c.TLS13 = true
	return c
}

func tls13Client() *tlspsk.ClientConfig {
	c := clientConfig()
	c.TLS13 = true
	return c
}

func TestTLS13ClientAndServerNegotiateTLS13WithAES128GCM(t *testing.T) {
	srv, cli := connectedPair(t, tls13Server(), tls13Client())
	for _, c := range []*tlspsk.Conn{srv, cli} {
		if c.Version() != "TLSv1.3" || c.Cipher() != "TLS_AES_128_GCM_SHA256" {
			t.Errorf("negotiated %s %s", c.Version(), c.Cipher())
		}
	}
	if srv.Identity() != testIdentity {
		t.Errorf("server identity %q", srv.Identity())
	}
	go io.WriteString(cli, "POST / HTTP/1.1\r\n\r\n")
	line, err := bufio.NewReader(srv).ReadString('\n')
	if err != nil || line != "POST / HTTP/1.1\r\n" {
		t.Fatalf("server read %q, %v", line, err)
	}
}

func TestTLS13IsOffNextToTLS12ByDefaultAndTheServerOffersBoth(t *testing.T) {
	// A TLS 1.3 client meets a default server: TLS 1.2.
	srv, cli := connectedPair(t, serverConfig(), tls13Client())
	if srv.Version() != "TLSv1.2" || cli.Version() != "TLSv1.2" {
		t.Errorf("TLS13 client, default server: %s / %s", srv.Version(), cli.Version())
	}
	// A TLS 1.2 client meets a TLS13 server: TLS 1.2 too.
	srv, cli = connectedPair(t, tls13Server(), clientConfig())
	if srv.Version() != "TLSv1.2" || cli.Cipher() != "PSK-AES128-GCM-SHA256" {
		t.Errorf("default client, TLS13 server: %s %s", srv.Version(), cli.Cipher())
	}
	// A client that insists on TLS 1.3 cannot talk to a default server.
	only13 := tls13Client()
	only13.MinVersion = tlspsk.VersionTLS13
	s, c, serr, cerr := handshakePair(t, serverConfig(), only13)
	defer s.Close()
	defer c.Close()
	if serr == nil || cerr == nil {
		t.Fatalf("TLS 1.3 only client with a TLS 1.2 server: %v / %v", serr, cerr)
	}
	// TLS 1.3 needs the flag; only SHA-256 suites carry the PSK.
	bad := []*tlspsk.ServerConfig{
		{PSK: keyring(nil), MaxVersion: tlspsk.VersionTLS13},
		{PSK: keyring(nil), TLS13: true, Ciphersuites: "TLS_AES_256_GCM_SHA384"},
	}
	for _, cfg := range bad {
		if _, err := tlspsk.Listen("tcp", "127.0.0.1:0", cfg); err == nil {
			t.Errorf("Listen accepted %+v", *cfg)
		}
	}
}

func TestTLS13WrongPSKAndUnknownIdentityFailAlike(t *testing.T) {
	wrong := tls13Client()
	wrong.PSK = mustHex("00000000000000000000000000000001")
	srv, cli, serr, cerr := handshakePair(t, tls13Server(), wrong)
	srv.Close()
	cli.Close()
	if !errors.Is(serr, tlspsk.ErrPSKMismatch) || !errors.Is(cerr, tlspsk.ErrPSKMismatch) {
		t.Errorf("wrong PSK: server %v, client %v", serr, cerr)
	}
	errorsMentionNoKey(t, testPSK, serr, cerr)
	errorsMentionNoKey(t, wrong.PSK, serr, cerr)

	unknown := tls13Client()
	unknown.Identity = "card-not-provisioned"
	srv, cli, serr, cerr2 := handshakePair(t, tls13Server(), unknown)
	srv.Close()
	cli.Close()
	if !errors.Is(serr, tlspsk.ErrUnknownIdentity) {
		t.Errorf("unknown identity: server %v", serr)
	}
	if !errors.Is(cerr2, tlspsk.ErrPSKMismatch) || errors.Is(cerr2, tlspsk.ErrUnknownIdentity) {
		t.Errorf("unknown identity: client %v, want what a wrong PSK gives", cerr2)
	}
	var a, b *tlspsk.Error
	if errors.As(cerr, &a) && errors.As(cerr2, &b) && a.OpenSSL != b.OpenSSL {
		t.Errorf("the client tells an unknown identity (%q) from a wrong PSK (%q)", b.OpenSSL, a.OpenSSL)
	}
}

func TestOpenSSLClientOnTLS13CompletesAnAdminExchange(t *testing.T) {
	openssl := opensslBinary(t)
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", tls13Server())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := serveOneAdminExchange(t, ln)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", ln.Addr().String(),
		"-tls1_3", "-psk", hex.EncodeToString(testPSK), "-psk_identity", testIdentity,
		"-ciphersuites", "TLS_AES_128_GCM_SHA256", "-msg", "-ign_eof")
	cmd.Stdin = strings.NewReader("POST /server/adminagent?cmd=1 HTTP/1.1\r\nHost: x\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nContent-Length: 0\r\n\r\n")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("s_client: %v\n%s", err, out)
	}
	head := <-got
	if !strings.HasPrefix(head, testIdentity+" TLSv1.3 TLS_AES_128_GCM_SHA256\n") ||
		!strings.Contains(head, "POST /server/adminagent?cmd=1 HTTP/1.1\r\n") {
		t.Errorf("server saw %q", head)
	}
	if !bytes.Contains(out, []byte(adminResponse)) || !bytes.Contains(out, []byte("TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256")) {
		t.Errorf("s_client output:\n%s", out)
	}
	// -msg prints every handshake message: no ticket may arrive.
	if !bytes.Contains(out, []byte("ServerHello")) || bytes.Contains(out, []byte("NewSessionTicket")) || bytes.Contains(out, []byte("New Session Ticket")) {
		t.Errorf("s_client saw a session ticket (or printed no handshake messages):\n%s", out)
	}
}

func TestOpenSSLClientOnTLS13WithWrongPSKIsRefused(t *testing.T) {
	openssl := opensslBinary(t)
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", tls13Server())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		_, err = c.Read(make([]byte, 10))
		errc <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", ln.Addr().String(), "-tls1_3",
		"-psk", "00112233445566778899aabbccddeeff", "-psk_identity", testIdentity)
	cmd.Stdin = strings.NewReader("secret request\n")
	out, _ := cmd.CombinedOutput()
	if err := <-errc; !isErr(err, tlspsk.ErrPSKMismatch) {
		t.Errorf("server Read = %v, want ErrPSKMismatch", err)
	}
	if !bytes.Contains(out, []byte("alert")) || bytes.Contains(out, []byte("Cipher is TLS_AES")) {
		t.Errorf("s_client output shows no refusal:\n%s", out)
	}
}

func TestTLS13ClientTalksToOpenSSLServer(t *testing.T) {
	openssl := opensslBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, openssl, "s_server",
		"-accept", "127.0.0.1:0", "-naccept", "1", "-nocert", "-rev", "-tls1_3",
		"-psk", hex.EncodeToString(testPSK), "-psk_identity", testIdentity)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	addr, err := acceptAddress(stdout)
	if err != nil {
		t.Fatalf("s_server did not start: %v\n%s", err, stderr.String())
	}
	go io.Copy(io.Discard, stdout)
	cli, err := tlspsk.Dial(ctx, "tcp", addr, tls13Client())
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer cli.Close()
	if cli.Version() != "TLSv1.3" || cli.Cipher() != "TLS_AES_128_GCM_SHA256" {
		t.Errorf("negotiated %s %s", cli.Version(), cli.Cipher())
	}
	if _, err := io.WriteString(cli, "keyport\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(cli).ReadString('\n')
	if err != nil || line != "tropyek\n" {
		t.Fatalf("s_server -rev answered %q, %v", line, err)
	}
}
