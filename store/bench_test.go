package store_test

import (
	"encoding/hex"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// one ImportModules call: "derived" domains carry KCVs only, "imported" ones
// also three KWP-wrapped keys each, as a manufacturer's file does (the rows
// are three times wider, and their keys are the bulk of what is written). A
// million-module file:
//
//	go test ./store -run '^$' -bench Import/sqlite/imported -benchtime 1000000x
func BenchmarkImport(b *testing.B) {
	benchDatabases(b, func(b *testing.B, dsn func() string) {
		for _, source := range []keyport.KeySource{keyport.KeyDerived, keyport.KeyImported} {
			b.Run(string(source), func(b *testing.B) {
				s := storetest.Open(b, dsn())
				batch := &keyport.Batch{Name: "bench", KeySource: source}
				if err := s.CreateBatch(ctx, batch); err != nil {
					b.Fatal(err)
				}
				next := modules(1, b.N, 8)
				if source == keyport.KeyImported {
					next = importedModules(b.N, 8)
				}
				b.ReportAllocs()
				b.ResetTimer()
				start, cpu0 := time.Now(), cpuTime()
				n, err := s.ImportModules(ctx, batch.ID, next)
				elapsed, cpu := time.Since(start), cpuTime()-cpu0
				b.StopTimer()
				if err != nil || n != b.N {
					b.Fatalf("ImportModules = %d, %v", n, err)
				}
				b.ReportMetric(float64(b.N)/elapsed.Seconds(), "modules/s")
				// CPU time per module: the machine is shared, so wall time
				// alone says little when others build beside the benchmark.
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/module")
			})
		}
	})
}

// importedModules yields count modules of `domains` imported domains, each
// with three random 24-byte "wrapped" keys (an AES-128 key under KWP) and
// their KCVs, as ParseImportLine returns them. The keys come from a pool
// built once, so that the benchmark times the store, not the generator.
func importedModules(count, domains int) func() (*keyport.ModuleImport, error) {
	rng := rand.New(rand.NewPCG(1, 2))
	type keySet struct {
		imported map[keyport.KeyUsage][]byte
		kcv      map[keyport.KeyUsage]string
	}
	pool := make([]keySet, 4096)
	for i := range pool {
		pool[i] = keySet{map[keyport.KeyUsage][]byte{}, map[keyport.KeyUsage]string{}}
		for _, u := range keyport.Usages {
			w := make([]byte, 24)
			for j := range w {
				w[j] = byte(rng.Uint32())
			}
			pool[i].imported[u] = w
			pool[i].kcv[u] = strings.ToUpper(hex.EncodeToString(w[:3]))
		}
	}
	i := 0
	return func() (*keyport.ModuleImport, error) {
		if i == count {
			return nil, nil
		}
		i++
		m := &keyport.ModuleImport{Line: i, EID: testEID(i), ISDAID: "A000000151000000",
			Domains: make([]keyport.Domain, domains)}
		for d := range m.Domains {
			k := pool[(i*domains+d)%len(pool)]
			m.Domains[d] = keyport.Domain{AID: testAID(d + 1), EID: m.EID, KVN: 0x30, State: keyport.Unassigned,
				KeySource: keyport.KeyImported, Wrapped: k.imported, KCV: k.kcv}
		}
		return m, nil
	}
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

// BenchmarkClaimWrite is the write transaction of b.N claims from 4
// goroutines at once through ClaimCommits (the domain's move, the claim
// with a 3 KB package, its outbox row, its audit event and the keyed head:
// on SQLite a group commit, on PostgreSQL the pipeline), against a
// baseline in the same run: the same claim rows alone, each inserted in a
// transaction of its own. Both take turns, a quarter of the claims each, so
// that they see the same machine. Reported: µs per claim of each and the
// baseline's share of the claim's time.
//
//	go test ./store -run '^$' -bench ClaimWrite -benchtime 4000x
func BenchmarkClaimWrite(b *testing.B) {
	benchDatabases(b, func(b *testing.B, dsn func() string) {
		s := storetest.Open(b, dsn())
		bt := createBatch(b, s, "b")
		importModules(b, s, bt.ID, 1, b.N, 1)
		p := createProvider(b, s, "a@x.example")
		wk := createWrappingKey(b, s, p.ID)
		cw := s.ClaimCommits()
		claims := make([]keyport.ClaimWrite, b.N)
		for i := range claims {
			claims[i] = claimWrite(b, s, p.ID, wk.ID, i+1, "clm_"+strconv.Itoa(i+1), "")
		}
		bare := func(i int) error {
			c := *claims[i].Claim
			c.ID = "bare_" + c.ID
			return s.Tx(ctx, func(tx keyport.Repo) error { return tx.CreateClaim(ctx, &c) })
		}
		full := func(i int) error { return cw.WriteClaim(ctx, claims[i], testKeys) }
		var bareTime, fullTime time.Duration
		b.ResetTimer()
		const slices = 4
		for r := range slices {
			lo, hi := r*b.N/slices, (r+1)*b.N/slices
			bareTime += parallel4(b, lo, hi, bare)
			fullTime += parallel4(b, lo, hi, full)
		}
		b.StopTimer()
		n := float64(b.N)
		b.ReportMetric(float64(fullTime.Microseconds())/n, "µs/claim")
		b.ReportMetric(float64(bareTime.Microseconds())/n, "bare-insert-µs/claim")
		b.ReportMetric(bareTime.Seconds()/fullTime.Seconds()*100, "%-bare-insert")
	})
}

// parallel4 runs fn(i) for i in [lo, hi) from 4 goroutines and returns how
// long that took.
func parallel4(b *testing.B, lo, hi int, fn func(i int) error) time.Duration {
	start := time.Now()
	var next atomic.Int64
	next.Store(int64(lo))
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1) - 1; i < int64(hi); i = next.Add(1) - 1 {
				if err := fn(int(i)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}
