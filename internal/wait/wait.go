// Package wait holds the two waits keyport's long-running loops share: a
// pause that ends early when its context does (retries, backoffs, polls),
// and a periodic task (sweeps, dispatchers, campaign steps).
package wait

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends, whichever comes first. It returns nil
// after a full wait and ctx.Err() when ctx ended (at once if it already
// had). A d of zero or less does not wait.
func Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Every runs fn at once and then every d (at most once a period: a run that
// overruns its period skips the ticks it missed) until ctx ends. An error
// of a run is passed to failed, unless ctx had ended by then: a task cut
// short by shutdown is not a failure. A d of zero or less is one second.
func Every(ctx context.Context, d time.Duration, fn func(context.Context) error, failed func(error)) {
	if d <= 0 {
		d = time.Second
	}
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		if err := fn(ctx); err != nil && ctx.Err() == nil && failed != nil {
			failed(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
