package cardlink

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

var rt0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// A source has its burst, then a token per 1/rate seconds; once the table
// is full a new source takes the place of a bucket untouched for
// burst/rate seconds (surely refilled), never of one that may still be
// refilling; while every bucket may be, new sources are refused and old
// ones keep what they have.
func TestHandshakeRatesKeepLiveBucketsAndDropRefilledOnes(t *testing.T) {
	r := newHandshakeRates(2, 3, 4) // 2 a second, bursts of 3 (refilled 1.5 s after use), 4 sources
	for i := range 3 {
		if !r.take("a", 1, rt0) {
			t.Fatalf("handshake %d of the burst refused", i+1)
		}
	}
	if r.take("a", 1, rt0) {
		t.Fatal("a 4th handshake allowed in a burst of 3")
	}
	at := func(ms int) time.Time { return rt0.Add(time.Duration(ms) * time.Millisecond) }
	if !r.take("a", 1, at(500)) || r.take("a", 1, at(500)) {
		t.Fatal("after 0.5 s at 2/s, want exactly one token back")
	}
	// b, c, d each spend a token at 1 s: the table is full.
	for _, k := range []string{"b", "c", "d"} {
		if !r.take(k, 1, at(1000)) {
			t.Fatalf("source %s refused", k)
		}
	}
	if r.take("e", 1, at(1000)) {
		t.Fatal("a new source allowed into a table full of live buckets")
	}
	if !r.take("b", 1, at(1000)) {
		t.Fatal("a source already counted was refused because the table is full")
	}
	// At 1.9 s a, last used at 0.5 s with no token, has 2.8: not yet
	// refilled, so kept; e is refused.
	if r.take("e", 1, at(1900)) {
		t.Fatal("a bucket still refilling was dropped for a new source")
	}
	if got := r.m["a"].Value.(*bucket); got.tokens != 0 {
		t.Fatalf("a refused source's attempt changed bucket a: %+v", got)
	}
	// At 2.0 s a has gone 1.5 s untouched: dropped, e takes its place.
	if !r.take("e", 1, at(2000)) {
		t.Fatal("a new source refused though a bucket had refilled")
	}
	if _, ok := r.m["a"]; ok {
		t.Fatal("bucket a kept")
	}
	// b, c, d are kept, with what they spent: b (2 tokens short at 1 s)
	// has 2 + 1×2 = 3 at 2 s, c and d have 3.
	if r.len() != 4 || r.m["b"] == nil || r.m["c"] == nil || r.m["d"] == nil {
		t.Fatalf("buckets after the swap: %v", r.m)
	}
	for i := range 3 {
		if !r.take("b", 1, at(2000)) {
			t.Fatalf("b's token %d refused", i+1)
		}
	}
	if r.take("b", 1, at(2000)) {
		t.Fatal("b got more than its burst")
	}
}

// The table full of live buckets, every new source is refused: the same
// answer, whatever the order of use.
func TestHandshakeRatesFullTableRefusesNewSources(t *testing.T) {
	r := newHandshakeRates(0.001, 2, 100)
	for i := range 100 {
		r.take(fmt.Sprintf("s%d", i), 1, rt0)
	}
	for i := range 1000 {
		if r.take(fmt.Sprintf("n%d", i), 1, rt0.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("new source %d allowed into a full table", i)
		}
	}
	if r.len() != 100 {
		t.Fatalf("%d buckets, want 100", r.len())
	}
}

// BenchmarkHandshakeRateNewSourceFullTable: a new source refused while
// the table holds maxBuckets live buckets, against a baseline in the same
// run of a known source's handshake in the same table (the ratio is
// refusal/known; a pass over the table per refusal made it thousands).
//
//	go test -run '^$' -bench HandshakeRateNewSource ./cardlink/
func BenchmarkHandshakeRateNewSourceFullTable(b *testing.B) {
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = fmt.Sprintf("2001:db8:%x:%x::/64", i>>16, i&0xffff)
	}
	r := newHandshakeRates(1e-9, 1<<30, maxBuckets)
	for i := range maxBuckets {
		r.take(fmt.Sprintf("live%d", i), 1, rt0)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if !r.take("live7", 1, rt0) {
			b.Fatal("a known source refused")
		}
	}
	base := time.Since(start)
	start = time.Now()
	for i := range b.N {
		if r.take(keys[i], 1, rt0) {
			b.Fatal("a new source allowed into a full table")
		}
	}
	d := time.Since(start)
	b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "ns/new-source-refused")
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "ns/known-source")
	b.ReportMetric(d.Seconds()/base.Seconds(), "refused/known")
}

func tcpAddr(t *testing.T, s string) net.Addr {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return net.TCPAddrFromAddrPort(ap)
}

// An IPv6 site (/48) draws its /64s' handshakes from one allowance of
// siteScale sources: walking through its 65,536 /64s gets it siteScale
// bursts, not 65,536, and leaves room in the table for everyone else.
func TestHandshakeRatesCountAnIPv6SiteOnceForAllItsSubnets(t *testing.T) {
	const burst = 4
	r := newHandshakeRates(0.001, burst, 1<<12)
	allowed := 0
	for i := range 1 << 16 {
		srcs := sourcesOf(tcpAddr(t, fmt.Sprintf("[2001:db8:1:%x::7]:4000", i)))
		if r.takeAll(srcs, rt0) {
			allowed++
		}
	}
	if allowed != siteScale*burst {
		t.Fatalf("a /48 walking its /64s started %d handshakes, want its site allowance %d", allowed, siteScale*burst)
	}
	if r.len() > siteScale*burst+1 {
		t.Fatalf("the site's flood holds %d buckets", r.len())
	}
	for _, a := range []string{"[2001:db8:2::1]:4000", "192.0.2.7:4000", "[::ffff:192.0.2.8]:4000"} {
		if !r.takeAll(sourcesOf(tcpAddr(t, a)), rt0) {
			t.Fatalf("%s refused after another site's flood", a)
		}
	}
}

// The connection caps count a /48 too: its /64s share siteScale times the
// per-source cap, a connection the site cap refuses is not counted, and
// other sites are not held up.
func TestAdminServerCapsTheConnectionsOfAnIPv6Site(t *testing.T) {
	s := NewAdminServer(AdminServerConfig{MaxConnsPerAddr: 2, HandshakeRate: -1})
	admitted := 0
	for i := range 100 {
		c, peer := net.Pipe()
		t.Cleanup(func() { c.Close(); peer.Close() })
		if s.admit(c, sourcesOf(tcpAddr(t, fmt.Sprintf("[2001:db8:1:%x::1]:1", i)))) == admitOK {
			admitted++
		}
	}
	if admitted != 2*siteScale {
		t.Fatalf("%d connections of one /48 admitted, want %d", admitted, 2*siteScale)
	}
	c, peer := net.Pipe()
	defer c.Close()
	defer peer.Close()
	// A /64 of the site that has no connection yet: over the site's cap.
	if s.admit(c, sourcesOf(tcpAddr(t, "[2001:db8:1:ffff::2]:1"))) != admitOverCap {
		t.Fatal("a connection admitted past its /48's cap")
	}
	if n := s.perAddr["site:2001:db8:1::/48"]; n != 2*siteScale || s.perAddr["net:2001:db8:1:ffff::/64"] != 0 {
		t.Fatalf("a refused connection was counted: site %d", n)
	}
	if s.admit(c, sourcesOf(tcpAddr(t, "[2001:db8:2::2]:1"))) != admitOK {
		t.Fatal("another site's connection refused")
	}
}
