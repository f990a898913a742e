// Package peakrss reads and resets this process's peak resident set size,
// for the benchmarks that report memory beside throughput (Linux /proc).
package peakrss

import (
	"os"
	"runtime/debug"
	"strings"
)

// Get returns the process's peak resident set (VmHWM, e.g. "123456 kB"),
// or "unknown" where /proc does not say.
func Get() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// Reset returns the memory the process freed to the OS, then resets the peak
// to what is left (clear_refs 5), so that the next Get measures only what
// comes after.
func Reset() {
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}
