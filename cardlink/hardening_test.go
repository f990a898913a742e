package cardlink_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/internal/fixture"
)

// acceptErrors is a slog handler that reports the admin server's accept
// errors on a channel.
type acceptErrors struct {
	slog.Handler
	errs chan string
}

func (h acceptErrors) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "admin accept failed; retrying" {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				select {
				case h.errs <- a.Value.String():
				default:
				}
			}
			return true
		})
	}
	return nil
}

func (h acceptErrors) Enabled(context.Context, slog.Level) bool { return true }
func (h acceptErrors) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h acceptErrors) WithGroup(string) slog.Handler            { return h }

const emfileEnv = "KEYPORT_TEST_ADMIN_EMFILE"

// TestAcceptRecoversFromDescriptorExhaustion lowers RLIMIT_NOFILE and uses
// up every descriptor, so that accept fails with EMFILE; once descriptors
// are free again, the waiting connection and a new openssl s_client one
// are served. It runs in a child process (the test binary again) so that
// the limit disturbs no other test.
func TestAcceptRecoversFromDescriptorExhaustion(t *testing.T) {
	if os.Getenv(emfileEnv) != "1" {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, os.Args[0], "-test.run=^TestAcceptRecoversFromDescriptorExhaustion$", "-test.count=1", "-test.v",
			"-test.timeout=4m")
		cmd.Env = append(os.Environ(), emfileEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !bytes.Contains(out, []byte("--- PASS: TestAcceptRecoversFromDescriptorExhaustion")) ||
			!bytes.Contains(out, []byte("accept failed with: ")) {
			t.Fatalf("child test: %v\n%s", err, out)
		}
		return
	}
	needOpenSSL(t)
	errs := make(chan string, 1)
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{
		Log: slog.New(acceptErrors{Handler: slog.DiscardHandler, errs: errs}), IdleTimeout: 500 * time.Millisecond}})
	// One handshake first, so that the database and HSM sessions are open.
	dial(t, w).c.Close()

	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	open, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := old
	low.Cur = uint64(len(open) + 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	// Fill the table, then give one descriptor back for the client's socket.
	var fill []int
	release := func() {
		for _, fd := range fill {
			syscall.Close(fd)
		}
		fill = nil
	}
	t.Cleanup(release)
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if errors.Is(err, syscall.EMFILE) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		fill = append(fill, fd)
	}
	syscall.Close(fill[len(fill)-1])
	fill = fill[:len(fill)-1]
	raw, err := net.Dial("tcp", w.Link.Addr)
	if err != nil {
		t.Fatalf("dial with one descriptor left: %v", err)
	}
	defer raw.Close()
	// The connection waits in the backlog: the server cannot accept it.
	msg := <-errs
	if !strings.Contains(msg, "too many open files") {
		t.Fatalf("accept error %q, want EMFILE", msg)
	}
	t.Logf("accept failed with: %s", msg)

	release()
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old)
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := tlspsk.Client(raw, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
	if err := c.Handshake(hctx); err != nil {
		t.Fatalf("the connection that waited for accept: %v", err)
	}
	c.Close()
	out := opensslPOST(t, w, "-tls1_2")
	if !strings.Contains(out, "HTTP/1.1 200 OK") || !strings.Contains(out, "X-Admin-Protocol: "+cardlink.Protocol) {
		t.Fatalf("openssl s_client after the descriptors came back:\n%s", out)
	}
}

// handshakeAll runs a client handshake on each connection at once and
// returns how many completed.
func handshakeAll(t *testing.T, w *cardlinktest.World, conns []net.Conn) (ok int, failed []error) {
	t.Helper()
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, raw := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := tlspsk.Client(raw, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
			err := c.Handshake(hctx)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else {
				failed = append(failed, err)
			}
		}()
	}
	wg.Wait()
	return ok, failed
}

func dialRaw(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	return conns
}

