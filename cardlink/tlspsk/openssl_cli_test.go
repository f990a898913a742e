package tlspsk_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/tlspsk"
)

// The openssl command-line tool is the independent peer: a different
// program driving the TLS-PSK handshake from the other side.

func opensslBinary(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl binary not found; apt-get install -y openssl")
	}
	return path
}

const adminResponse = "HTTP/1.1 200 OK\r\n" +
	"X-Admin-Protocol: globalplatform-remote-admin/1.0\r\n" +
	"X-Admin-Next-URI: /Download?req=1\r\n" +
	"Content-Type: application/vnd.globalplatform.card-content-mgt;version=1.0\r\n" +
	"Content-Length: 11\r\n\r\n" +
	"\xAE\x80\x22\x05\x80\xCA\x00\x85\x00\x00\x00"

// serveOneAdminExchange accepts one connection, reads an HTTP request head
// and answers adminResponse in one Write, then closes with close_notify.
func serveOneAdminExchange(t *testing.T, ln net.Listener) <-chan string {
	got := make(chan string, 1)
	go func() {
		defer close(got)
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("Accept: %v", err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		head, err := readHead(bufio.NewReader(c))
		if err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		if _, err := io.WriteString(c, adminResponse); err != nil {
			t.Errorf("server write: %v", err)
			return
		}
		tc := c.(*tlspsk.Conn)
		got <- tc.Identity() + " " + tc.Version() + " " + tc.Cipher() + "\n" + head
	}()
	return got
}

func readHead(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		line, err := r.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			return b.String(), err
		}
		if line == "\r\n" {
			return b.String(), nil
		}
	}
}

func TestServerAnswersOpenSSLClient(t *testing.T) {
	openssl := opensslBinary(t)
	for _, tc := range []struct{ version, flag, cipher string }{
		{"TLSv1.2", "-tls1_2", "PSK-AES128-CBC-SHA256"},
		{"TLSv1.2", "-tls1_2", "PSK-AES256-CBC-SHA"},
		// otaman's card: TLS 1.0 with '008C'.
		{"TLSv1", "-tls1", "PSK-AES128-CBC-SHA@SECLEVEL=0"},
	} {
		t.Run(tc.version+"/"+tc.cipher, func(t *testing.T) {
			ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", legacyServerConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := serveOneAdminExchange(t, ln)

			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, openssl, "s_client",
				"-connect", ln.Addr().String(),
				"-psk", hex.EncodeToString(testPSK), "-psk_identity", testIdentity,
				tc.flag, "-cipher", tc.cipher,
				"-tlsextdebug", // dumps the ServerHello extensions
				"-ign_eof")     // wait for the response after stdin ends
			cmd.Stdin = strings.NewReader("POST /server/adminagent?cmd=1 HTTP/1.1\r\nHost: x\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nContent-Length: 0\r\n\r\n")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("s_client: %v\n%s", err, out)
			}
			head := <-got
			cipher := strings.TrimSuffix(tc.cipher, "@SECLEVEL=0")
			if !strings.HasPrefix(head, testIdentity+" "+tc.version+" "+cipher+"\n") ||
				!strings.Contains(head, "POST /server/adminagent?cmd=1 HTTP/1.1\r\n") {
				t.Errorf("server saw %q", head)
			}
			if !bytes.Contains(out, []byte(adminResponse)) {
				t.Errorf("s_client output lacks the HTTP response:\n%s", out)
			}
			if !bytes.Contains(out, []byte("Cipher is "+cipher)) {
				t.Errorf("s_client did not negotiate %s:\n%s", cipher, out)
			}
			if !bytes.Contains(out, []byte(`TLS server extension "renegotiation info"`)) {
				t.Errorf("s_client printed no ServerHello extensions; the checks below would prove nothing:\n%s", out)
			}
			// PROTOCOLS.md §3.5: cards abort on either. s_client offers
			// both, so an echo or a ticket would show here.
			for _, banned := range []string{"encrypt-then-mac", "session ticket", "TLS session ticket lifetime hint"} {
				if bytes.Contains(out, []byte(banned)) {
					t.Errorf("s_client output shows %q:\n%s", banned, out)
				}
			}
		})
	}
}

func TestOpenSSLClientWithWrongPSKIsRefused(t *testing.T) {
	openssl := opensslBinary(t)
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", serverConfig())
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
	cmd := exec.CommandContext(ctx, openssl, "s_client", "-connect", ln.Addr().String(),
		"-psk", "00112233445566778899aabbccddeeff", "-psk_identity", testIdentity,
		"-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256")
	cmd.Stdin = strings.NewReader("secret request\n")
	out, _ := cmd.CombinedOutput()
	if err := <-errc; !isErr(err, tlspsk.ErrPSKMismatch) {
		t.Errorf("server Read = %v, want ErrPSKMismatch", err)
	}
	if !bytes.Contains(out, []byte("bad record mac")) {
		t.Errorf("s_client output lacks the bad_record_mac alert:\n%s", out)
	}
}

func TestClientTalksToOpenSSLServer(t *testing.T) {
	openssl := opensslBinary(t)
	for _, tc := range []struct {
		version uint16
		name    string
		cipher  string
	}{
		{tlspsk.VersionTLS12, "TLSv1.2", "PSK-AES128-CBC-SHA256"},
		{tlspsk.VersionTLS10, "TLSv1", "PSK-AES128-CBC-SHA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			// -rev: an echo server that answers each line reversed.
			cmd := exec.CommandContext(ctx, openssl, "s_server",
				"-accept", "127.0.0.1:0", "-naccept", "1", "-nocert", "-rev",
				"-psk", hex.EncodeToString(testPSK), "-psk_identity", testIdentity,
				"-cipher", tc.cipher+"@SECLEVEL=0")
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

			ccfg := legacyClientConfig()
			ccfg.Ciphers = tc.cipher
			ccfg.MinVersion, ccfg.MaxVersion = tc.version, tc.version
			cli, err := tlspsk.Dial(ctx, "tcp", addr, ccfg)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer cli.Close()
			if cli.Version() != tc.name || cli.Cipher() != tc.cipher {
				t.Errorf("negotiated %s %s", cli.Version(), cli.Cipher())
			}
			if _, err := io.WriteString(cli, "keyport\n"); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(cli).ReadString('\n')
			if err != nil || line != "tropyek\n" {
				t.Fatalf("s_server -rev answered %q, %v", line, err)
			}
		})
	}
}

// acceptAddress waits for s_server's "ACCEPT host:port" line.
func acceptAddress(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "ACCEPT "); ok {
			return addr, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", io.ErrUnexpectedEOF
}
