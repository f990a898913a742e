package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/store/storetest"
)

// lockedBuffer is an output stream a running command writes while the test
// reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// captureLive sends both output streams to one buffer for the rest of the
// test, readable while a command runs.
func captureLive(t *testing.T) *lockedBuffer {
	captureMu.Lock()
	b := &lockedBuffer{}
	oldOut, oldErr := stdout, stderr
	stdout, stderr = b, b
	t.Cleanup(func() { stdout, stderr = oldOut, oldErr; captureMu.Unlock() })
	return b
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func wantExit2(t *testing.T, err error, says string) {
	t.Helper()
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), says) {
		t.Fatalf("got %v, want exit status 2 saying %q", err, says)
	}
}

// A data directory marked as demo data is refused by serve before anything
// is opened: no database, no token, no file is added.
func TestServeRefusesADataDirectoryHoldingDemoData(t *testing.T) {
	captureLive(t)
	dir := filepath.Join(t.TempDir(), "demo")
	var cfg config
	fs, _ := newFlags("test", &cfg)
	if err := parse(fs, &cfg, []string{"--data-dir", dir}); err != nil {
		t.Fatal(err)
	}
	if err := (&demoRun{modules: 1, domains: 1}).configure(&cfg); err != nil {
		t.Fatal(err)
	}
	before := dirNames(t, dir)
	if !slices.Equal(before, []string{demoMarkerName}) {
		t.Fatalf("a new demo directory holds %q", before)
	}
	err := run(context.Background(), []string{"serve", "--data-dir", dir, "--addr", "127.0.0.1:0"})
	wantExit2(t, err, "holds demo data")
	if after := dirNames(t, dir); !slices.Equal(after, before) {
		t.Fatalf("serve refused but left %q", after)
	}
}

// keyport demo refuses a directory that holds other data (here the database
// `keyport hsm init` makes for serve; the token is the test's, as SoftHSM
// takes one configuration a process), other
// databases and tokens than its own, and a demo whose setup was interrupted;
// it neither marks nor changes the directory.
func TestDemoRefusesADataDirectoryHoldingOtherDataAndOtherStores(t *testing.T) {
	o := captureLive(t)
	ctx := context.Background()
	prod := filepath.Join(t.TempDir(), "var")
	if err := run(ctx, []string{"hsm", "init", "--data-dir", prod, "--hsm", hsmtest.New(t)}); err != nil {
		t.Fatalf("hsm init: %v\n%s", err, o)
	}
	before := dirNames(t, prod)
	if !slices.Contains(before, "keyport.db") {
		t.Fatalf("hsm init made %q", before)
	}
	wantExit2(t, run(ctx, []string{"demo", "--data-dir", prod, "--addr", "127.0.0.1:0"}), "not demo data")
	if after := dirNames(t, prod); !slices.Equal(after, before) {
		t.Fatalf("demo refused but changed the directory: %q, was %q", after, before)
	}

	fresh := filepath.Join(t.TempDir(), "demo")
	for _, extra := range [][]string{{"--db", filepath.Join(t.TempDir(), "other.db")}, {"--hsm", "pkcs11:token=production"}} {
		err := run(ctx, append([]string{"demo", "--data-dir", fresh, "--addr", "127.0.0.1:0"}, extra...))
		wantExit2(t, err, "--db and --hsm")
		if names := dirNames(t, fresh); len(names) > 0 {
			t.Fatalf("demo with %s refused but made %q", extra[0], names)
		}
	}

	// A demo directory whose setup never finished.
	interrupted := filepath.Join(t.TempDir(), "demo")
	os.MkdirAll(interrupted, 0o700)
	os.WriteFile(filepath.Join(interrupted, demoMarkerName), []byte(`{"demo":true,"ready":false,"modules":3,"domains":4}`), 0o600)
	os.WriteFile(filepath.Join(interrupted, "keyport.db"), nil, 0o600)
	wantExit2(t, run(ctx, []string{"demo", "--data-dir", interrupted, "--addr", "127.0.0.1:0"}), "remove it")
}

func TestDemoFlagsAreTakenOutOfServesFlags(t *testing.T) {
	fset := flag.NewFlagSet("x", flag.ContinueOnError)
	fset.Int("modules", 3, "")
	fset.Bool("pcsc", false, "")
	own, rest := splitDemoArgs(fset, []string{"--addr", "127.0.0.1:0", "--modules", "2", "--pcsc", "-modules=5", "--data-dir=x", "--", "--pcsc"})
	if !slices.Equal(own, []string{"--modules", "2", "--pcsc", "-modules=5"}) ||
		!slices.Equal(rest, []string{"--addr", "127.0.0.1:0", "--data-dir=x", "--", "--pcsc"}) {
		t.Fatalf("own %q rest %q", own, rest)
	}
	if !isDataDirFlag("--data-dir=x") || !isDataDirFlag("-data-dir") || isDataDirFlag("data-dir") {
		t.Fatal("isDataDirFlag")
	}
	wantExit2(t, cmdDemo(context.Background(), []string{"--modules", "0"}), "--modules must be 1 to 20")
	wantExit2(t, cmdDemo(context.Background(), []string{"--domains", "999"}), "--domains must be 1 to")
	seen := map[string]bool{}
	for n := 1; n <= 20; n++ {
		e, err := keyport.ParseEID(demoEID(n))
		if err != nil || seen[string(e)] {
			t.Fatalf("demo EID %d %s: %v (seen %v)", n, demoEID(n), err, seen[string(e)])
		}
		seen[string(e)] = true
	}
}

