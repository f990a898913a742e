package cardlink_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }

var ctx = context.Background()

const firstPOST = "POST /server/adminagent?cmd=1 HTTP/1.1\r\nHost: keyport\r\nX-Admin-Protocol: globalplatform-remote-admin/1.0\r\nX-Admin-From: agent-1\r\nContent-Length: 0\r\n\r\n"

func needOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed: apt-get install -y openssl")
	}
}

// opensslPOST sends one request with openssl s_client and returns what the
// server answered (s_client ends when the idle server closes).
func opensslPOST(t *testing.T, w *cardlinktest.World, args ...string) string {
	t.Helper()
	needOpenSSL(t)
	base := []string{"s_client", "-connect", w.Link.Addr, "-psk", hex.EncodeToString(w.PSK), "-psk_identity", string(w.EID),
		"-quiet", "-ign_eof"}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "openssl", append(base, args...)...)
	cmd.Stdin = strings.NewReader(firstPOST)
	out, err := cmd.CombinedOutput()
	if err != nil && !strings.Contains(string(out), "HTTP/1.1") {
		t.Fatalf("openssl s_client: %v\n%s", err, out)
	}
	return string(out)
}

func TestOpenSSLClientCompletesTheHandshakeAndItsPOSTGetsTheAdminProtocolAndTheScript(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{IdleTimeout: 500 * time.Millisecond}})
	out := opensslPOST(t, w, "-tls1_2", "-cipher", "PSK-AES128-CBC-SHA256")
	for _, want := range []string{"HTTP/1.1 200 OK", "X-Admin-Protocol: globalplatform-remote-admin/1.0",
		"X-Admin-Next-URI: /cardlink/s/", "Content-Type: " + cardlink.ContentTypeScript,
		"X-Admin-Targeted-Application: //aid/A000000151/53504101"} {
		if !strings.Contains(out, want) {
			t.Errorf("answer lacks %q:\n%s", want, out)
		}
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobSent {
		t.Fatalf("job %s after the script went out", j.State)
	}
}

func TestOpenSSLClientOnTLS10WithPSKAES128CBCSHAGetsTheAdminProtocolWithLegacyTLS(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{IdleTimeout: 500 * time.Millisecond,
		TLS: tlspsk.ServerConfig{Legacy: true}}})
	out := opensslPOST(t, w, "-tls1", "-cipher", "PSK-AES128-CBC-SHA:@SECLEVEL=0")
	if !strings.Contains(out, "X-Admin-Protocol: globalplatform-remote-admin/1.0") {
		t.Fatalf("TLS 1.0 answer:\n%s", out)
	}
}

