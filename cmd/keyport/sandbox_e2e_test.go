package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the read-only look at a PostgreSQL production database

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// hookReceiver is the provider's HTTPS webhook receiver: it keeps every
// event with its signature.
type hookReceiver struct {
	mu     sync.Mutex
	events []hookEvent
}

type hookEvent struct {
	body []byte
	sig  string
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.events = append(h.events, hookEvent{b, r.Header.Get(keyport.WebhookSignatureHeader)})
	h.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// final returns the signed event that reports job ref's end, if it came.
func (h *hookReceiver) final(t *testing.T, keys keyport.JWKS, ref string) (*keyport.WebhookEvent, map[string]any) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.events {
		ev, err := keyport.VerifyWebhook(e.body, e.sig, keys)
		if err != nil {
			t.Fatalf("a sandbox webhook does not verify with the sandbox's JWKS: %v", err)
		}
		if ev.Job.ID == ref && ev.Job.State.Final() {
			var raw map[string]any
			json.Unmarshal(e.body, &raw)
			return ev, raw
		}
	}
	return nil, nil
}

// testSandbox starts the sandbox beside the production world w as serve
// does (sf, hooks, o), and closes it when t ends.
func testSandbox(t *testing.T, w *fixture.World, sf *sandboxFlags, hooks *cardLinkFlags, o sandboxOptions) *sandboxRun {
	t.Helper()
	prod := &app{cfg: config{DataDir: t.TempDir(), HSM: w.Token.URI}, log: slog.New(slog.DiscardHandler), store: w.Store, hsm: w.HSM, svc: w.Svc}
	run, err := startSandbox(context.Background(), prod, sf, hooks, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(run.Close)
	return run
}

// tableDigest is every production table's row count and a SHA-256 of its
// rows, read through a read-only connection. api_tokens.last_used_at is
// left out: authenticating any API call (sandbox or not) records it, at
// most once a minute.
func tableDigest(t *testing.T, dsn string) map[string]string {
	t.Helper()
	driver, source := "sqlite3", "file:"+dsn+"?mode=ro&_query_only=1"
	list := `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`
	if strings.HasPrefix(dsn, "postgres") {
		driver, source = "pgx", dsn
		list = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name`
	}
	db, err := sql.Open(driver, source)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(list)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	if len(tables) < 10 {
		t.Fatalf("the production database has %d tables: %v", len(tables), tables)
	}
	out := map[string]string{}
	for _, tbl := range tables {
		rs, err := db.Query(`SELECT * FROM "` + tbl + `"`)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rs.Columns()
		var lines []string
		for rs.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rs.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			var b strings.Builder
			for i, v := range vals {
				if tbl == "api_tokens" && cols[i] == "last_used_at" {
					continue
				}
				fmt.Fprintf(&b, "%s=%v|", cols[i], v)
			}
			lines = append(lines, b.String())
		}
		rs.Close()
		slices.Sort(lines)
		sum := sha256.Sum256([]byte(strings.Join(lines, "\n")))
		out[tbl] = fmt.Sprintf("%d rows %x", len(lines), sum[:8])
	}
	return out
}

// TestSandboxFaultsShowOnTheJobAndInTheWebhookAndProductionIsUntouched is
// the sandbox end to end: a production provider (its API token, wrapping
// key, HTTPS webhook) claims one sandbox domain a fault, submits a
// second-key script to each, and each job ends as its fault makes it, with
// the cause and the fault on the job and in its signed webhook, both
// marked sandbox; every production table is as it was before.
func TestSandboxFaultsShowOnTheJobAndInTheWebhookAndProductionIsUntouched(t *testing.T) {
	storetest.EachDSN(t, testSandboxFaults)
}

// testSandboxFaults runs the sandbox test with production on dbPath
// (SQLite or PostgreSQL); the sandbox keeps its SQLite file.
func testSandboxFaults(t *testing.T, dbPath string) {
	ctx := context.Background()
	st := storetest.Open(t, dbPath)
	w := fixture.New(t, st, 1, 1)
	w.Svc.Delivery.DevLoopbackWebhooks = true // the receiver listens on 127.0.0.1
	spKey := fixture.RSAKeys()[0]
	prov, token, wk := w.Provider(t, "Sandbox Bank", spKey)
	recv := &hookReceiver{}
	hooks := httptest.NewTLSServer(recv)
	defer hooks.Close()
	if _, err := w.Svc.SetWebhook(ctx, prov, hooks.URL+"/keyport"); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(hooks.Certificate())

	faults := []struct {
		name, spec string
		state      keyport.JobState
		cause      []string // in last_error, job and webhook alike
	}{
		{"none", `{"fault":"none"}`, keyport.JobDone, nil},
		{"offline", `{"fault":"offline"}`, keyport.JobExpired, []string{"expired before the module opened a session", "sandbox fault: the module was offline"}},
		{"drop", `{"fault":"drop","command":2}`, keyport.JobFailed, []string{"sandbox fault: the connection dropped after command 2"}},
		{"sw", `{"fault":"sw","command":3,"sw":"6A88"}`, keyport.JobFailed, []string{"6A88", "sandbox fault: the card answered 6A88 to command 3"}},
		{"slow", `{"fault":"slow","delay_ms":150}`, keyport.JobDone, []string{"sandbox fault: every APDU was answered 150ms late"}},
		{"drift", `{"fault":"drift","drift":3}`, keyport.JobFailed, []string{"sandbox fault: the card's sequence counter jumped by 3"}},
		{"lost", `{"fault":"lost"}`, keyport.JobFailed, []string{"answer lost", "sandbox fault: the card ran the script; its answer was dropped"}},
	}

	sf := &sandboxFlags{on: true, hsm: hsmtest.New(t), modules: len(faults), domains: 1, expiry: 15 * time.Second}
	client := cardlink.NewWebhookClient(cardlink.WebhookClientOptions{AllowLoopback: true, RootCAs: roots})
	run := testSandbox(t, w, sf, &cardLinkFlags{webhookTimeout: 5 * time.Second, loopbackHooks: true},
		sandboxOptions{WebhookHTTP: client, Tick: 100 * time.Millisecond, Backoff: 300 * time.Millisecond})
	portal := httptest.NewServer(web.New(w.Svc, web.Options{Sandbox: run.sb}))
	defer portal.Close()
	call := func(method, path, body string, out any) int {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, portal.URL+path, rd)
		req.Header.Set("Authorization", "Bearer "+token)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
			}
		}
		if resp.StatusCode >= 300 {
			t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return resp.StatusCode
	}

	// The first call records the token's use; from here on nothing a
	// sandbox action does may change a production row.
	var mods struct {
		Modules []keyport.SandboxModule `json:"modules"`
		Sandbox bool                    `json:"sandbox"`
	}
	if code := call("GET", "/api/v1/sandbox/modules", "", &mods); code != 200 || !mods.Sandbox || len(mods.Modules) != len(faults) {
		t.Fatalf("sandbox modules: %d %+v", code, mods)
	}
	before := tableDigest(t, dbPath)
	resp, err := http.Get(portal.URL + "/sandbox/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	var sandboxKeys keyport.JWKS
	json.NewDecoder(resp.Body).Decode(&sandboxKeys)
	resp.Body.Close()
	prodKeys, _ := w.Svc.JWKS(ctx)
	if len(sandboxKeys.Keys) == 0 || sandboxKeys.Keys[0].Kid == prodKeys.Keys[0].Kid {
		t.Fatalf("the sandbox signs with a key of its own: sandbox %+v, production %+v", sandboxKeys, prodKeys)
	}

	refs := make([]string, len(faults))
	for i, f := range faults {
		eid := mods.Modules[i].EID
		var set map[string]any
		if code := call("PUT", "/api/v1/sandbox/modules/"+string(eid)+"/fault", f.spec, &set); code != 403 {
			t.Fatalf("%s: fault set on a module the provider holds no domain of: %d %v", f.name, code, set)
		}
		var claim map[string]any
		if code := call("POST", "/api/v1/sandbox/claims", fmt.Sprintf(`{"eid":"%s","wrapping_key_id":"%s"}`, eid, wk), &claim); code != 201 || claim["sandbox"] != true {
			t.Fatalf("%s: claim: %d %v", f.name, code, claim)
		}
		if code := call("PUT", "/api/v1/sandbox/modules/"+string(eid)+"/fault", f.spec, &set); code != 200 || set["sandbox"] != true {
			t.Fatalf("%s: set fault: %d %v", f.name, code, set)
		}
		aid := keyport.AID(claim["aid"].(string))
		req, _ := http.NewRequest("GET", portal.URL+fmt.Sprintf("/api/v1/sandbox/domains/%s/%s/key-package", eid, aid), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		pkgData, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		keys, err := unwrapPackage(pkgData, sandboxKeys, spKey)
		if err != nil {
			t.Fatalf("%s: key package: %v (%s)", f.name, err, pkgData)
		}
		first := map[keyport.KeyUsage][]byte{}
		second := map[keyport.KeyUsage][]byte{}
		for _, u := range keyport.Usages {
			first[u], _ = hex.DecodeString(keys.Keys[u])
			second[u] = make([]byte, 16)
			rand.Read(second[u])
		}
		script, err := keyport.SecondKeyScript(aid, keys.KVN, keys.SequenceCounter, 0x31, first, second)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(script)
		var job keyport.JobView
		if code := call("POST", fmt.Sprintf("/api/v1/sandbox/domains/%s/%s/scripts", eid, aid), string(body), &job); code != 201 || !job.Sandbox {
			t.Fatalf("%s: submit: %d %+v", f.name, code, job)
		}
		refs[i] = job.ID
	}

	// Each job ends; its webhook follows. The loop waits (the offline job
	// until it expires); what it finds is asserted afterwards.
	views := make([]keyport.JobView, len(faults))
	giveUp := time.Now().Add(2 * time.Minute) // a hang, not a timing
	for i := range faults {
		for {
			if time.Now().After(giveUp) {
				var v keyport.JobView
				call("GET", "/api/v1/sandbox/jobs/"+refs[i], "", &v)
				t.Fatalf("%s: job never ended with its webhook: %+v", faults[i].name, v)
			}
			var v keyport.JobView
			call("GET", "/api/v1/sandbox/jobs/"+refs[i], "", &v)
			if v.State.Final() {
				if ev, _ := recv.final(t, sandboxKeys, refs[i]); ev != nil {
					views[i] = v
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if faults[i].name == "lost" {
			// The lost answer's counter probe can only come back once the
			// fault is cleared.
			call("PUT", "/api/v1/sandbox/modules/"+string(mods.Modules[i].EID)+"/fault", `{"fault":"none"}`, nil)
		}
	}
	for i, f := range faults {
		v := views[i]
		ev, raw := recv.final(t, sandboxKeys, refs[i])
		t.Logf("%s: %s, last_error %q", f.name, v.State, v.LastError)
		if v.State != f.state || !v.Sandbox {
			t.Errorf("%s: job %s sandbox %v, want %s sandbox true (last_error %q, result %+v)", f.name, v.State, v.Sandbox, f.state, v.LastError, v.Result)
		}
		if f.cause == nil && v.LastError != "" {
			t.Errorf("%s: last_error %q, want none", f.name, v.LastError)
		}
		for _, c := range f.cause {
			if !strings.Contains(v.LastError, c) {
				t.Errorf("%s: job's last_error %q lacks %q", f.name, v.LastError, c)
			}
			if !strings.Contains(ev.Job.LastError, c) {
				t.Errorf("%s: webhook's last_error %q lacks %q", f.name, ev.Job.LastError, c)
			}
		}
		if ev.Job.State != f.state || raw["sandbox"] != true || raw["job"].(map[string]any)["sandbox"] != true {
			t.Errorf("%s: webhook %s, sandbox %v / job.sandbox %v", f.name, ev.Job.State, raw["sandbox"], raw["job"].(map[string]any)["sandbox"])
		}
		// A sandbox job is no production job.
		if code := call("GET", "/api/v1/jobs/"+refs[i], "", nil); code != 404 {
			t.Errorf("%s: production API answers %d for a sandbox job", f.name, code)
		}
	}
	after := tableDigest(t, dbPath)
	for tbl, d := range before {
		if after[tbl] != d {
			t.Errorf("production table %s changed: %s, then %s", tbl, d, after[tbl])
		}
	}
	if len(after) != len(before) {
		t.Errorf("production tables: %d, then %d", len(before), len(after))
	}
	// Production webhooks never say sandbox.
	var plain bytes.Buffer
	json.NewEncoder(&plain).Encode(keyport.WebhookEvent{})
	if strings.Contains(plain.String(), "sandbox") {
		t.Errorf("a production event carries the sandbox field: %s", plain.String())
	}
}
