package cardlink

import (
	"container/list"
	"math"
	"time"
)

// handshakeRates is the admin server's handshake token buckets, one per
// source (addrKey): rate tokens a second up to burst, one spent per
// handshake. It holds at most max buckets. A bucket that has refilled is
// the same as none, so it may be dropped; one that has not must be kept, or
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
	tokens float64
	at     time.Time
}

func newHandshakeRates(rate float64, burst, max int) *handshakeRates {
	return &handshakeRates{rate: rate, burst: float64(burst), max: max, m: map[string]*list.Element{}}
}

// idle is how long a bucket must go untouched to have surely refilled.
// A rate so low that this overflows a Duration never refills in practice.
func (r *handshakeRates) idle() time.Duration {
	if s := r.burst / r.rate; s < float64(math.MaxInt64/time.Second) {
		return time.Duration(s * float64(time.Second))
	}
	return math.MaxInt64
}

// take spends one of key's tokens at now; false when it has none, or when
// key is new and the table is full of buckets still refilling.
func (r *handshakeRates) take(key string, now time.Time) bool {
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
		e = r.order.PushBack(&bucket{key: key, tokens: r.burst, at: now})
		r.m[key] = e
	}
	b := e.Value.(*bucket)
	if now.After(b.at) {
		b.tokens = min(r.burst, b.tokens+now.Sub(b.at).Seconds()*r.rate)
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
