package web_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// BenchmarkClaimWithAndWithoutMetrics claims, in the same run, on two worlds
// alike but for instrumentation: one with no metrics at all, the other with
// what `keyport serve --metrics-addr` turns on (the use cases' counters, HSM
// mechanism timing, statement timing). Claims alternate between the two, the
// order swapping every iteration, so that both see the same machine load. It
// reports each median and their ratio (instrumented/plain).
//
//	go test ./web -run '^$' -bench ClaimWithAndWithoutMetrics -benchtime 200x
func BenchmarkClaimWithAndWithoutMetrics(b *testing.B) {
	const domains = 8
	ctx := context.Background()
	modules := b.N/domains + 1
	plain := fixture.New(b, storetest.Open(b, storetest.SQLitePath(b)), modules, domains)
	inst := fixture.New(b, storetest.Open(b, storetest.SQLitePath(b)), modules, domains)
	sm := web.NewServiceMetrics()
	inst.Svc.Metrics = sm
	reg := prometheus.NewRegistry()
	reg.MustRegister(sm, inst.HSM.Collector(), inst.Store.Collector())
	pp, _, pwk := plain.Provider(b, "Bank A", fixture.RSAKeys()[0])
	ip, _, iwk := inst.Provider(b, "Bank A", fixture.RSAKeys()[0])
	claim := func(w *fixture.World, p keyport.Principal, wk string, i int) time.Duration {
		start := time.Now()
		_, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(b, i/domains), WrappingKeyID: wk})
		d := time.Since(start)
		if err != nil {
			b.Fatalf("claim %d: %v", i, err)
		}
		return d
	}
	dp := make([]time.Duration, 0, b.N)
	di := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			dp = append(dp, claim(plain, pp, pwk, i))
			di = append(di, claim(inst, ip, iwk, i))
		} else {
			di = append(di, claim(inst, ip, iwk, i))
			dp = append(dp, claim(plain, pp, pwk, i))
		}
	}
	b.StopTimer()
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "keyport_claims_total" {
			var n float64
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
			if n != float64(b.N) {
				b.Fatalf("keyport_claims_total = %v after %d claims", n, b.N)
			}
		}
	}
	mp, mi := percentile(dp, 0.5), percentile(di, 0.5)
	b.ReportMetric(float64(mp.Microseconds()), "plain-median-µs")
	b.ReportMetric(float64(mi.Microseconds()), "instrumented-median-µs")
	b.ReportMetric(float64(mi)/float64(mp), "instrumented/plain")
}
