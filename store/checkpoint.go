package store

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
	"time"
)

// walCheckpointEvery is how often the SQLite checkpointer copies the WAL
// into the database file.
const walCheckpointEvery = 200 * time.Millisecond

// checkpointer copies SQLite's write-ahead log into the database file in
// the background (PRAGMA wal_checkpoint(PASSIVE), on a connection of its
// own), in place of SQLite's automatic checkpoint, which the writer's
// connection has turned off. The automatic one runs inside the COMMIT that
// takes the log past 1,000 pages: that commit then copies the pages and
// syncs both files while every other writer waits behind it, which made
// about one claim commit in a hundred take 20–35 ms instead of 0.2 (README,
// benchmarks). A PASSIVE checkpoint takes no write lock: commits go on
// while it runs. Should the writer's connection ever be opened again, it
// checkpoints automatically again, as SQLite does by default.
type checkpointer struct {
	db     *sql.DB
	stop   chan struct{}
	done   chan struct{}
	frames atomic.Int64 // WAL frames copied into the database file
	fails  atomic.Int64
	once   sync.Once
	err    error
}

func startCheckpointer(db *sql.DB) *checkpointer {
	c := &checkpointer{db: db, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *checkpointer) run() {
	defer close(c.done)
	t := time.NewTicker(walCheckpointEvery)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		c.checkpoint()
	}
}

// checkpoint runs one PASSIVE checkpoint: it copies what no reader still
// needs and returns at once if another checkpoint is running.
func (c *checkpointer) checkpoint() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var busy, log, done int64
	if err := c.db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &log, &done); err != nil {
		c.fails.Add(1)
		return
	}
	if done > 0 {
		c.frames.Add(done)
	}
}

// Close stops the checkpointer; SQLite checkpoints what is left when the
// last connection closes.
func (c *checkpointer) Close() error {
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		c.err = c.db.Close()
	})
	return c.err
}
