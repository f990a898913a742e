package cardlink_test

import (
	"bufio"
	"encoding/hex"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
)

// The admin server with TLS 1.3 external PSK on (tlspsk.ServerConfig.TLS13)
// next to TLS 1.2.
func tls13World(t *testing.T) *cardlinktest.World {
	return cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{
		IdleTimeout: 500 * time.Millisecond, TLS: tlspsk.ServerConfig{TLS13: true}}})
}

func TestOpenSSLClientOnTLS13GetsTheAdminProtocolAndTheScript(t *testing.T) {
	w := tls13World(t)
	out := opensslPOST(t, w, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
	for _, want := range []string{"HTTP/1.1 200 OK", "X-Admin-Protocol: globalplatform-remote-admin/1.0",
		"X-Admin-Next-URI: /cardlink/s/", "Content-Type: " + cardlink.ContentTypeScript} {
		if !strings.Contains(out, want) {
			t.Errorf("answer lacks %q:\n%s", want, out)
		}
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobSent {
		t.Fatalf("job %s after the script went out", j.State)
	}
}

func TestTLS13AdminServerStillAnswersTLS12(t *testing.T) {
	w := tls13World(t)
	out := opensslPOST(t, w, "-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256")
	if !strings.Contains(out, "X-Admin-Protocol: globalplatform-remote-admin/1.0") {
		t.Fatalf("TLS 1.2 answer:\n%s", out)
	}
}

func TestOurTLS13ClientPOSTsToTheAdminServer(t *testing.T) {
	w := tls13World(t)
	c, err := tlspsk.Dial(ctx, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK,
		TLS13: true, MinVersion: tlspsk.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version() != "TLSv1.3" {
		t.Fatalf("negotiated %s", c.Version())
	}
	r := &rawConn{t: t, c: c, br: bufio.NewReader(c)}
	resp := r.do(firstPOST)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Admin-Protocol") != "globalplatform-remote-admin/1.0" {
		t.Fatalf("answer %d %v", resp.StatusCode, resp.Header)
	}
}

func TestOpenSSLClientOnTLS13WithAWrongPSKIsRefusedAndNothingChanges(t *testing.T) {
	w := tls13World(t)
	needOpenSSL(t)
	cmd := exec.Command("openssl", "s_client", "-connect", w.Link.Addr, "-psk", hex.EncodeToString(make([]byte, 16)),
		"-psk_identity", string(w.EID), "-tls1_3", "-quiet")
	cmd.Stdin = strings.NewReader(firstPOST)
	out, _ := cmd.CombinedOutput()
	if strings.Contains(string(out), "X-Admin-Protocol") || !strings.Contains(strings.ToLower(string(out)), "alert") {
		t.Fatalf("wrong PSK: %s", out)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobQueued {
		t.Fatalf("job %s", j.State)
	}
}