func TestOpenSSLClientWithAWrongPSKIsRefusedAndNothingChanges(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.PSK = make([]byte, 16)
	needOpenSSL(t)
	out, _ := exec.Command("openssl", "s_client", "-connect", w.Link.Addr, "-psk", hex.EncodeToString(w.PSK),
		"-psk_identity", string(w.EID), "-tls1_2", "-quiet").CombinedOutput()
	if strings.Contains(string(out), "X-Admin-Protocol") || !strings.Contains(strings.ToLower(string(out)), "alert") {
		t.Fatalf("wrong PSK: %s", out)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobQueued {
		t.Fatalf("job %s", j.State)
	}
}

// rawConn is a TLS-PSK connection speaking raw HTTP, as a broken card would.
type rawConn struct {
	t  *testing.T
	c  *tlspsk.Conn
	br *bufio.Reader
}

func dial(t *testing.T, w *cardlinktest.World) *rawConn {
	t.Helper()
	c, err := tlspsk.Dial(ctx, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) do(req string) *http.Response {
	r.t.Helper()
	if _, err := io.WriteString(r.c, req); err != nil {
		r.t.Fatal(err)
	}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		r.t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func post(uri string, headers map[string]string, body []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: keyport\r\n", uri)
	for k, v := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(body))
	b.Write(body)
	return b.String()
}

var adminHeaders = map[string]string{cardlink.HeaderProtocol: cardlink.Protocol, cardlink.HeaderFrom: "agent-1"}

func with(extra map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range adminHeaders {
		m[k] = v
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// sent opens a dialog and returns the queued script's Next-URI and the
// answer the module gives to it (the RAM handler played by hand).
func sent(t *testing.T, w *cardlinktest.World) (next string, answer []byte) {
	t.Helper()
	rc := dial(t, w)
	if _, err := io.WriteString(rc.c, firstPOST); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get(cardlink.HeaderNextURI) == "" {
		t.Fatalf("first POST: %d", resp.StatusCode)
	}
	return resp.Header.Get(cardlink.HeaderNextURI), run(t, w, resp.Header.Get(cardlink.HeaderTarget), script, false)
}

// run plays the card's RAM handler: select the target, run the script,
// return the response script (AB definite or AF indefinite).
func run(t *testing.T, w *cardlinktest.World, targetHeader string, script []byte, definite bool) []byte {
	t.Helper()
	cs, err := gp.ParseCommandScript(script)
	if err != nil {
		t.Fatal(err)
	}
	target, err := gp.ParseTargetedApplication(targetHeader)
	if err != nil {
		t.Fatal(err)
	}
	w.Card.Card.Process(gp.Select(target).Bytes())
	out := gp.ResponseScript{Definite: definite, HasExecuted: definite, Executed: len(cs.Commands)}
	for _, c := range cs.Commands {
		r, _ := gp.ParseResponse(w.Card.Card.Process(c.Bytes()))
		out.Responses = append(out.Responses, r)
	}
	return out.Bytes()
}

func TestBadAdminRequestsGetClearStatusesAndLeaveTheJobAsItWas(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	next, good := sent(t, w)
	answer := gp.ResponseScript{Responses: []gp.Response{{SW: gp.SWOK}}}.Bytes()
	sid := strings.Split(strings.TrimPrefix(next, "/cardlink/s/"), "/")[0]
	for _, tc := range []struct {
		name   string
		req    string
		status int
	}{
		{"a GET is not an admin POST", "GET " + next + " HTTP/1.1\r\nHost: k\r\nX-Admin-Protocol: " + cardlink.Protocol + "\r\n\r\n", 405},
		{"no X-Admin-Protocol", post(next, map[string]string{cardlink.HeaderScriptStatus: "ok"}, nil), 400},
		{"another admin protocol", post(next, with(map[string]string{cardlink.HeaderProtocol: "gsma/rsp/v2.2.0"}), nil), 400},
		{"an unknown script status", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "fine"}), nil), 400},
		{"a response body as text/plain", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": "text/plain"}), answer), 415},
		{"the command-script media type instead of the response one", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeScript}), answer), 415},
		{"version 2.0 of the response media type", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok",
			"Content-Type": "application/vnd.globalplatform.card-content-mgt-response;version=2.0"}), answer), 415},
		{"a truncated TLV", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}), []byte{0xAF, 0x80, 0x23, 0x05, 0x90}), 400},
		{"a response script that is not a TS 102 226 template", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}), []byte{0x30, 0x02, 0x90, 0x00}), 400},
		{"more R-APDUs than C-APDUs", post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}),
			gp.ResponseScript{Responses: make([]gp.Response, 5)}.Bytes()), 400},
		{"a body without a script status", post(next, with(map[string]string{"Content-Type": cardlink.ContentTypeResponse}), answer), 400},
		{"a session URI of another job", post("/cardlink/s/"+sid+"/job_nope?req=2", with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}), answer), 404},
		{"garbage instead of HTTP", "HELLO CARD\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp := dial(t, w).do(tc.req); resp.StatusCode != tc.status || resp.Header.Get(cardlink.HeaderProtocol) != cardlink.Protocol {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, resp.Header.Get(cardlink.HeaderProtocol), tc.status)
			}
			if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobSent || j.LastError != "" {
				t.Fatalf("job %s %q after a bad request", j.State, j.LastError)
			}
		})
	}
	// The module's real answer still completes the job afterwards.
	resp := dial(t, w).do(post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}), good))
	if resp.StatusCode != 204 {
		t.Fatalf("good answer: %d", resp.StatusCode)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobDone {
		t.Fatalf("job %s", j.State)
	}
}

