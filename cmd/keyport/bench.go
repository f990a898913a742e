package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/peakrss"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/web"
)

// cmdBench measures keyport on this machine's HSM and database. Each figure
// is reported against a baseline measured in the same run.
func cmdBench(ctx context.Context, args []string) error {
	if len(args) == 0 || (args[0] != "claims" && args[0] != "lookup") {
		return exitError{2, errors.New("usage: keyport bench claims|lookup [flags]  (-h for flags)")}
	}
	what := args[0]
	var cfg config
	fs, err := newFlags("bench "+what, &cfg)
	if err != nil {
		return err
	}
	n := fs.Int("n", 300, "claims: how many claims (and raw HSM operations)")
	conc := fs.Int("concurrency", 4, "claims: concurrent clients")
	rounds := fs.Int("rounds", 6, "claims: alternate the raw HSM baseline and the claims this many times")
	modules := fs.Int("modules", 100000, "lookup: modules to import")
	domains := fs.Int("domains", 8, "lookup: domains per module")
	requests := fs.Int("requests", 5000, "lookup: lookups to time")
	keep := fs.Bool("keep", false, "keep the temporary data directory")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the timed part to this file")
	if err := parse(fs, &cfg, args[1:]); err != nil {
		return err
	}
	// A bench never touches the configured data directory: it makes its own.
	tmp, err := os.MkdirTemp("", "keyport-bench-")
	if err != nil {
		return err
	}
	if !*keep {
		defer os.RemoveAll(tmp)
	}
	cfg.DataDir = tmp
	if !strings.HasPrefix(cfg.DB, "postgres") {
		cfg.DB = filepath.Join(tmp, "keyport.db")
	}
	cfg.LogFormat = "text"
	// The bench's deployment is its own and thrown away: its batch export
	// needs no second admin.
	cfg.DualControl = 1
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	a.log = newLogger(cfg, io.Discard)
	a.svc.Log = a.log
	if _, err := a.hsm.Init(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "keyport bench %s: db %s, hsm %s\n", what, redactDSN(cfg.DB), map[bool]string{true: "SoftHSM (temporary token)", false: redactHSM(cfg.HSM)}[cfg.HSM == ""])
	// The profile covers the timed part only: the set-up (the token's
	// keys, the import, the provider's RSA key) would otherwise be a large
	// share of it.
	profile := func() (stop func(), err error) {
		if *cpuProfile == "" {
			return func() {}, nil
		}
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return nil, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return nil, err
		}
		return func() { pprof.StopCPUProfile(); f.Close() }, nil
	}
	if what == "claims" {
		return benchClaims(ctx, a, *n, *conc, *rounds, profile)
	}
	return benchLookup(ctx, a, *modules, *domains, *requests, profile)
}

// benchBatch creates an imported batch and returns the transport key as the
// manufacturer sees it.
func benchBatch(ctx context.Context, a *app, name string) ([]byte, error) {
	maker, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		return nil, err
	}
	_, export, err := a.svc.CreateBatch(ctx, cli, name, "", &maker.PublicKey)
	if err != nil {
		return nil, err
	}
	hash, err := keywrap.ParseOAEPHash(string(export.OAEPHash))
	if err != nil {
		return nil, err
	}
	return keywrap.UnwrapRSAAES(maker, export.Wrapped, hash)
}

func benchEID(i int) keyport.EID {
	base := fmt.Sprintf("89049032%022d", i)
	cd, _ := keyport.EIDCheckDigits(base)
	return keyport.EID(base + cd)
}

// synthModules is an import file made on the fly: module i has `domains`
// domains whose keys are real KWP wraps under the transport key when real is
// set, random bytes otherwise (imported with --verify none).
type synthModules struct {
	n, domains int
	transport  []byte
	real       bool
	i          int
	buf        bytes.Buffer
}

func (s *synthModules) Read(p []byte) (int, error) {
	for s.buf.Len() < len(p) && s.i < s.n {
		s.line(s.i)
		s.i++
	}
	if s.buf.Len() == 0 {
		return 0, io.EOF
	}
	return s.buf.Read(p)
}

func (s *synthModules) Seek(off int64, whence int) (int64, error) {
	if off != 0 || whence != io.SeekStart {
		return 0, errors.New("synthModules: only rewinds")
	}
	s.i = 0
	s.buf.Reset()
	return 0, nil
}