func TestThousandIdleConnectionsFromOneAddressAreCutToThePerAddressCap(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{
		HandshakeRate: -1, HandshakeTimeout: 2 * time.Minute}})
	conns := dialRaw(t, w.Link.Addr, 1000)
	ok, failed := handshakeAll(t, w, conns)
	if ok != 64 || len(failed) != 936 {
		t.Fatalf("%d handshakes completed, %d failed; want 64 (the per-address cap) and 936", ok, len(failed))
	}
	for _, err := range failed {
		if errors.Is(err, tlspsk.ErrPSKMismatch) || errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a connection over the cap got as far as %v; want it closed at once", err)
		}
	}
	if st := w.Link.Server.Stats(); st.OverCap != 936 || st.Conns != 64 {
		t.Fatalf("stats %+v, want 936 refused over the cap and 64 open", st)
	}
}

func TestHandshakesFromOneAddressAreRateLimited(t *testing.T) {
	// A rate so low that no token comes back during the test.
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{
		HandshakeRate: 0.0001, HandshakeBurst: 3}})
	ok, failed := handshakeAll(t, w, dialRaw(t, w.Link.Addr, 10))
	if ok != 3 || len(failed) != 7 {
		t.Fatalf("%d handshakes completed, %d failed; want the burst of 3", ok, len(failed))
	}
	if st := w.Link.Server.Stats(); st.OverRate != 7 {
		t.Fatalf("stats %+v, want 7 over the rate", st)
	}
}

func TestTotalConnectionCapClosesTheExcess(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{
		MaxConns: 5, HandshakeRate: -1}})
	ok, failed := handshakeAll(t, w, dialRaw(t, w.Link.Addr, 12))
	if ok != 5 || len(failed) != 7 || w.Link.Server.Stats().OverCap != 7 {
		t.Fatalf("%d handshakes completed, %d failed, stats %+v; want 5 and 7", ok, len(failed), w.Link.Server.Stats())
	}
}

func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func TestA64MiBHeaderIsAnswered431InBoundedMemory(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	rc := dial(t, w)
	runtime.GC()
	before := rss(t)
	wrote := make(chan int64, 1)
	go func() {
		n, _ := io.WriteString(rc.c, "POST /server/adminagent?cmd=1 HTTP/1.1\r\nHost: keyport\r\nX-Admin-Protocol: "+cardlink.Protocol+"\r\nX-Big: ")
		total := int64(n)
		chunk := bytes.Repeat([]byte("a"), 64<<10)
		for total < 64<<20 {
			n, err := rc.c.Write(chunk)
			total += int64(n)
			if err != nil {
				break // the server closed
			}
		}
		wrote <- total
	}()
	rc.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(rc.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || resp.Header.Get(cardlink.HeaderProtocol) != cardlink.Protocol {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
	n := <-wrote
	after := rss(t)
	t.Logf("client wrote %d bytes; RSS %d → %d MiB", n, before>>20, after>>20)
	if after-before > 50<<20 {
		t.Fatalf("RSS grew by %d MiB", (after-before)>>20)
	}
}

func TestServerClosesTheConnectionRightAfterTheFinal204(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{IdleTimeout: 30 * time.Second}})
	next, answer := sent(t, w)
	rc := dial(t, w)
	resp := rc.do(post(next, with(map[string]string{cardlink.HeaderScriptStatus: "ok", "Content-Type": cardlink.ContentTypeResponse}), answer))
	if resp.StatusCode != 204 {
		t.Fatalf("answer: %d", resp.StatusCode)
	}
	// A guard against hanging only: the server must close long before
	// the 30 s idle timeout, and the assertion is on the EOF.
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := rc.br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the final 204: %d bytes, %v; want EOF (close_notify)", n, err)
	}
	// A session that had nothing to do ends the same way.
	rc = dial(t, w)
	if resp := rc.do(firstPOST); resp.StatusCode != 204 {
		t.Fatalf("first POST without jobs: %d", resp.StatusCode)
	}
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := rc.br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the 204 of an empty session: %d bytes, %v; want EOF", n, err)
	}
}