func TestAnOversizedBodyIsRefusedWith413(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	next, _ := sent(t, w)
	big := make([]byte, cardlink.MaxBody+1)
	resp := dial(t, w).do(post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}), big))
	if resp.StatusCode != 413 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestChunkedScriptAndAChunkedDefiniteABAnswerCompleteTheJob(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{Chunked: true}})
	rc := dial(t, w)
	if _, err := io.WriteString(rc.c, firstPOST); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	script, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("chunked script: %d %v", resp.StatusCode, resp.TransferEncoding)
	}
	// Play the RAM handler by hand; answer with a definite AB template in
	// two chunks.
	body := run(t, w, resp.Header.Get(cardlink.HeaderTarget), script, true)
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: k\r\nX-Admin-Protocol: %s\r\nX-Admin-Script-Status: ok\r\n"+
		"Content-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n",
		resp.Header.Get(cardlink.HeaderNextURI), cardlink.Protocol, cardlink.ContentTypeResponse,
		10, body[:10], len(body)-10, body[10:])
	if end := rc.do(req); end.StatusCode != 204 {
		t.Fatalf("after the answer: %d", end.StatusCode)
	}
	if j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); j.State != keyport.JobDone {
		t.Fatalf("job %s: %s", j.State, j.LastError)
	}
}

func TestAPOSTWithoutQueuedJobsEndsTheSessionWith204(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	if _, err := w.Svc.CancelJob(ctx, w.Prov, w.Job.Ref); err != nil {
		t.Fatal(err)
	}
	resp := dial(t, w).do(firstPOST)
	if resp.StatusCode != 204 || resp.Header.Get(cardlink.HeaderProtocol) != cardlink.Protocol {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// recordCounter is a TCP proxy that counts the TLS application_data
// records (content type 23, RFC 5246 §6.2.1) the server sends.
type recordCounter struct {
	addr    string
	records atomic.Int32
}

func countRecords(t *testing.T, target string) *recordCounter {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rc := &recordCounter{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			go func() { io.Copy(s, c); s.Close() }()
			go func() {
				defer c.Close()
				hdr := make([]byte, 5)
				for {
					if _, err := io.ReadFull(s, hdr); err != nil {
						return
					}
					body := make([]byte, binary.BigEndian.Uint16(hdr[3:]))
					if _, err := io.ReadFull(s, body); err != nil {
						return
					}
					if hdr[0] == 23 {
						rc.records.Add(1)
					}
					if _, err := c.Write(append(hdr, body...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return rc
}

func TestEveryHTTPResponseGoesOutInOneTLSRecordEvenWhenChunked(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{Chunked: true}})
	proxy := countRecords(t, w.Link.Addr)
	rep, err := agent.New(agent.Config{Server: proxy.addr, Identity: string(w.EID), PSK: w.PSK}, w.Card).Session(ctx)
	if err != nil || rep.Scripts != 1 {
		t.Fatalf("session: %+v %v", rep, err)
	}
	// Two responses: the script (200, chunked) and the end (204).
	if n := proxy.records.Load(); n != 2 {
		t.Fatalf("%d application records for 2 HTTP responses", n)
	}
}

func TestScriptAimedAtAnUnknownSSDIsReportedAsUnknownApplicationAndFails(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSSelect {
			return []byte{0x6A, 0x82}
		}
		return nil
	})
	if _, err := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK}, w.Card).Session(ctx); err != nil {
		t.Fatal(err)
	}
	j, _ := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref)
	if v := j.View(); j.State != keyport.JobFailed || v.Result.ScriptStatus != cardlink.StatusUnknownApplication {
		t.Fatalf("job %s %+v", j.State, v.Result)
	}
}