func (s *synthModules) line(i int) {
	fmt.Fprintf(&s.buf, `{"eid":"%s","isd_aid":"A000000151000000","domains":[`, benchEID(i))
	for d := 1; d <= s.domains; d++ {
		if d > 1 {
			s.buf.WriteByte(',')
		}
		fmt.Fprintf(&s.buf, `{"aid":"A00000015153504101%02X","kvn":48,"keys":{`, d)
		kcv := map[string]string{}
		// Deterministic per module, so that both passes of the import read
		// the same file; cheap, so that the generator does not dominate.
		rng := mrand.New(mrand.NewPCG(uint64(i), uint64(d)))
		for j, u := range []string{"enc", "mac", "dek"} {
			w := make([]byte, 24)
			k := make([]byte, 16)
			fill(rng, k)
			if s.real {
				w, _ = keywrap.WrapKWP(s.transport, k)
				c, _ := gp.KCV(k)
				kcv[u] = fmt.Sprintf("%X", c)
			} else {
				fill(rng, w)
				kcv[u] = "000000"
			}
			if j > 0 {
				s.buf.WriteByte(',')
			}
			fmt.Fprintf(&s.buf, `"%s":"%s"`, u, base64.StdEncoding.EncodeToString(w))
		}
		fmt.Fprintf(&s.buf, `},"kcv":{"enc":"%s","mac":"%s","dek":"%s"}}`, kcv["enc"], kcv["mac"], kcv["dek"])
	}
	s.buf.WriteString("]}\n")
}

func fill(r *mrand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

// parallel runs fn(i) for i in [lo,hi) on conc goroutines and returns the
// time it took.
func parallel(lo, hi, conc int, fn func(i int) error) (time.Duration, error) {
	var next atomic.Int64
	next.Store(int64(lo))
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= hi {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

func serveLoopback(a *app) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: web.New(a.svc, web.Options{Log: a.log})}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

func benchClaims(ctx context.Context, a *app, n, conc, rounds int, profile func() (func(), error)) error {
	if rounds < 1 || rounds > n {
		return exitError{2, fmt.Errorf("bench claims: --rounds must be 1 to --n (%d), got %d", n, rounds)}
	}
	transport, err := benchBatch(ctx, a, "bench")
	if err != nil {
		return err
	}
	// conc modules more than are timed, for the warm-up.
	if _, err := a.svc.ImportModules(ctx, cli, "bench", &synthModules{n: n + conc, domains: 1, transport: transport, real: true}, keyport.VerifyNone); err != nil {
		return err
	}
	_, token, err := a.svc.AddProvider(ctx, cli, "Bench Bank", "bench@example.com", keyport.KindBank)
	if err != nil {
		return err
	}
	sp, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		return err
	}
	p, _ := a.svc.Authenticate(ctx, token)
	wk, err := a.svc.RegisterWrappingKey(ctx, p, pemPublic(&sp.PublicKey))
	if err != nil {
		return err
	}
	// Baseline: the HSM work of one claim (3 unwraps + 3 RSA-AES wraps + sign).
	payload := bytes.Repeat([]byte("x"), 1800)
	rawWork := func(i int) error {
		m, err := a.store.GetModule(ctx, benchEID(i))
		if err != nil {
			return err
		}
		d := m.Domains[0]
		if _, err := a.hsm.WrapFirstKeys(ctx, keyport.FirstKeysRequest{Batch: "bench", Source: d.KeySource, EID: d.EID, AID: d.AID, Wrapped: d.Wrapped, Recipient: &sp.PublicKey}); err != nil {
			return err
		}
		_, err = a.hsm.SignES256(ctx, payload)
		return err
	}
	base, stop, err := serveLoopback(a)
	if err != nil {
		return err
	}
	defer stop()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	claim := func(i int) error {
		body := fmt.Sprintf(`{"eid":"%s","wrapping_key_id":"%s"}`, benchEID(i), wk.ID)
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/api/v1/claims", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("claim %d: HTTP %d", i, resp.StatusCode)
		}
		return nil
	}
	// One untimed round of each first, on modules the timed rounds do not
	// use: what a process does once (connections to the server and the
	// database, prepared statements, caches, the heap's growth) is no
	// part of either side's steady state.
	if _, err := parallel(n, n+conc, conc, rawWork); err != nil {
		return fmt.Errorf("raw HSM warm-up: %w", err)
	}
	if _, err := parallel(n, n+conc, conc, claim); err != nil {
		return fmt.Errorf("claims warm-up: %w", err)
	}
	// Baseline and claims take turns, a slice of the modules each, so that
	// both see the same share of a machine whose other load comes and goes.
	var rawTime, e2eTime time.Duration
	stopProfile, err := profile()
	if err != nil {
		return err
	}
	defer stopProfile()
	for r := 0; r < rounds; r++ {
		lo, hi := r*n/rounds, (r+1)*n/rounds
		d, err := parallel(lo, hi, conc, rawWork)
		if err != nil {
			return fmt.Errorf("raw HSM baseline: %w", err)
		}
		rawTime += d
		if d, err = parallel(lo, hi, conc, claim); err != nil {
			return fmt.Errorf("claims: %w", err)
		}
		e2eTime += d
	}
	raw, e2e := float64(n)/rawTime.Seconds(), float64(n)/e2eTime.Seconds()
	fmt.Fprintf(stdout, "claims            n=%d concurrency=%d, in %d alternating rounds after an untimed warm-up of %d each\n", n, conc, rounds, conc)
	fmt.Fprintf(stdout, "raw HSM work      %8.1f claims/s  (3 unwraps + 3 RSA-AES wraps + ES256 sign)\n", raw)
	fmt.Fprintf(stdout, "end to end        %8.1f claims/s  (HTTP -> HSM -> DB, audit + outbox)\n", e2e)
	fmt.Fprintf(stdout, "ratio             %8.1f %%\n", 100*e2e/raw)
	return nil
}

