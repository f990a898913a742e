package store_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

// TestSQLiteCheckpointsRunBesideTheWriterNotInItsCommits: the writer's
// connection does not checkpoint in its commits (wal_autocheckpoint 0),
// yet what it writes reaches the database file: the checkpointer copies
// the WAL in the background, and the data reads back after a reopen.
func TestSQLiteCheckpointsRunBesideTheWriterNotInItsCommits(t *testing.T) {
	path := storetest.SQLitePath(t)
	s := storetest.Open(t, path)
	if got, err := store.QueryStringsForTest(s, `PRAGMA wal_autocheckpoint`); err != nil || len(got) != 1 || got[0] != "0" {
		t.Fatalf("writer's wal_autocheckpoint %v, %v; want 0", got, err)
	}
	big := strings.Repeat("x", 3000)
	for i := range 300 {
		if err := s.Tx(ctx, func(tx keyport.Repo) error {
			return tx.AddOutbox(ctx, &keyport.OutboxMessage{Topic: "t", Payload: fmt.Sprint(i, big), CreatedAt: time.Now()})
		}); err != nil {
			t.Fatal(err)
		}
	}
	giveUp := time.Now().Add(30 * time.Second) // a hang, not a timing
	for store.CheckpointedFramesForTest(s) < 300 {
		if time.Now().After(giveUp) {
			t.Fatalf("the checkpointer copied %d frames", store.CheckpointedFramesForTest(s))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 300*3000 {
		t.Fatalf("database file after the checkpoints: %v, %v", fi, err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]float64{}
	for _, mf := range mfs {
		if len(mf.Metric) == 1 && mf.Metric[0].Counter != nil {
			exported[mf.GetName()] = mf.Metric[0].Counter.GetValue()
		}
	}
	if exported["keyport_db_wal_checkpointed_frames_total"] < 300 || exported["keyport_db_wal_checkpoint_failures_total"] != 0 {
		t.Fatalf("checkpoint metrics: %v", exported)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("a second Close: %v", err)
	}
	again := storetest.Open(t, path)
	msgs, err := again.ListOutbox(ctx, "t", 1000)
	if err != nil || len(msgs) != 300 {
		t.Fatalf("after a reopen: %d messages, %v", len(msgs), err)
	}
}
