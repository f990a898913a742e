package store_test

import (
	"math/rand/v2"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store/storetest"
)

// benchDatabases are the stores benchmarks run on: SQLite always, PostgreSQL
// when KEYPORT_BENCH_POSTGRES=1 (the 10,000 modules/s target is SQLite's).
func benchDatabases(b *testing.B, fn func(b *testing.B, dsn func() string)) {
	b.Run("sqlite", func(b *testing.B) { fn(b, func() string { return storetest.SQLitePath(b) }) })
	if os.Getenv("KEYPORT_BENCH_POSTGRES") == "1" {
		b.Run("postgres", func(b *testing.B) { fn(b, func() string { return storetest.PostgresURL(b) }) })
	}
}

// BenchmarkImport streams b.N modules of 8 domains each into a fresh store in
// one ImportModules call. A million-module file:
//
//	go test ./store -run '^$' -bench Import -benchtime 1000000x
func BenchmarkImport(b *testing.B) {
	benchDatabases(b, func(b *testing.B, dsn func() string) {
		s := storetest.Open(b, dsn())
		batch := &keyport.Batch{Name: "bench", KeySource: keyport.KeyDerived}
		if err := s.CreateBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		start, cpu0 := time.Now(), cpuTime()
		n, err := s.ImportModules(ctx, batch.ID, modules(1, b.N, 8))
		elapsed, cpu := time.Since(start), cpuTime()-cpu0
		b.StopTimer()
		if err != nil || n != b.N {
			b.Fatalf("ImportModules = %d, %v", n, err)
		}
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "modules/s")
		// CPU time per module: the machine is shared, so wall time alone
		// says little when others build beside the benchmark.
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/module")
	})
}

// BenchmarkGetModule looks up random modules among KEYPORT_BENCH_MODULES
// (default 20,000) preloaded ones. With a million:
//
//	KEYPORT_BENCH_MODULES=1000000 go test ./store -run '^$' -bench GetModule
func BenchmarkGetModule(b *testing.B) {
	preload := 20000
	if v, err := strconv.Atoi(os.Getenv("KEYPORT_BENCH_MODULES")); err == nil && v > 0 {
		preload = v
	}
	benchDatabases(b, func(b *testing.B, dsn func() string) {
		s := storetest.Open(b, dsn())
		batch := &keyport.Batch{Name: "bench", KeySource: keyport.KeyDerived}
		if err := s.CreateBatch(ctx, batch); err != nil {
			b.Fatal(err)
		}
		if _, err := s.ImportModules(ctx, batch.ID, modules(1, preload, 8)); err != nil {
			b.Fatal(err)
		}
		eids := make([]keyport.EID, 1024)
		for i := range eids {
			eids[i] = testEID(1 + rand.IntN(preload))
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := cpuTime()
		for i := 0; i < b.N; i++ {
			m, err := s.GetModule(ctx, eids[i%len(eids)])
			if err != nil || len(m.Domains) != 8 {
				b.Fatalf("GetModule: %v", err)
			}
		}
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	})
}

// cpuTime is the process's user + system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
