// Package filelock runs a function under an exclusive flock(2) of a file, so
// that processes on one host take turns: the SQLite store's deployment lock
// and the creation of the embedded SoftHSM token use it. TryLock takes a
// shared or exclusive flock without waiting, for a hold that outlives one
// function (the SQLite database's use lock: serve shares it, restore takes
// it alone).
package filelock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/keyport/keyport/internal/wait"
)

// poll is how often a process waiting for another's lock tries again.
const poll = 20 * time.Millisecond

// With runs fn while this process holds the flock of path (created, mode
// 0600, if missing), waiting for it as long as ctx allows. The lock goes
// when fn returns, or with the process.
func With(ctx context.Context, path string, fn func(context.Context) error) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	defer f.Close() // closing the file drops the lock too
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return fmt.Errorf("lock %s: flock: %w", path, err)
		}
		if err := wait.Sleep(ctx, poll); err != nil {
			return fmt.Errorf("lock %s: %w", path, err)
		}
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return fn(ctx)
}

// ErrHeld: another open of the file holds a flock that conflicts with the
// one asked for.
var ErrHeld = errors.New("held by another process")

// TryLock takes the flock of path (created, mode 0600, if missing; never
// through a symbolic link planted there) without waiting: shared, which
// other shared holders may take beside it, or exclusive. It returns ErrHeld
// if a conflicting lock is held. flock(2) locks belong to an open file
// description, so another open of the same file in this process conflicts
// as another process's would. Closing the returned file releases the lock.
func TryLock(path string, shared bool) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	how := syscall.LOCK_EX
	if shared {
		how = syscall.LOCK_SH
	}
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return f, nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, ErrHeld)
		default:
			f.Close()
			return nil, fmt.Errorf("lock %s: flock: %w", path, err)
		}
	}
}
