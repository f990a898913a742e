package wait

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestSleepWaitsOutItsTimeWhenTheContextLives(t *testing.T) {
	if err := Sleep(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Sleep: %v, want nil", err)
	}
	if err := Sleep(context.Background(), 0); err != nil {
		t.Fatalf("Sleep(0): %v, want nil", err)
	}
}

// An hour's sleep that returns at all returned because its context ended.
func TestSleepEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep with an ended context: %v, want context.Canceled", err)
	}
	if err := Sleep(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep(0) with an ended context: %v, want context.Canceled", err)
	}
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Sleep(ctx, time.Hour) }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep cancelled while waiting: %v, want context.Canceled", err)
	}
}

// Every runs its task at once and again each period; an error goes to
// failed while the context lives, and not after it ended.
func TestEveryRunsAtOnceThenEachPeriodAndReportsOnlyLiveFailures(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	boom := errors.New("boom")
	var runs, failures atomic.Int64
	ran := make(chan int64, 16)
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		Every(ctx, time.Millisecond, func(ctx context.Context) error {
			n := runs.Add(1)
			ran <- n
			if n == 3 {
				// The last run ends the context first: its error is
				// shutdown, not a failure.
				cancel()
			}
			return boom
		}, func(err error) {
			if !errors.Is(err, boom) {
				t.Errorf("failed got %v", err)
			}
			failures.Add(1)
		})
	}()
	for want := int64(1); want <= 3; want++ {
		if n := <-ran; n != want {
			t.Fatalf("run %d reported as %d", want, n)
		}
	}
	<-stopped
	if n := runs.Load(); n != 3 {
		t.Fatalf("%d runs, want 3 (Every must stop with its context)", n)
	}
	if n := failures.Load(); n != 2 {
		t.Fatalf("%d failures reported, want 2 (the third run's error came after the context ended)", n)
	}
}

// A context that has ended before Every starts still gets one run, as a
// loop that checks first and sleeps after does.
func TestEveryWithAnEndedContextRunsOnceAndReturns(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	runs := 0
	Every(ctx, time.Hour, func(context.Context) error { runs++; return nil }, nil)
	if runs != 1 {
		t.Fatalf("%d runs, want 1", runs)
	}
}
