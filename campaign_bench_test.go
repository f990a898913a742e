package keyport_test

import (
	"bytes"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/internal/peakrss"
	"github.com/keyport/keyport/store/storetest"
)

// benchCampaignModules is how many modules BenchmarkCampaign100k works on
// (KEYPORT_BENCH_MODULES changes it).
func benchCampaignModules() int {
	if n, err := strconv.Atoi(os.Getenv("KEYPORT_BENCH_MODULES")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// BenchmarkCampaign100k (SQLite; KEYPORT_BENCH_DB=postgres for
// PostgreSQL) queues a data script for domain 1 of each of 100,000
// modules, in one run, two ways on the same store and token:
//
//   - baseline: a plain loop of SubmitDataScript, the single-domain use case
//     (domain 2 of every module);
//   - campaign: CreateCampaign over an NDJSON upload of the same scripts
//     (every line checked, the targets materialized), then the runner's
//     steps until every target is QUEUED.
//
// Reported: modules/s of each, their ratio, and each phase's peak RSS
// (VmHWM, reset before each phase). Admin sessions are not driven here:
// TestCampaignOver10000ModulesEndsWithExactCountsPerCause does that.
//
//	go test -run '^$' -bench Campaign100k -benchtime 1x .
func BenchmarkCampaign100k(b *testing.B) {
	n := benchCampaignModules()
	dsn := storetest.SQLitePath(b)
	if os.Getenv("KEYPORT_BENCH_DB") == "postgres" {
		dsn = storetest.PostgresURL(b)
	}
	st := storetest.Open(b, dsn)
	w := &campaignWorld{World: fixture.New(b, st, 1, 2)}
	w.a, _, _ = w.Provider(b, "Bench Bank", fixture.RSAKeys()[0])
	setupStart := time.Now()
	for from := 1; from < n; from += 10_000 {
		var file bytes.Buffer
		for m := from; m < min(from+10_000, n); m++ {
			file.WriteString(w.ImportLine(b, fixture.EID(b, m), 2, ""))
			file.WriteByte('\n')
		}
		if _, err := w.Svc.ImportModules(ctx, fixture.Admin, "b1", &file, keyport.VerifyNone); err != nil {
			b.Fatal(err)
		}
	}
	w.Keys = nil
	err := st.Tx(ctx, func(tx keyport.Repo) error {
		var after int64
		for {
			ms, err := tx.ModulesAfter(ctx, after, 1000)
			if err != nil || len(ms) == 0 {
				return err
			}
			for _, m := range ms {
				after = m.ID
				for _, d := range m.Domains {
					if err := tx.TransitionDomain(ctx, d.ID, []keyport.DomainState{keyport.Unassigned}, keyport.Personalized, &w.a.ProviderID); err != nil {
						return err
					}
				}
			}
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	fresh := dataAPDUs(b)
	b.Logf("%d modules with 2 PERSONALIZED domains each set up in %s", n, time.Since(setupStart).Round(time.Second))
	var base, camp time.Duration
	var baseRSS, campRSS string
	for b.Loop() {
		// Baseline: the use case in a loop, domain 2.
		peakrss.Reset()
		start := time.Now()
		req := keyport.DataScriptRequest{APDUs: fresh}
		for m := range n {
			if _, err := w.Svc.SubmitDataScript(ctx, w.a, fixture.EID(b, m), fixture.AID(2), req); err != nil {
				b.Fatal(err)
			}
		}
		base = time.Since(start)
		baseRSS = peakrss.Get()
		// Campaign: domain 1 of every module.
		peakrss.Reset()
		start = time.Now()
		r, wr := pipeUpload(b, n, fresh)
		c, err := w.Svc.CreateCampaign(ctx, w.a, keyport.CampaignRequest{Op: keyport.CampaignData, Rate: keyport.MaxCampaignRate, ModuleCap: 2}, r)
		if err != nil {
			b.Fatal(err)
		}
		<-wr
		runner := &keyport.CampaignRunner{Service: w.Svc, Holder: "bench", Tick: 5 * time.Second}
		for queued := 0; queued < n; {
			k, err := runner.Step(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if k == 0 {
				b.Fatalf("the runner stopped at %d of %d", queued, n)
			}
			queued += k
		}
		camp = time.Since(start)
		campRSS = peakrss.Get()
		v, err := w.Svc.GetCampaign(ctx, w.a, c.ID)
		if err != nil || v.Counts[keyport.TargetQueued] != n {
			b.Fatalf("campaign counts %v: %v", v.Counts, err)
		}
	}
	bps, cps := float64(n)/base.Seconds(), float64(n)/camp.Seconds()
	b.ReportMetric(bps, "baseline-modules/s")
	b.ReportMetric(cps, "campaign-modules/s")
	b.ReportMetric(cps/bps, "campaign/baseline")
	b.Logf("%d modules: baseline SubmitDataScript loop %.0f modules/s (%s, peak RSS %s); campaign (upload checked, targets stored, runner) %.0f modules/s (%s, peak RSS %s); ratio %.2f",
		n, bps, base.Round(time.Millisecond), baseRSS, cps, camp.Round(time.Millisecond), campRSS, cps/bps)
}

// pipeUpload streams the NDJSON of n scripts (domain 1 of modules 0..n-1)
// without holding it in memory.
func pipeUpload(b *testing.B, n int, apdus []string) (*os.File, <-chan struct{}) {
	r, wr, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer wr.Close()
		var line strings.Builder
		for m := range n {
			line.Reset()
			j, _ := json.Marshal(map[string]any{"eid": fixture.EID(b, m), "aid": fixture.AID(1), "apdus": apdus})
			line.Write(j)
			line.WriteByte('\n')
			if _, err := wr.WriteString(line.String()); err != nil {
				return
			}
		}
	}()
	b.Cleanup(func() { r.Close() })
	return r, done
}
