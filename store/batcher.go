package store

import "sync"

// batcher runs the operations of concurrent callers in batches: the
// operations that arrive while a batch runs make up the next one. It is the
// queue behind Group (closures, one transaction per batch) and claimGroup
// (claims as data, pipelined on PostgreSQL). There is no goroutine of its
// own: the first caller to find no batch running leads, and when its batch
// is done hands the lead to the first caller still queued, so a lone caller
// runs at once and callers under load share the batches.
type batcher[T any] struct {
	mu    sync.Mutex
	queue []*batched[T]
	busy  bool // a leader is running a batch
}

// batched is one caller's operation in a batcher and its result.
type batched[T any] struct {
	op  T
	err error
	// wake says true: lead the next batch (this one is its first), or
	// false: this operation's batch is done and err is its result.
	wake chan bool
}

// do queues op, waits until a batch of at most limit operations that holds
// it has run (through run, which sets each one's err) and returns op's err.
func (b *batcher[T]) do(op T, limit int, run func(batch []*batched[T])) error {
	me := &batched[T]{op: op, wake: make(chan bool, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, me)
	lead := !b.busy
	b.busy = true
	b.mu.Unlock()
	if !lead && !<-me.wake {
		return me.err
	}
	// Leader: me is first in the queue (it arrived when no batch ran, or
	// the previous leader handed over to it). Run a batch, then hand over
	// to the first caller left waiting, if any.
	b.mu.Lock()
	n := min(len(b.queue), limit)
	batch := b.queue[:n:n]
	b.queue = append([]*batched[T](nil), b.queue[n:]...)
	b.mu.Unlock()
	run(batch)
	b.mu.Lock()
	if len(b.queue) > 0 {
		b.queue[0].wake <- true
	} else {
		b.busy = false
	}
	b.mu.Unlock()
	for _, o := range batch[1:] {
		o.wake <- false
	}
	return me.err
}
