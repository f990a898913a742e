package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport/store/storetest"
)

// Two stores on one database (two replicas) take turns under Exclusive: the
// second runs its function only once the first's has returned; a waiter
// whose context ends runs nothing; another name does not wait.
func TestExclusiveLetsOneProcessOfTheDeploymentInAtATime(t *testing.T) {
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		a, b := storetest.Open(t, dsn), storetest.Open(t, dsn)
		inA, releaseA, doneA := make(chan struct{}), make(chan struct{}), make(chan error, 1)
		go func() {
			doneA <- a.Exclusive(ctx, "test", func(context.Context) error {
				close(inA)
				<-releaseA
				return nil
			})
		}()
		<-inA
		// Another name is not held.
		if err := b.Exclusive(ctx, "other", func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
		// A waiter that gives up runs nothing.
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		ran := false
		err := b.Exclusive(short, "test", func(context.Context) error { ran = true; return nil })
		cancel()
		if err == nil || ran {
			t.Fatalf("while A holds the lock, B's Exclusive with a context that ended: %v, ran %v", err, ran)
		}
		inB := make(chan struct{})
		doneB := make(chan error, 1)
		go func() {
			doneB <- b.Exclusive(ctx, "test", func(context.Context) error { close(inB); return errors.New("b's own error") })
		}()
		select {
		case <-inB:
			t.Fatal("B ran while A held the lock")
		case <-time.After(300 * time.Millisecond):
		}
		close(releaseA)
		if err := <-doneA; err != nil {
			t.Fatal(err)
		}
		select {
		case <-inB:
		case <-time.After(30 * time.Second):
			t.Fatal("B did not run after A released the lock")
		}
		if err := <-doneB; err == nil || err.Error() != "b's own error" {
			t.Fatalf("B's Exclusive returned %v, want its function's error as it is", err)
		}
		// And the lock is free again.
		if err := a.Exclusive(ctx, "test", func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
	})
}
