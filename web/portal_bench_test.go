package web_test

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// benchModules yields n derived modules of 8 SSDs each.
func benchModules(tb testing.TB, n int) func() (*keyport.ModuleImport, error) {
	i := 0
	return func() (*keyport.ModuleImport, error) {
		if i == n {
			return nil, nil
		}
		i++
		m := &keyport.ModuleImport{Line: i, EID: fixture.EID(tb, i), ISDAID: "A000000151000000"}
		for d := 1; d <= 8; d++ {
			m.Domains = append(m.Domains, keyport.Domain{AID: keyport.AID(fmt.Sprintf("A000000151535042%02X", d)), KVN: 0x30,
				State: keyport.Unassigned, KeySource: keyport.KeyDerived})
		}
		return m, nil
	}
}

// serverTimes records how long the handler took per page class, measured
// around the whole echo stack (middleware included).
type serverTimes struct {
	mu sync.Mutex
	d  map[string][]time.Duration
}

func (s *serverTimes) wrap(h http.Handler, class func(*http.Request) string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		h.ServeHTTP(w, r)
		el := time.Since(start)
		s.mu.Lock()
		s.d[class(r)] = append(s.d[class(r)], el)
		s.mu.Unlock()
	})
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// BenchmarkPortalPagesUnderLoad loads KEYPORT_BENCH_MODULES modules (default
// 10,000; the closing note uses 1,000,000) and drives the provider dashboard,
// the EID lookup page and a static asset, one after the other, at
// KEYPORT_BENCH_RATE requests/s (default 200) for KEYPORT_BENCH_REQUESTS
// requests each (default 1,000), from an in-process open-loop generator to
// 127.0.0.1. It reports client latency p50/p99 and server time p50/p99 of
// each. Nothing is asserted.
//
//	KEYPORT_BENCH_MODULES=1000000 go test ./web -run '^$' -bench PortalPagesUnderLoad -benchtime 1x
func BenchmarkPortalPagesUnderLoad(b *testing.B) {
	modules := envInt("KEYPORT_BENCH_MODULES", 10000)
	rate := envInt("KEYPORT_BENCH_RATE", 200)
	requests := envInt("KEYPORT_BENCH_REQUESTS", 1000)
	ctx := context.Background()
	s := storetest.Open(b, storetest.SQLitePath(b))
	h := hsmtest.Open(b)
	svc := &keyport.Service{Store: s, Custody: h}
	admin := keyport.Principal{Admin: true, Name: "bench"}
	batch, _, err := svc.CreateBatch(ctx, admin, "bench", "A000000151535042", nil)
	if err != nil {
		b.Fatal(err)
	}
	loadStart := time.Now()
	if n, err := s.ImportModules(ctx, batch.ID, benchModules(b, modules)); err != nil || n != modules {
		b.Fatalf("import: %d %v", n, err)
	}
	b.Logf("%d modules (%d domains) loaded in %s", modules, modules*8, time.Since(loadStart).Round(time.Millisecond))

	// A provider with 20 claimed domains, signed in through the form.
	prov, err := svc.SignUpProvider(ctx, keyport.SignUp{Organisation: "Bench Bank", Kind: keyport.KindBank, Contact: "B",
		Email: "ops@bench.example", Password: "bench password 1"}, "http://127.0.0.1")
	if err != nil {
		b.Fatal(err)
	}
	u, _ := s.GetUserByEmail(ctx, "ops@bench.example")
	s.SetUserVerified(ctx, u.ID, time.Now())
	svc.SetProviderStatus(ctx, admin, prov.ID, keyport.ProviderApproved)
	p := keyport.Principal{ProviderID: prov.ID, Name: "bench"}
	wk, err := svc.RegisterWrappingKey(ctx, p, fixture.PublicPEM(fixture.RSAKeys()[0]))
	if err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if _, _, err := svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(b, i*(modules/21+1)%modules+1), WrappingKeyID: wk.ID}); err != nil {
			b.Fatal(err)
		}
	}

	st := &serverTimes{d: map[string][]time.Duration{}}
	class := func(r *http.Request) string { return r.URL.Path }
	srv := httptest.NewServer(st.wrap(web.New(svc, web.Options{InsecureCookies: true}), class))
	defer srv.Close()
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	cl := &http.Client{Jar: jar, Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, _ := cl.Get(srv.URL + "/login")
	resp.Body.Close()
	u0, _ := url.Parse(srv.URL)
	csrf := ""
	for _, c := range jar.Cookies(u0) {
		if c.Name == "kp_csrf" {
			csrf = c.Value
		}
	}
	resp, err = cl.PostForm(srv.URL+"/login", url.Values{"csrf": {csrf}, "email": {"ops@bench.example"}, "password": {"bench password 1"}})
	if err != nil || resp.StatusCode != http.StatusSeeOther {
		b.Fatalf("sign in: %v %v", resp.Status, err)
	}
	resp.Body.Close()

	pages := []struct {
		name string
		path func() string
	}{
		{"dashboard", func() string { return "/portal" }},
		{"lookup", func() string { return "/portal/modules?eid=" + string(fixture.EID(b, 1+rand.IntN(modules))) }},
		{"static", func() string { return "/assets/portal.css" }},
	}
	b.ResetTimer()
	for _, pg := range pages {
		var mu sync.Mutex
		var lat []time.Duration
		var wg sync.WaitGroup
		errs := 0
		tick := time.NewTicker(time.Second / time.Duration(rate))
		st.mu.Lock()
		st.d = map[string][]time.Duration{}
		st.mu.Unlock()
		start := time.Now()
		for i := 0; i < requests; i++ {
			<-tick.C
			wg.Add(1)
			go func(path string) {
				defer wg.Done()
				t0 := time.Now()
				resp, err := cl.Get(srv.URL + path)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				el := time.Since(t0)
				mu.Lock()
				defer mu.Unlock()
				if err != nil || resp.StatusCode != http.StatusOK {
					errs++
					return
				}
				lat = append(lat, el)
			}(pg.path())
		}
		wg.Wait()
		tick.Stop()
		took := time.Since(start)
		var server []time.Duration
		st.mu.Lock()
		for _, ds := range st.d {
			server = append(server, ds...)
		}
		st.mu.Unlock()
		b.Logf("%-9s %d req at %.0f req/s, %d errors: latency p50 %v p99 %v; server p50 %v p99 %v",
			pg.name, requests, float64(requests)/took.Seconds(), errs, percentile(lat, 0.5), percentile(lat, 0.99),
			percentile(server, 0.5), percentile(server, 0.99))
		b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, pg.name+"-p99-ms")
		b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, pg.name+"-p50-ms")
		b.ReportMetric(float64(percentile(server, 0.99).Microseconds())/1000, pg.name+"-server-p99-ms")
	}
}
