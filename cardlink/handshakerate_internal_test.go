package cardlink

import (
	"fmt"
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
		if !r.take("a", rt0) {
			t.Fatalf("handshake %d of the burst refused", i+1)
		}
	}
	if r.take("a", rt0) {
		t.Fatal("a 4th handshake allowed in a burst of 3")
	}
	at := func(ms int) time.Time { return rt0.Add(time.Duration(ms) * time.Millisecond) }
	if !r.take("a", at(500)) || r.take("a", at(500)) {
		t.Fatal("after 0.5 s at 2/s, want exactly one token back")
	}
	// b, c, d each spend a token at 1 s: the table is full.
	for _, k := range []string{"b", "c", "d"} {
		if !r.take(k, at(1000)) {
			t.Fatalf("source %s refused", k)
		}
	}
	if r.take("e", at(1000)) {
		t.Fatal("a new source allowed into a table full of live buckets")
	}
	if !r.take("b", at(1000)) {
		t.Fatal("a source already counted was refused because the table is full")
	}
	// At 1.9 s a, last used at 0.5 s with no token, has 2.8: not yet
	// refilled, so kept; e is refused.
	if r.take("e", at(1900)) {
		t.Fatal("a bucket still refilling was dropped for a new source")
	}
	if got := r.m["a"].Value.(*bucket); got.tokens != 0 {
		t.Fatalf("a refused source's attempt changed bucket a: %+v", got)
	}
	// At 2.0 s a has gone 1.5 s untouched: dropped, e takes its place.
	if !r.take("e", at(2000)) {
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
		if !r.take("b", at(2000)) {
			t.Fatalf("b's token %d refused", i+1)
		}
	}
	if r.take("b", at(2000)) {
		t.Fatal("b got more than its burst")
	}
}

// The table full of live buckets, every new source is refused: the same
// answer, whatever the order of use.
func TestHandshakeRatesFullTableRefusesNewSources(t *testing.T) {
	r := newHandshakeRates(0.001, 2, 100)
	for i := range 100 {
		r.take(fmt.Sprintf("s%d", i), rt0)
	}
	for i := range 1000 {
		if r.take(fmt.Sprintf("n%d", i), rt0.Add(time.Duration(i)*time.Millisecond)) {
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
		r.take(fmt.Sprintf("live%d", i), rt0)
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if !r.take("live7", rt0) {
			b.Fatal("a known source refused")
		}
	}
	base := time.Since(start)
	start = time.Now()
	for i := range b.N {
		if r.take(keys[i], rt0) {
			b.Fatal("a new source allowed into a full table")
		}
	}
	d := time.Since(start)
	b.ReportMetric(float64(d.Nanoseconds())/float64(b.N), "ns/new-source-refused")
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "ns/known-source")
	b.ReportMetric(d.Seconds()/base.Seconds(), "refused/known")
}