func benchLookup(ctx context.Context, a *app, modules, domains, requests int, profile func() (func(), error)) error {
	if _, err := benchBatch(ctx, a, "bench"); err != nil {
		return err
	}
	// The import file is written first, untimed: what is measured is the
	// import of a file, as an operator runs it.
	path := filepath.Join(a.cfg.DataDir, "modules.jsonl")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	size, err := io.Copy(f, &synthModules{n: modules, domains: domains})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if f, err = os.Open(path); err != nil {
		return err
	}
	defer f.Close()
	stopProfile, err := profile()
	if err != nil {
		return err
	}
	defer stopProfile()
	start := time.Now()
	imported, err := a.svc.ImportModules(ctx, cli, "bench", f, keyport.VerifyNone)
	if err != nil {
		return err
	}
	took := time.Since(start)
	os.Remove(path)
	fmt.Fprintf(stdout, "import            %d modules x %d domains (%.0f MB file) in %.1f s = %.0f modules/s; peak RSS of this process %s\n",
		imported, domains, float64(size)/1e6, took.Seconds(), float64(imported)/took.Seconds(), peakrss.Get())
	_, token, err := a.svc.AddProvider(ctx, cli, "Bench Bank", "bench@example.com", keyport.KindBank)
	if err != nil {
		return err
	}
	base, stop, err := serveLoopback(a)
	if err != nil {
		return err
	}
	defer stop()
	client := &http.Client{}
	pick := func(i int) keyport.EID { return benchEID(int(uint64(i) * 2654435761 % uint64(modules))) }
	timeIt := func(fn func(i int) error) ([]time.Duration, error) {
		lat := make([]time.Duration, 0, requests)
		for i := 0; i < requests; i++ {
			t0 := time.Now()
			if err := fn(i); err != nil {
				return nil, err
			}
			lat = append(lat, time.Since(t0))
		}
		slices.Sort(lat)
		return lat, nil
	}
	store, err := timeIt(func(i int) error { _, err := a.store.GetModule(ctx, pick(i)); return err })
	if err != nil {
		return err
	}
	get := func(path string) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: HTTP %d", path, resp.StatusCode)
		}
		return nil
	}
	httpLat, err := timeIt(func(i int) error { return get("/api/v1/modules/" + string(pick(i))) })
	if err != nil {
		return err
	}
	jwks, err := timeIt(func(int) error { return get("/.well-known/jwks.json") })
	if err != nil {
		return err
	}
	q := func(l []time.Duration, p float64) string {
		return fmt.Sprintf("%.3f ms", float64(l[int(math.Min(float64(len(l)-1), p*float64(len(l))))].Microseconds())/1000)
	}
	fmt.Fprintf(stdout, "EID lookup, store       p50 %s  p99 %s  (%d lookups)\n", q(store, .5), q(store, .99), requests)
	fmt.Fprintf(stdout, "EID lookup, HTTP API    p50 %s  p99 %s\n", q(httpLat, .5), q(httpLat, .99))
	fmt.Fprintf(stdout, "baseline: JWKS, HTTP    p50 %s  p99 %s  (same server, no database)\n", q(jwks, .5), q(jwks, .99))
	return nil
}
