package store

import "sync"

// batcher runs the operations of concurrent callers in batches: the
// operations that arrive while a batch runs make up the next one (with
// leaders > 1, while that many batches run). It is the
// queue behind Group (closures, one transaction per batch) and claimGroup
// (claims as data, pipelined on PostgreSQL). There is no goroutine of its
// own: the first caller to find no batch running leads, and when its batch
// is done hands the lead to the first caller still queued, so a lone caller
// runs at once and callers under load share the batches.
type batcher[T any] struct {
	mu      sync.Mutex
	queue   []*batched[T]
	running int // leaders running a batch
	// leaders bounds the batches run at once (0: one).
	leaders int
}

// batched is one caller's operation in a batcher and its result.
type batched[T any] struct {
	op  T
	err error
	// wake says true: lead batch (this one is its first), or false: this
	// operation's batch is done and err is its result.
	wake  chan bool
	batch []*batched[T]
}

// do queues op, waits until a batch of at most limit operations that holds
// it has run (through run, which sets each one's err) and returns op's err.
func (b *batcher[T]) do(op T, limit int, run func(batch []*batched[T])) error {
	me := &batched[T]{op: op, wake: make(chan bool, 1)}
	b.mu.Lock()
	if b.running < max(b.leaders, 1) {
		// A free lead: nobody is queued, since a leader that finishes
		// hands its lead to the queue before it gives the lead up.
		b.running++
		b.mu.Unlock()
		me.batch = []*batched[T]{me}
	} else {
		b.queue = append(b.queue, me)
		b.mu.Unlock()
		if !<-me.wake {
			return me.err
		}
	}
	// Leader of me.batch, which starts with me. Run it, then hand the lead
	// to the callers left waiting, as one batch.
	run(me.batch)
	b.mu.Lock()
	var next []*batched[T]
	if len(b.queue) > 0 {
		n := min(len(b.queue), limit)
		next = b.queue[:n:n]
		b.queue = append([]*batched[T](nil), b.queue[n:]...)
	} else {
		b.running--
	}
	b.mu.Unlock()
	if next != nil {
		next[0].batch = next
		next[0].wake <- true
	}
	for _, o := range me.batch[1:] {
		o.wake <- false
	}
	return me.err
}