// serverBytes relays one connection to target and returns what the server
// sent, once both sides are done.
func serverBytes(t *testing.T, target string) (addr string, sent <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ch := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		defer c.Close()
		s, err := net.Dial("tcp", target)
		if err != nil {
			ch <- nil
			return
		}
		defer s.Close()
		go func() { io.Copy(s, c); s.(*net.TCPConn).CloseWrite() }()
		var b bytes.Buffer
		io.Copy(io.MultiWriter(c, &b), s)
		ch <- b.Bytes()
	}()
	return ln.Addr().String(), ch
}

// records splits a TLS byte stream into records: "type:length" each, and
// the last record whole.
func records(b []byte) (shape []string, last []byte) {
	for len(b) >= 5 {
		n := 5 + (int(b[3])<<8 | int(b[4]))
		if n > len(b) {
			break
		}
		shape = append(shape, strconv.Itoa(int(b[0]))+":"+strconv.Itoa(n-5))
		last = b[:n]
		b = b[n:]
	}
	return shape, last
}

// derivations counts the module PSKs the HSM unseals.
type derivations struct {
	keyport.LinkCustody
	n atomic.Int64
}

func (d *derivations) ModulePSK(ctx context.Context, eid keyport.EID, sealed []byte) ([]byte, error) {
	psk, err := d.LinkCustody.ModulePSK(ctx, eid, sealed)
	if err == nil {
		d.n.Add(1)
	}
	return psk, err
}

func TestUnknownIdentityAndWrongPSKLookTheSameToTheClient(t *testing.T) {
	count := &derivations{}
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Link: func(l keyport.LinkCustody) keyport.LinkCustody {
		count.LinkCustody = l
		return count
	}})
	needOpenSSL(t)
	try := func(identity string) (shape []string, last []byte, out string) {
		t.Helper()
		before := count.n.Load()
		// Every handshake, for a registered identity or not, costs one
		// HSM derivation: the timing tells nothing either.
		defer func() {
			if d := count.n.Load() - before; d != 1 {
				t.Errorf("identity %q: %d PSK derivations, want 1 as for every handshake", identity, d)
			}
		}()
		addr, sent := serverBytes(t, w.Link.Addr)
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(cctx, "openssl", "s_client", "-connect", addr, "-psk", "000102030405060708090a0b0c0d0e0f",
			"-psk_identity", identity, "-tls1_2", "-quiet")
		cmd.Stdin = strings.NewReader(firstPOST)
		b, _ := cmd.CombinedOutput()
		shape, last = records(<-sent)
		return shape, last, string(b)
	}
	wrongShape, wrongLast, wrongOut := try(string(w.EID))
	// fatal (2) bad_record_mac (20) in a plaintext TLS 1.2 alert record.
	if want := []byte{21, 3, 3, 0, 2, 2, 20}; !bytes.Equal(wrongLast, want) || !strings.Contains(wrongOut, "bad record mac") {
		t.Fatalf("wrong PSK: last record % x, want % x; records %v\n%s", wrongLast, want, wrongShape, wrongOut)
	}
	for _, identity := range []string{string(fixture.EID(t, 99)), "not-an-eid"} {
		shape, last, out := try(identity)
		if !bytes.Equal(last, wrongLast) || strings.Join(shape, " ") != strings.Join(wrongShape, " ") {
			t.Errorf("identity %q: records %v ending % x; a wrong PSK gets %v ending % x", identity, shape, last, wrongShape, wrongLast)
		}
		if alert(out) != alert(wrongOut) {
			t.Errorf("identity %q: s_client says %q, for a wrong PSK %q", identity, alert(out), alert(wrongOut))
		}
	}
	if hex.EncodeToString(w.PSK) == "000102030405060708090a0b0c0d0e0f" {
		t.Fatal("the test's wrong PSK is the module's")
	}
}

// alert returns what s_client reports of the alert it got, without the
// thread and source-line prefix.
func alert(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, "SSL routines:"); i >= 0 {
			return line[i:]
		}
	}
	return ""
}

