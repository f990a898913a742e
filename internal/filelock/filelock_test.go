package filelock

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// flock(2) locks belong to an open file description: two TryLocks of one
// file in this one process share a shared lock and conflict over an
// exclusive one as two processes would; closing the file lets the lock go.
func TestTryLockConflictsBetweenTwoOpensInOneProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "db.lock")
	a, err := TryLock(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the lock file: %v %v; want mode 0600", fi, err)
	}
	b, err := TryLock(path, true)
	if err != nil {
		t.Fatalf("a second shared lock: %v", err)
	}
	if f, err := TryLock(path, false); !errors.Is(err, ErrHeld) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("an exclusive lock beside two shared ones: %v; want ErrHeld", err)
	}
	a.Close()
	if f, err := TryLock(path, false); !errors.Is(err, ErrHeld) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("an exclusive lock beside one shared one: %v; want ErrHeld", err)
	}
	b.Close()
	x, err := TryLock(path, false)
	if err != nil {
		t.Fatalf("an exclusive lock once the shared ones went: %v", err)
	}
	defer x.Close()
	if f, err := TryLock(path, true); !errors.Is(err, ErrHeld) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("a shared lock beside an exclusive one: %v; want ErrHeld", err)
	}
}

// A symbolic link planted where the lock file goes is not followed.
func TestTryLockDoesNotFollowASymbolicLink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	if err := os.Symlink(target, filepath.Join(dir, "db.lock")); err != nil {
		t.Fatal(err)
	}
	if f, err := TryLock(filepath.Join(dir, "db.lock"), true); err == nil {
		f.Close()
		t.Fatal("TryLock followed a symbolic link")
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("TryLock made the link's target: %v", err)
	}
}
