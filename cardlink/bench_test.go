package cardlink_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// benchModules is how many simulated modules open sessions at once.
const benchModules = 1000

// replayCard answers the commands of one session with the R-APDUs a virtual
// module gave for them during the set-up, in order: the benchmark measures
// the server, not a card, and the answers are still the card's own (card
// cryptogram, R-MACs, PUT KEY's KCVs), so the server judges a confirmed
// second-key change and moves the domain to PERSONALIZED.
type replayCard struct {
	resps [][]byte
	n     int
}

func (c *replayCard) Transmit(_ context.Context, _ []byte) ([]byte, error) {
	if c.n >= len(c.resps) {
		return []byte{0x6F, 0x00}, nil
	}
	r := c.resps[c.n]
	c.n++
	return r, nil
}

// recordingChannel passes commands to a virtual module and keeps its
// answers.
type recordingChannel struct {
	ch    gp.Channel
	resps [][]byte
}

func (r *recordingChannel) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	resp, err := r.ch.Transmit(ctx, apdu)
	r.resps = append(r.resps, resp)
	return resp, err
}

// benchWorld is benchModules modules with `rounds` domains each (and one
// more, for recording the baseline's transcript), a provider, card-link
// running (no worker: agents open sessions themselves).
type benchWorld struct {
	w    *fixture.World
	prov keyport.Principal
	wk   string
	psks map[keyport.EID][]byte
	link *cardlinktest.Link
}

func newBenchWorld(b *testing.B, rounds int) *benchWorld {
	dsn := storetest.SQLitePath(b)
	if os.Getenv("KEYPORT_BENCH_DB") == "postgres" {
		dsn = storetest.PostgresURL(b)
	}
	st := storetest.Open(b, dsn)
	fw := fixture.New(b, st, benchModules, rounds+1)
	fw.Svc.Link = fw.HSM
	// An audit checkpoint every 16 events, as cmd/keyport runs (the
	// fixture's 4 is for the tests of checkpoints).
	fw.Svc.CheckpointEvery = 0
	bw := &benchWorld{w: fw, psks: map[keyport.EID][]byte{}}
	bw.prov, _, bw.wk = fw.Provider(b, "Bench Bank", fixture.RSAKeys()[0])
	for m := range benchModules {
		eid := fixture.EID(b, m)
		bw.psks[eid] = fw.HandshakePSK(b, eid)
	}
	// 1,000 simulated modules all connect from 127.0.0.1: the per-address
	// caps, meant for one subscriber's prefix, are off.
	bw.link = cardlinktest.StartLink(b, fw.Svc, cardlinktest.LinkOptions{NoWorker: true,
		Server: cardlink.AdminServerConfig{MaxConnsPerAddr: -1, HandshakeRate: -1}})
	return bw
}

// queue claims domain d of each of the modules numbered in ms, submits a
// second-key script for it, and returns for each module the card that
// answers that script: a virtual module holding the domain's first keys
// runs it now, and the card replays its answers.
func (bw *benchWorld) queue(b *testing.B, d int, ms []int) []*replayCard {
	ctx := context.Background()
	second := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		second[u] = make([]byte, 16)
	}
	aid := fixture.AID(d)
	cards := make([]*replayCard, len(ms))
	for i, m := range ms {
		eid := fixture.EID(b, m)
		if _, _, err := bw.w.Svc.Claim(ctx, bw.prov, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: bw.wk}); err != nil {
			b.Fatal(err)
		}
		first := bw.w.Keys[eid][aid]
		req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, first, second)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := bw.w.Svc.SubmitScript(ctx, bw.prov, eid, aid, req); err != nil {
			b.Fatal(err)
		}
		rec := &recordingChannel{ch: cardlinktest.ProcessTx(cardlinktest.NewModule(b, eid, map[keyport.AID]map[keyport.KeyUsage][]byte{aid: first}))}
		host := gp.NewHost(rec)
		if r, err := host.Send(ctx, gp.Select(aid.Bytes())); err != nil || r.SW != gp.SWOK {
			b.Fatalf("select %s: %v %v", aid, r.SW, err)
		}
		for _, h := range req.APDUs {
			c, err := gp.ParseCommand(mustHex(b, h))
			if err != nil {
				b.Fatal(err)
			}
			if r, err := host.Send(ctx, c); err != nil || r.SW != gp.SWOK {
				b.Fatalf("module %s: %s: %v %v", eid, h, r.SW, err)
			}
		}
		cards[i] = &replayCard{resps: rec.resps}
	}
	return cards
}

