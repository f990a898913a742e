package store

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// queued waits until c's batcher holds n queued callers.
func queued[K comparable, V any](t *testing.T, c *coalesced[K, V], n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.b.mu.Lock()
		got := len(c.b.queue)
		c.b.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d callers queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestReadsQueuedWhileTheLeadersReadAreMadeAsOneFetchAndEachCallerGetsItsOwnValue(t *testing.T) {
	var mu sync.Mutex
	var fetches [][]int
	release := make(chan struct{})
	c := newCoalesced(func(ctx context.Context, keys []int) (map[int]string, error) {
		mu.Lock()
		fetches = append(fetches, slices.Clone(keys))
		first := len(fetches) <= readLeaders
		mu.Unlock()
		if first {
			<-release // the leaders' reads are slow: the rest queue
		}
		out := map[int]string{}
		for _, k := range keys {
			if k%7 != 0 { // keys divisible by 7 do not exist
				out[k] = "v" + string(rune('A'+k))
			}
		}
		return out, nil
	})
	type result struct {
		key   int
		val   string
		found bool
		err   error
	}
	results := make(chan result, 64)
	get := func(ctx context.Context, k int) {
		v, found, err := c.get(ctx, k)
		results <- result{k, v, found, err}
	}
	for k := 1; k <= readLeaders; k++ {
		go get(context.Background(), k)
	}
	// Wait for the leaders to be inside fetch.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		mu.Lock()
		n := len(fetches)
		mu.Unlock()
		if n == readLeaders {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d leaders reading, want %d", n, readLeaders)
		}
	}
	// Queued: keys 10..24, key 10 twice, and one caller that gives up.
	gaveUp, cancel := context.WithCancel(context.Background())
	for k := 10; k <= 24; k++ {
		go get(context.Background(), k)
	}
	go get(context.Background(), 10)
	queued(t, c, 16)
	go get(gaveUp, 99)
	queued(t, c, 17)
	cancel()
	close(release)
	got := map[int][]result{}
	for range readLeaders + 17 {
		r := <-results
		got[r.key] = append(got[r.key], r)
	}
	for k, rs := range got {
		for _, r := range rs {
			switch {
			case k == 99:
				if !errors.Is(r.err, context.Canceled) {
					t.Errorf("caller that gave up: %+v, want context.Canceled", r)
				}
			case r.err != nil:
				t.Errorf("key %d: %v", k, r.err)
			case k%7 == 0 && r.found:
				t.Errorf("key %d found: %+v", k, r)
			case k%7 != 0 && (!r.found || r.val != "v"+string(rune('A'+k))):
				t.Errorf("key %d: %+v, want its own value", k, r)
			}
		}
	}
	if len(got[10]) != 2 {
		t.Fatalf("key 10 answered %d times, want 2", len(got[10]))
	}
	mu.Lock()
	defer mu.Unlock()
	// The leaders' 4 fetches, one for the 15 distinct queued keys (the
	// caller that gave up not among them), one more for key 10's second
	// caller, so that no two callers share a value.
	var batch []int
	for _, f := range fetches[readLeaders:] {
		if len(f) > 1 {
			if batch != nil {
				t.Fatalf("two batched fetches: %v", fetches)
			}
			batch = f
		}
	}
	slices.Sort(batch)
	if want := []int{10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24}; !slices.Equal(batch, want) {
		t.Fatalf("batched fetch of %v, want %v (all fetches %v)", batch, want, fetches)
	}
	if len(fetches) != readLeaders+2 || !slices.ContainsFunc(fetches[readLeaders:], func(f []int) bool { return slices.Equal(f, []int{10}) }) {
		t.Fatalf("fetches %v: want the leaders', the batch and key 10 alone", fetches)
	}
}

func TestAFailedCoalescedFetchFailsEveryCallerOfItsBatch(t *testing.T) {
	boom := errors.New("database gone")
	c := newCoalesced(func(ctx context.Context, keys []int) (map[int]string, error) { return nil, boom })
	if _, _, err := c.get(context.Background(), 1); !errors.Is(err, boom) {
		t.Fatalf("get: %v, want the fetch's error", err)
	}
}
