package store

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// With leaders set, that many batches run at once and no more; every
// operation runs exactly once, in one batch, and its caller gets its own
// result. The first leaders batches are held until all of them run, so
// the test fails if the batcher runs fewer at once than it may.
func TestBatcherRunsAtMostItsLeadersBatchesAtOnce(t *testing.T) {
	for _, leaders := range []int{0, 1, 3} {
		t.Run(fmt.Sprint(leaders), func(t *testing.T) {
			want := max(leaders, 1)
			b := &batcher[int]{leaders: leaders}
			var running, most, batches atomic.Int32
			ran := make([]atomic.Int32, 200)
			held := make(chan struct{})
			var holding sync.WaitGroup
			holding.Add(want)
			run := func(batch []*batched[int]) {
				n := running.Add(1)
				defer running.Add(-1)
				for {
					m := most.Load()
					if n <= m || most.CompareAndSwap(m, n) {
						break
					}
				}
				if batches.Add(1) <= int32(want) {
					holding.Done()
					<-held
				}
				for _, o := range batch {
					ran[o.op].Add(1)
					o.err = fmt.Errorf("op %d", o.op)
				}
			}
			var wg sync.WaitGroup
			call := func(i int) {
				defer wg.Done()
				if err := b.do(i, 16, run); err == nil || err.Error() != fmt.Sprintf("op %d", i) {
					t.Errorf("op %d: %v", i, err)
				}
			}
			for i := range want {
				wg.Add(1)
				go call(i)
			}
			waited := make(chan struct{})
			go func() { holding.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(10 * time.Second):
				t.Fatalf("%d batches never ran at once (%d did)", want, running.Load())
			}
			for i := want; i < len(ran); i++ {
				wg.Add(1)
				go call(i)
			}
			close(held)
			wg.Wait()
			if m := most.Load(); m != int32(want) {
				t.Errorf("%d batches ran at once, want %d", m, want)
			}
			for i := range ran {
				if n := ran[i].Load(); n != 1 {
					t.Errorf("op %d ran %d times", i, n)
				}
			}
			if b.running != 0 || len(b.queue) != 0 {
				t.Errorf("left behind: %d running, %d queued", b.running, len(b.queue))
			}
		})
	}
}
