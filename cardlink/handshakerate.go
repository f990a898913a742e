package cardlink

import (
	"container/list"
	"math"
	"time"
)

// handshakeRates is the admin server's handshake token buckets, one per
// source (sourcesOf): rate tokens a second up to burst, both times the
// source's scale, one spent per handshake. It holds at most max buckets.
// A bucket that has refilled is the same as none, so it may be dropped; one that has not must be kept, or
// its source would get a new burst. A bucket untouched for burst/rate
// seconds has surely refilled, and the buckets are kept in order of last
// use, so those are found at the front without scanning the table: a source
// arriving while it is full costs the same as any other (it used to cost a
// pass over every bucket, under the server's lock). A bucket that refilled
// sooner, having spent less, is kept until then: at most burst/rate seconds
// longer. When every bucket is live a new source is refused (the HSM unseal
// each handshake costs is what the limit protects). Not safe for concurrent
// use: the server calls it under its lock.
type handshakeRates struct {
	rate  float64
	burst float64
	max   int
	m     map[string]*list.Element // of *bucket, by source
	order list.List                // least recently used first
}

// bucket is one source's handshake token bucket.
type bucket struct {
	key    string
	scale  int
	tokens float64
	at     time.Time
}

// rateSource is a key a connection counts against, with scale times the
// caps and allowance of one source.
type rateSource struct {
	key   string
	scale int
}

// takeAll spends a token of each source, in order, at now; false at the
// first that has none (the tokens of those before it stay spent: a
// refused attempt still counts against the wider source).
func (r *handshakeRates) takeAll(srcs []rateSource, now time.Time) bool {
	for _, src := range srcs {
		if !r.take(src.key, src.scale, now) {
			return false
		}
	}
	return true
}

func newHandshakeRates(rate float64, burst, max int) *handshakeRates {
	return &handshakeRates{rate: rate, burst: float64(burst), max: max, m: map[string]*list.Element{}}
}

// idle is how long a bucket must go untouched to have surely refilled,
// whatever its scale (burst and rate scale alike).
// A rate so low that this overflows a Duration never refills in practice.
func (r *handshakeRates) idle() time.Duration {
	if s := r.burst / r.rate; s < float64(math.MaxInt64/time.Second) {
		return time.Duration(s * float64(time.Second))
	}
	return math.MaxInt64
}

// take spends one of key's tokens at now, key holding scale times the
// burst and rate (scale is read when key's bucket is made); false when it
// has none, or when key is new and the table is full of buckets still
// refilling.
func (r *handshakeRates) take(key string, scale int, now time.Time) bool {
	e := r.m[key]
	if e == nil {
		// Drop the buckets that have surely refilled: the oldest used
		// first, up to the first that may not have.
		for f := r.order.Front(); f != nil && len(r.m) >= r.max; f = r.order.Front() {
			b := f.Value.(*bucket)
			if now.Sub(b.at) < r.idle() {
				break
			}
			r.order.Remove(f)
			delete(r.m, b.key)
		}
		if len(r.m) >= r.max {
			return false
		}
		scale = max(scale, 1)
		e = r.order.PushBack(&bucket{key: key, scale: scale, tokens: r.burst * float64(scale), at: now})
		r.m[key] = e
	}
	b := e.Value.(*bucket)
	if now.After(b.at) {
		sc := float64(b.scale)
		b.tokens = min(r.burst*sc, b.tokens+now.Sub(b.at).Seconds()*r.rate*sc)
		b.at = now
	}
	r.order.MoveToBack(e)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// len is the number of buckets held.
func (r *handshakeRates) len() int { return len(r.m) }
