package cardlink_test

import (
	"bufio"
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

// cannedCard answers a second-key script as a module that accepts it: the
// benchmark measures the server, not a card.
type cannedCard struct{ putKey []byte }

func (c cannedCard) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	switch apdu[1] {
	case gp.INSInitializeUpdate:
		return append(gp.InitUpdateResponse{KDD: make([]byte, 10), KVN: 0x30, SCP: 3, I: 0x70, CardChallenge: make([]byte, 8),
			CardCryptogram: make([]byte, 8), SequenceCounter: 1, HasSequenceCounter: true}.Bytes(), 0x90, 0x00), nil
	case gp.INSPutKey:
		return c.putKey, nil
	}
	return []byte{0x90, 0x00}, nil
}

// benchWorld is benchModules modules with `rounds` domains each, a provider,
// card-link running (no worker: agents open sessions themselves).
type benchWorld struct {
	w      *fixture.World
	prov   keyport.Principal
	wk     string
	psks   map[keyport.EID][]byte
	script keyport.ScriptRequest
	card   cannedCard
	link   *cardlinktest.Link
}

func newBenchWorld(b *testing.B, rounds int) *benchWorld {
	dsn := storetest.SQLitePath(b)
	if os.Getenv("KEYPORT_BENCH_DB") == "postgres" {
		dsn = storetest.PostgresURL(b)
	}
	st := storetest.Open(b, dsn)
	fw := fixture.New(b, st, benchModules, rounds)
	fw.Svc.Link = fw.HSM
	bw := &benchWorld{w: fw, psks: map[keyport.EID][]byte{}}
	bw.prov, _, bw.wk = fw.Provider(b, "Bench Bank", fixture.RSAKeys()[0])
	first := fw.Keys[fixture.EID(b, 0)][fixture.AID(1)]
	second := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		second[u] = make([]byte, 16)
	}
	var err error
	bw.script, err = keyport.SecondKeyScript(fixture.AID(1), 0x30, 0, 0x31, first, second)
	if err != nil {
		b.Fatal(err)
	}
	pk, _ := hex.DecodeString("31" + bw.script.Expect.KCV[keyport.UsageENC] + bw.script.Expect.KCV[keyport.UsageMAC] + bw.script.Expect.KCV[keyport.UsageDEK] + "9000")
	bw.card = cannedCard{putKey: pk}
	for m := range benchModules {
		eid := fixture.EID(b, m)
		bw.psks[eid] = fw.HandshakePSK(b, eid)
	}
	bw.link = cardlinktest.StartLink(b, fw.Svc, cardlinktest.LinkOptions{NoWorker: true})
	return bw
}

// queue claims domain d of every module and submits the script for it.
func (bw *benchWorld) queue(b *testing.B, d int) {
	ctx := context.Background()
	for m := range benchModules {
		eid := fixture.EID(b, m)
		if _, _, err := bw.w.Svc.Claim(ctx, bw.prov, keyport.ClaimRequest{EID: eid, AID: fixture.AID(d), WrappingKeyID: bw.wk}); err != nil {
			b.Fatal(err)
		}
		req := bw.script
		if d != 1 {
			s, err := keyport.SecondKeyScript(fixture.AID(d), 0x30, 0, 0x31, bw.w.Keys[eid][fixture.AID(d)], map[keyport.KeyUsage][]byte{
				keyport.UsageENC: make([]byte, 16), keyport.UsageMAC: make([]byte, 16), keyport.UsageDEK: make([]byte, 16)})
			if err != nil {
				b.Fatal(err)
			}
			req = s
		}
		if _, err := bw.w.Svc.SubmitScript(ctx, bw.prov, eid, fixture.AID(d), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAdminSessions1000Concurrent (SQLite; KEYPORT_BENCH_DB=postgres for a
// throwaway PostgreSQL; KEYPORT_BENCH_CPUPROFILE=FILE profiles the first
// round's sessions only): one op is a round of benchModules
// modules opening admin sessions at once, each running a 4-APDU script
// through the whole server (PSK from the HSM, lease, job, judgement,
// PERSONALIZED, audit). Reported: sessions/s, against the baseline of the
// same number of bare TLS-PSK handshakes with one HTTP round trip on a
// trivial server in the same run, and the ratio.
//
//	go test -run '^$' -bench AdminSessions -benchtime 2x ./cardlink/
func BenchmarkAdminSessions1000Concurrent(b *testing.B) {
	rounds := max(b.N, 1)
	bw := newBenchWorld(b, rounds)
	base := baselineServer(b)
	var sessions, baseline time.Duration
	b.ResetTimer()
	for r := 1; r <= b.N; r++ {
		b.StopTimer()
		bw.queue(b, r)
		b.StartTimer()
		if path := os.Getenv("KEYPORT_BENCH_CPUPROFILE"); path != "" && r == 1 {
			f, err := os.Create(path)
			if err != nil {
				b.Fatal(err)
			}
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, benchModules)
		for m := range benchModules {
			eid := fixture.EID(b, m)
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := agent.New(agent.Config{Server: bw.link.Addr, Identity: string(eid), PSK: bw.psks[eid], Retries: 20, Retry: 10 * time.Millisecond}, bw.card)
				rep, err := a.Session(context.Background())
				if err == nil && rep.Scripts != 1 {
					err = fmt.Errorf("module %s ran %d scripts", eid, rep.Scripts)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		sessions += time.Since(start)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		b.StopTimer()
		baseline += base.round(b)
		b.StartTimer()
	}
	b.StopTimer()
	n := float64(b.N * benchModules)
	b.ReportMetric(n/sessions.Seconds(), "sessions/s")
	b.ReportMetric(n/baseline.Seconds(), "baseline-handshake+rt/s")
	b.ReportMetric(baseline.Seconds()/sessions.Seconds()*100, "%-of-baseline")
}

// bareServer is the baseline: TLS-PSK with a fixed PSK and one HTTP
// exchange answered 204, nothing else.
type bareServer struct {
	addr string
	psk  []byte
}

func baselineServer(b *testing.B) *bareServer {
	psk := make([]byte, 16)
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", &tlspsk.ServerConfig{PSK: func(string) ([]byte, error) { return psk, nil }})
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
	bw.queue(b, 1)
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