// With --pcsc the demo's modules sit in vpcd readers of a real pcscd: perso
// and the handset agents reach them through PC/SC, and a claimed domain's
// second keys arrive through the agent as in the in-process demo.
func TestDemoOverPCSCDeliversTheSecondKeysThroughVPCD(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	out := captureLive(t)
	// A process of its own: SoftHSM reads its configuration once a process,
	// and the demo's token is its own.
	work := t.TempDir()
	buildKeyport(t, filepath.Join(work, "bin", "keyport"))
	dir := filepath.Join(work, "demo")
	addr := freeAddr(t)
	demo := startCommand(t, work, []string{pcsctest.SocketEnv + "=" + env.Socket}, "./bin/keyport", "demo", "--pcsc",
		"--vpcd", env.VPCDAddr, "--modules", "2", "--domains", "2", "--data-dir", dir, "--addr", addr)
	banner := demo.waitFor(t, "keyport demo started in", 2*time.Minute)
	deadline := time.Now().Add(2 * time.Minute)
	eids := regexp.MustCompile(`(?m)^  EID (\d{32})$`).FindAllStringSubmatch(banner, -1)
	if len(eids) != 2 || !strings.Contains(banner, "through pcscd and vpcd") {
		t.Fatalf("banner:\n%s", banner)
	}
	eid := keyport.EID(eids[1][1])
	tokenB, _ := os.ReadFile(filepath.Join(dir, demoTokenName))
	token := strings.TrimSpace(string(tokenB))
	call := func(method, path string, body []byte, v any) []byte {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, rb)
		}
		if v != nil {
			json.Unmarshal(rb, v)
		}
		return rb
	}
	var keys struct {
		WrappingKeys []struct{ ID string } `json:"wrapping_keys"`
	}
	call("GET", "/api/v1/wrapping-keys", nil, &keys)
	if len(keys.WrappingKeys) != 1 {
		t.Fatalf("demo provider has %d wrapping keys", len(keys.WrappingKeys))
	}
	var mod struct {
		Demo    bool `json:"demo"`
		Domains []struct {
			AID   keyport.AID `json:"aid"`
			State string      `json:"state"`
		} `json:"domains"`
	}
	call("GET", "/api/v1/modules/"+string(eid), nil, &mod)
	if !mod.Demo || len(mod.Domains) != 2 || mod.Domains[0].State != string(keyport.Unassigned) {
		t.Fatalf("module %s: %+v", eid, mod)
	}
	aid := mod.Domains[0].AID
	call("POST", "/api/v1/claims", fmt.Appendf(nil, `{"eid":%q,"aid":%q,"wrapping_key_id":%q}`, eid, aid, keys.WrappingKeys[0].ID), nil)
	pkg := filepath.Join(work, "pkg.json")
	os.WriteFile(pkg, call("GET", "/api/v1/domains/"+string(eid)+"/"+string(aid)+"/key-package", nil, nil), 0o600)
	err := run(context.Background(), []string{"sp", "script", "--package", pkg, "--key", filepath.Join(dir, demoKeyName), "--generate",
		"--new-keys-out", filepath.Join(work, "new.keys.json"), "--submit", "http://" + addr, "--token-file", filepath.Join(dir, demoTokenName)})
	if err != nil {
		t.Fatalf("sp script: %v\n%s", err, out)
	}
	id := regexp.MustCompile(`job (job_\S+) QUEUED`).FindStringSubmatch(out.String())
	if id == nil {
		t.Fatalf("sp script printed:\n%s", out)
	}
	var job keyport.JobView
	for job.State != keyport.JobDone {
		if job.State.Final() || time.Now().After(deadline) {
			t.Fatalf("job %s: %s %s\n%s", id[1], job.State, job.LastError, demo.stderr())
		}
		time.Sleep(100 * time.Millisecond)
		job = keyport.JobView{}
		call("GET", "/api/v1/jobs/"+id[1], nil, &job)
	}
	var dom struct {
		State string `json:"state"`
		KVN   int    `json:"kvn"`
		Demo  bool   `json:"demo"`
	}
	call("GET", "/api/v1/domains/"+string(eid)+"/"+string(aid), nil, &dom)
	if dom.State != string(keyport.Personalized) || dom.KVN != 0x31 || !dom.Demo {
		t.Fatalf("domain after the job: %+v", dom)
	}
	if err := demo.stop(); err != nil {
		t.Fatalf("demo did not stop cleanly: %v\n%s", err, demo.stderr())
	}
}

// Demo data that left its marked directory (a demo database restored into
// production, or --db pointed at it) is still refused by serve: the
// database holds the demo's accounts, whose credentials are public. The
// refusal comes before anything is served or changed.
func TestServeRefusesADatabaseHoldingTheDemoAccounts(t *testing.T) {
	o := capture(t)
	dir := t.TempDir()
	dsn := storetest.SQLitePath(t)
	common := []string{"--data-dir", filepath.Join(dir, "data"), "--db", dsn, "--hsm", hsmtest.New(t)}
	kp(t, o, common, "hsm", "init")
	kp(t, o, common, "admin", "user", "add", demoAdminEmail, "--operator", "restorer")
	// A serve that does not refuse runs until the context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"serve", "--addr", "127.0.0.1:0"}, common...))
	wantExit2(t, err, "holds the demo account "+demoAdminEmail)
}