func TestTLS10AndCBCSHAAreRefusedByDefault(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{IdleTimeout: 500 * time.Millisecond}})
	needOpenSSL(t)
	for _, args := range [][]string{
		{"-tls1", "-cipher", "PSK-AES128-CBC-SHA:@SECLEVEL=0"},
		{"-tls1_1", "-cipher", "PSK-AES128-CBC-SHA:@SECLEVEL=0"},
		{"-tls1_2", "-cipher", "PSK-AES128-CBC-SHA:PSK-AES256-CBC-SHA"},
	} {
		cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		cmd := exec.CommandContext(cctx, "openssl", append([]string{"s_client", "-connect", w.Link.Addr,
			"-psk", hex.EncodeToString(w.PSK), "-psk_identity", string(w.EID), "-quiet"}, args...)...)
		cmd.Stdin = strings.NewReader(firstPOST)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil || strings.Contains(string(out), "X-Admin-Protocol") || !strings.Contains(string(out), "alert") {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
	// The default offer is TLS 1.2 with AES-128-GCM first.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "openssl", "s_client", "-connect", w.Link.Addr,
		"-psk", hex.EncodeToString(w.PSK), "-psk_identity", string(w.EID), "-ign_eof")
	cmd.Stdin = strings.NewReader(firstPOST)
	out, _ := cmd.CombinedOutput()
	if !strings.Contains(string(out), "Cipher is PSK-AES128-GCM-SHA256") || !strings.Contains(string(out), "TLSv1.2") ||
		!strings.Contains(string(out), "X-Admin-Protocol: "+cardlink.Protocol) {
		t.Fatalf("default handshake:\n%s", out)
	}
}

func TestASilentClientIsClosedAfterTheHandshakeTimeoutNotTheIdleTimeout(t *testing.T) {
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{
		HandshakeTimeout: 200 * time.Millisecond, IdleTimeout: time.Minute}})
	raw := dialRaw(t, w.Link.Addr, 1)[0]
	// A guard against hanging only; the assertion is on the server's close.
	raw.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := raw.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("silent client: %d bytes, %v; want the server to close", n, err)
	}
}

// resealed is a module-PSK custody whose seals can be renewed: a blob
// "v2:"+b unseals as b did, and a blob revoked no longer unseals at all,
// as after `keyport hsm init` sealed the module's PSK anew and destroyed
// the key of the old seal.
type resealed struct {
	keyport.LinkCustody
	mu      sync.Mutex
	revoked [][]byte
}

func (r *resealed) ModulePSK(ctx context.Context, eid keyport.EID, sealed []byte) ([]byte, error) {
	r.mu.Lock()
	for _, b := range r.revoked {
		if bytes.Equal(b, sealed) {
			r.mu.Unlock()
			return nil, errors.New("the key of this seal was destroyed")
		}
	}
	r.mu.Unlock()
	return r.LinkCustody.ModulePSK(ctx, eid, bytes.TrimPrefix(sealed, []byte("v2:")))
}

// A module whose sealed PSK was renewed while the server had the old one
// cached is served with the new one at its next handshake, not refused
// until the cache entry ages out.
func TestAHandshakeAfterTheModulesPSKWasSealedAnewUsesTheNewSeal(t *testing.T) {
	rs := &resealed{}
	w := cardlinktest.NewWorld(t, cardlinktest.LinkOptions{NoWorker: true, Link: func(l keyport.LinkCustody) keyport.LinkCustody {
		rs.LinkCustody = l
		return rs
	}, Server: cardlink.AdminServerConfig{IdleTimeout: 500 * time.Millisecond}})
	if out := opensslPOST(t, w, "-tls1_2"); !strings.Contains(out, "X-Admin-Protocol") {
		t.Fatalf("first session:\n%s", out)
	}
	m, err := w.Svc.Store.GetModule(ctx, w.EID)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.Store.SetModuleKeys(ctx, m.ID, nil, append([]byte("v2:"), m.PSK...)); err != nil {
		t.Fatal(err)
	}
	rs.mu.Lock()
	rs.revoked = append(rs.revoked, m.PSK)
	rs.mu.Unlock()
	if out := opensslPOST(t, w, "-tls1_2"); !strings.Contains(out, "X-Admin-Protocol") {
		t.Fatalf("the session after the PSK was sealed anew was refused:\n%s", out)
	}
}
