package cardlink_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/store/storetest"
)

// A module whose agent waits on replica Y is woken by replica X through the
// PostgreSQL bus; X's own waiters are woken without it, and without a bus
// a module nobody waits for here is unreachable.
func TestReplicaWakeCrossesReplicasOverThePostgresBus(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	busX, busY := storetest.Open(t, dsn).WakeBus(), storetest.Open(t, dsn).WakeBus()
	hubX, hubY := cardlink.NewWakeHub(), cardlink.NewWakeHub()
	x := cardlink.ReplicaWake{Hub: hubX, Bus: busX}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go hubY.Follow(ctx, busY, nil)
	const eid keyport.EID = "89000000000000000000000000000002"

	if err := (cardlink.ReplicaWake{Hub: hubX}).Wake(ctx, eid); !errors.Is(err, keyport.ErrUnreachable) {
		t.Fatalf("no bus, nobody waiting: %v, want ErrUnreachable", err)
	}

	// The waiter on Y never polls the database (no hasWork): only a push
	// can wake it.
	woken := make(chan bool, 1)
	go func() { woken <- hubY.Wait(ctx, eid, time.Hour, nil) }()
	deadline := time.Now().Add(20 * time.Second)
	for hubY.Waiting(eid) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the waiter did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Y's listener may not have run LISTEN yet: X wakes again until it
	// is heard (the delivery worker wakes with backoff the same way).
	for heard := false; !heard; {
		if time.Now().After(deadline) {
			t.Fatal("the wake-up did not cross within 20 s")
		}
		if err := x.Wake(ctx, eid); err != nil {
			t.Fatalf("X publishes: %v", err)
		}
		select {
		case ok := <-woken:
			if !ok {
				t.Fatal("the waiter ended unwoken")
			}
			heard = true
		case <-time.After(200 * time.Millisecond):
		}
	}

	// A waiter on X is woken by X itself.
	local := make(chan bool, 1)
	lctx, lcancel := context.WithTimeout(ctx, 20*time.Second)
	defer lcancel()
	go func() { local <- hubX.Wait(lctx, eid, time.Hour, nil) }()
	for hubX.Waiting(eid) == 0 {
		if lctx.Err() != nil {
			t.Fatal("the waiter on X did not register")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := x.Wake(ctx, eid); err != nil {
		t.Fatal(err)
	}
	if !<-local {
		t.Fatal("X's own waiter was not woken")
	}
}