func mustHex(b *testing.B, s string) []byte {
	v, err := hex.DecodeString(s)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

func allModules() []int {
	ms := make([]int, benchModules)
	for i := range ms {
		ms[i] = i
	}
	return ms
}

// sessions runs one admin session per module at once, each agent with its
// own card, against the server at addr; it returns how long they took.
func (bw *benchWorld) sessions(b *testing.B, addr string, cards []*replayCard) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, benchModules)
	for m := range benchModules {
		eid := fixture.EID(b, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := agent.New(agent.Config{Server: addr, Identity: string(eid), PSK: bw.psks[eid], Retries: 20, Retry: 10 * time.Millisecond}, cards[m])
			rep, err := a.Session(context.Background())
			if err == nil && (rep.Scripts != 1 || rep.Resumed != 0 || len(rep.Statuses) != 1 || rep.Statuses[0] != cardlink.StatusOK) {
				err = fmt.Errorf("module %s: %+v", eid, rep)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return d
}

// BenchmarkAdminSessions1000Concurrent (SQLite; KEYPORT_BENCH_DB=postgres for a
// throwaway PostgreSQL; KEYPORT_BENCH_CPUPROFILE=FILE profiles the first
// round's sessions only): one op is a round of benchModules
// modules opening admin sessions at once, each running a 4-APDU second-key
// script through the whole server (PSK from the HSM, lease, job, the
// answer judged under the domain's keys in the HSM, PERSONALIZED, audit).
//
// Reported: sessions/s, against a like-for-like baseline in the same run:
// the same agents with the same cards, the same TLS-PSK handshakes (the
// server's TLS configuration, a PSK from memory) and the same HTTP
// exchanges (the first POST answered with the script, the answer POST
// answered 204: the responses recorded byte for byte from a real session
// before the timed rounds), parsed with the server's request reader and
// answered from memory, with no database or HSM; and the ratio. The
// earlier, narrower baseline is reported beside it: bare handshakes with
// one HTTP round trip answered 204.
//
//	go test -run '^$' -bench AdminSessions -benchtime 2x ./cardlink/
func BenchmarkAdminSessions1000Concurrent(b *testing.B) {
	rounds := max(b.N, 1)
	bw := newBenchWorld(b, rounds)
	// A real session records what the baseline answers: module 0, on a
	// domain the timed rounds do not use.
	transcript := bw.record(b, rounds+1)
	replay := replayServer(b, bw, transcript)
	bare := baselineServer(b)
	var sessions, baseline, old, sessionsCPU, baselineCPU time.Duration
	b.ResetTimer()
	for r := 1; r <= b.N; r++ {
		b.StopTimer()
		cards := bw.queue(b, r, allModules())
		b.StartTimer()
		profile := os.Getenv("KEYPORT_BENCH_CPUPROFILE")
		if profile != "" && r == 1 {
			f, err := os.Create(profile)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			pprof.StartCPUProfile(f)
		}
		cpu0 := processCPU()
		sessions += bw.sessions(b, bw.link.Addr, cards)
		sessionsCPU += processCPU() - cpu0
		b.StopTimer()
		if profile != "" && r == 1 {
			pprof.StopCPUProfile()
		}
		for _, c := range cards {
			c.n = 0
		}
		cpu0 = processCPU()
		baseline += bw.sessions(b, replay.addr, cards)
		baselineCPU += processCPU() - cpu0
		if n := replay.requests.Swap(0); n != int64(benchModules*len(transcript)) {
			b.Fatalf("baseline: %d requests, want %d", n, benchModules*len(transcript))
		}
		old += bare.round(b)
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N * benchModules)
	b.ReportMetric(n/sessions.Seconds(), "sessions/s")
	b.ReportMetric(n/baseline.Seconds(), "baseline-sessions/s")
	b.ReportMetric(baseline.Seconds()/sessions.Seconds()*100, "%-of-baseline")
	// CPU time, server and agents together (both run in this process): on a
	// shared machine it varies less than the wall clock.
	b.ReportMetric(float64(sessionsCPU.Microseconds())/1000/n, "cpu-ms/session")
	b.ReportMetric(float64(baselineCPU.Microseconds())/1000/n, "baseline-cpu-ms/session")
	b.ReportMetric(n/old.Seconds(), "handshake+1rt/s")
	b.ReportMetric(old.Seconds()/sessions.Seconds()*100, "%-of-handshake+1rt")
}

// record runs module 0's session on domain d through a connection that
// keeps what the server sent: one response per request the agent wrote.
func (bw *benchWorld) record(b *testing.B, d int) [][]byte {
	cards := bw.queue(b, d, []int{0})
	eid := fixture.EID(b, 0)
	rc := &recordingConn{}
	a := agent.New(agent.Config{Server: bw.link.Addr, Identity: string(eid), PSK: bw.psks[eid],
		Dial: func(ctx context.Context) (net.Conn, error) {
			c, err := tlspsk.Dial(ctx, "tcp", bw.link.Addr, &tlspsk.ClientConfig{Identity: string(eid), PSK: bw.psks[eid]})
			if err != nil {
				return nil, err
			}
			rc.Conn = c
			return rc, nil
		}}, cards[0])
	rep, err := a.Session(context.Background())
	if err != nil || rep.Scripts != 1 || rep.Resumed != 0 {
		b.Fatalf("recording session: %+v, %v", rep, err)
	}
	j, err := bw.w.Svc.ListJobs(context.Background(), fixture.Admin, keyport.JobFilter{Kind: keyport.JobSecondKey, States: []keyport.JobState{keyport.JobDone}})
	if err != nil || len(j) != 1 {
		b.Fatalf("recording session: %d jobs DONE, %v", len(j), err)
	}
	if len(rc.resps) != 2 || !strings.HasPrefix(string(rc.resps[0]), "HTTP/1.1 200 ") || !strings.HasPrefix(string(rc.resps[1]), "HTTP/1.1 204 ") {
		b.Fatalf("recording session: %d responses: %q", len(rc.resps), rc.resps)
	}
	return rc.resps
}

// recordingConn splits what is read into one response per request
// written: the agent writes a request whole, then reads its response whole.
type recordingConn struct {
	net.Conn
	resps [][]byte
	cur   []byte
}

func (c *recordingConn) Write(p []byte) (int, error) {
	if c.cur != nil {
		c.resps = append(c.resps, c.cur)
		c.cur = nil
	}
	return c.Conn.Write(p)
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.cur = append(c.cur, p[:n]...)
	return n, err
}

func (c *recordingConn) Close() error {
	if c.cur != nil {
		c.resps = append(c.resps, c.cur)
		c.cur = nil
	}
	return c.Conn.Close()
}

// memServer is the like-for-like baseline: the admin server's TLS-PSK
// configuration with the PSKs from memory, each request read with the
// admin server's reader and answered with the recorded response.
type memServer struct {
	addr     string
	requests atomic.Int64
}

func replayServer(b *testing.B, bw *benchWorld, transcript [][]byte) *memServer {
	cfg := *bw.link.Server.TLSConfig()
	psks := bw.psks
	cfg.PSK = func(identity string) ([]byte, error) {
		if k, ok := psks[keyport.EID(identity)]; ok {
			return bytes.Clone(k), nil // tlspsk wipes what it is given
		}
		return nil, keyport.ErrNotFound
	}
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", &cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	s := &memServer{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tlspsk.Conn)
				if err := tc.Handshake(context.Background()); err != nil {
					return
				}
				rr := cardlink.NewAdminRequestReader(c, 0)
				for _, resp := range transcript {
					if _, err := rr.Read(); err != nil {
						return
					}
					s.requests.Add(1)
					if _, err := c.Write(resp); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

// bareServer is the earlier baseline: TLS-PSK with a fixed PSK and one
// HTTP exchange answered 204, nothing else.
type bareServer struct {
	addr string
	psk  []byte
}

func baselineServer(b *testing.B) *bareServer {
	psk := make([]byte, 16)
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", &tlspsk.ServerConfig{PSK: func(string) ([]byte, error) { return bytes.Clone(psk), nil }})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				c.Write(cardlink.AdminResponse{Status: http.StatusNoContent}.Bytes())
			}()
		}
	}()
	return &bareServer{addr: ln.Addr().String(), psk: psk}
}

func (s *bareServer) round(b *testing.B) time.Duration {
	start := time.Now()
	var wg sync.WaitGroup
	for m := range benchModules {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *tlspsk.Conn
			var err error
			for try := 0; try < 20; try++ {
				if c, err = tlspsk.Dial(context.Background(), "tcp", s.addr, &tlspsk.ClientConfig{Identity: fmt.Sprint(m), PSK: s.psk}); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			c.Write([]byte(firstPOST))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 204 {
				b.Errorf("baseline round trip: %v", err)
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkOpenAdminSessionMemory holds benchModules admin sessions open
// at once (handshake done, script received, answer not yet posted) and
// reports what each costs: Go heap, goroutines and resident memory (with
// OpenSSL's), both the server's and the simulated module's side, since both
// run in this process.
//
//	go test -run '^$' -bench OpenAdminSessionMemory -benchtime 1x ./cardlink/
func BenchmarkOpenAdminSessionMemory(b *testing.B) {
	bw := newBenchWorld(b, 1)
	bw.queue(b, 1, allModules())
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	rss0 := rssBytes()
	conns := make([]net.Conn, 0, benchModules)
	var mu sync.Mutex
	var wg sync.WaitGroup
	b.ResetTimer()
	for m := range benchModules {
		eid := fixture.EID(b, m)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tlspsk.Dial(context.Background(), "tcp", bw.link.Addr, &tlspsk.ClientConfig{Identity: string(eid), PSK: bw.psks[eid]})
			if err != nil {
				b.Error(err)
				return
			}
			c.Write([]byte(firstPOST))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil || resp.StatusCode != 200 {
				b.Errorf("first POST: %v", err)
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	b.StopTimer()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	n := float64(len(conns))
	b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/session")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/session")
	b.ReportMetric(float64(rssBytes()-rss0)/n, "rss-B/session")
	for _, c := range conns {
		c.Close()
	}
}

// processCPU is the CPU time this process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rssBytes is the process's resident set (Go heap and OpenSSL's C heap).
func rssBytes() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}
