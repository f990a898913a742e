package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store/storetest"
)

// A wake-up published through one store reaches a listener on another
// store of the same PostgreSQL database (two replicas); SQLite has no bus.
func TestWakeBusCarriesWakeUpsBetweenStoresOnPostgres(t *testing.T) {
	if storetest.Open(t, storetest.SQLitePath(t)).WakeBus() != nil {
		t.Fatal("SQLite store has a wake-up bus")
	}
	dsn := storetest.PostgresURL(t)
	a, b := storetest.Open(t, dsn), storetest.Open(t, dsn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan keyport.EID, 16)
	done := make(chan error, 1)
	go func() { done <- b.WakeBus().ListenWakes(ctx, func(e keyport.EID) { got <- e }) }()
	const eid keyport.EID = "89000000000000000000000000000002"
	// The listener may not have run LISTEN yet: publish until it hears one
	// (bounded), and a payload that is no EID is never handed on.
	deadline := time.Now().Add(20 * time.Second)
	for heard := false; !heard; {
		if time.Now().After(deadline) {
			t.Fatal("no wake-up heard within 20 s")
		}
		if err := a.WakeBus().PublishWake(ctx, "not-an-eid"); err != nil {
			t.Fatal(err)
		}
		if err := a.WakeBus().PublishWake(ctx, eid); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-got:
			if e != eid {
				t.Fatalf("heard %q, want %s", e, eid)
			}
			heard = true
		case <-time.After(200 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != context.Canceled {
		t.Fatalf("ListenWakes after cancel: %v", err)
	}
}
