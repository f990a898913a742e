package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// syncBuffer is a buffer several goroutines write (logs).
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// answerRecorder keeps every body the portal sent.
type answerRecorder struct {
	h   http.Handler
	mu  sync.Mutex
	all bytes.Buffer
}

func (a *answerRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	a.h.ServeHTTP(rec, r)
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
	a.mu.Lock()
	a.all.Write(rec.Body.Bytes())
	a.mu.Unlock()
}

func (a *answerRecorder) bytes() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return bytes.Clone(a.all.Bytes())
}

// leaks names each form of the secrets that shows in b.
func leaks(b []byte, secrets map[string][]byte) []string {
	var out []string
	for name, s := range secrets {
		for form, v := range map[string][]byte{
			"raw": s, "hex": []byte(hex.EncodeToString(s)), "HEX": []byte(strings.ToUpper(hex.EncodeToString(s))),
			"base64": []byte(base64.StdEncoding.EncodeToString(s)),
		} {
			if bytes.Contains(b, v) {
				out = append(out, name+" ("+form+")")
			}
		}
	}
	return out
}

// TestProviderDataPushedThroughCardLinkIsReadBackOnlyByTheProvidersTool is
// flow 9's push path: after the second keys, `keyport sp data put` stores
// 600 bytes in the domain through card-link in an SCP03 session at level
// 33 under the provider's keys, and `keyport sp data get` reads them back,
// online and offline (`sp data read` over the job keyport returned).
// keyport refuses a data script below level 33 and one with a management
// command, storing nothing; and neither the data nor the provider's keys
// appear in the database, the logs or any answer of the portal.
func TestProviderDataPushedThroughCardLinkIsReadBackOnlyByTheProvidersTool(t *testing.T) {
	ctx := context.Background()
	o := capture(t)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dsn := storetest.SQLitePath(t)
	w := cardlinktest.NewWorldOn(t, dsn, cardlinktest.LinkOptions{NoWorker: true, Server: cardlink.AdminServerConfig{Log: logger}})
	w.Svc.Log = logger
	acfg := agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Log: logger}
	if _, err := agent.New(acfg, w.Card).Session(ctx); err != nil {
		t.Fatal(err)
	}
	if j, err := w.Svc.GetJob(ctx, w.Prov, w.Job.Ref); err != nil || j.State != keyport.JobDone {
		t.Fatalf("second-key job: %+v %v", j, err)
	}

	// The handset: an admin session whenever the module has work.
	actx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for actx.Err() == nil {
			if work, _ := w.Svc.ModuleHasWork(actx, w.EID); work {
				agent.New(acfg, w.Card).Session(actx)
			}
			select {
			case <-actx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	defer func() { stop(); wg.Wait() }()

	rec := &answerRecorder{h: web.New(w.Svc, web.Options{Log: logger})}
	portal := httptest.NewServer(rec)
	defer portal.Close()
	token, _, err := w.Svc.CreateAPIToken(ctx, w.Prov, "data")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile, keysFile := filepath.Join(dir, "token"), filepath.Join(dir, "keys.json")
	os.WriteFile(tokenFile, []byte(token+"\n"), 0o600)
	kj, _ := json.Marshal(map[string]any{"eid": w.EID, "aid": w.AID, "kvn": 0x31, "keys": map[keyport.KeyUsage]string{
		keyport.UsageENC: hex.EncodeToString(w.Second[keyport.UsageENC]), keyport.UsageMAC: hex.EncodeToString(w.Second[keyport.UsageMAC]),
		keyport.UsageDEK: hex.EncodeToString(w.Second[keyport.UsageDEK])}})
	os.WriteFile(keysFile, kj, 0o600)
	var data []byte
	for i := 0; len(data) < 600; i++ {
		data = fmt.Appendf(data, "customer %04d of Card Bank: IBAN DE89 3704 0044 0532 %04d 00\n", i, 7*i)
	}
	data = data[:600]
	dataFile := filepath.Join(dir, "data.bin")
	os.WriteFile(dataFile, data, 0o600)
	common := []string{"--keys", keysFile, "--portal", portal.URL, "--token-file", tokenFile, "--wait", "30s"}

	out := kp(t, o, common, "sp", "data", "put", "--dgi", "0101", "--in", dataFile)
	if !strings.Contains(out, "stored 600 bytes in DGI 0101..0103") {
		t.Fatalf("sp data put: %s", out)
	}
	got := filepath.Join(dir, "got.bin")
	kp(t, o, common, "sp", "data", "get", "--dgi", "0101", "--count", "3", "--out", got)
	if b, _ := os.ReadFile(got); !bytes.Equal(b, data) {
		t.Fatalf("sp data get read %q", b)
	}

	// Offline: build, submit by hand, read the job keyport answers.
	call := func(method, path string, body []byte) (int, http.Header, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, portal.URL+"/api/v1"+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	domainPath := fmt.Sprintf("/domains/%s/%s", w.EID, w.AID)
	var dom web.DomainJSON
	_, _, b := call("GET", domainPath, nil)
	json.Unmarshal(b, &dom)
	scriptFile := filepath.Join(dir, "get.json")
	kp(t, o, nil, "sp", "data", "get", "--keys", keysFile, "--counter", fmt.Sprint(*dom.SequenceCounter), "--count", "3", "--out", scriptFile)
	script, _ := os.ReadFile(scriptFile)
	st, _, b := call("POST", domainPath+"/data-scripts", script)
	var job keyport.JobView
	if json.Unmarshal(b, &job); st != 201 || job.Kind != keyport.JobData {
		t.Fatalf("POST data-scripts: %d %s", st, b)
	}
	j := cardlinktest.WaitJob(t, w.Svc, w.Prov, job.ID, func(j *keyport.Job) bool { return j.State.Final() })
	if j.State != keyport.JobDone {
		t.Fatalf("data job %s: %+v", j.State, j.Result)
	}
	_, _, b = call("GET", "/jobs/"+job.ID, nil)
	jobFile := filepath.Join(dir, "job.json")
	os.WriteFile(jobFile, b, 0o600)
	if out := kp(t, o, nil, "sp", "data", "read", "--keys", keysFile, "--script", scriptFile, "--job", jobFile); out != string(data) {
		t.Fatalf("sp data read: %q", out)
	}

	// Scripts keyport must refuse: nothing is queued, nothing reaches the card.
	before, _ := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobData})
	var req keyport.DataScriptRequest
	json.Unmarshal(script, &req)
	for name, tc := range map[string]struct {
		mod  func(a []string)
		says string
	}{
		"level 13": {func(a []string) { a[1] = "84821300" + a[1][8:] }, "needs level 33"},
		"level 03": {func(a []string) { a[1] = "84820300" + a[1][8:] }, "needs level 33"},
		"PUT KEY":  {func(a []string) { a[2] = "84D8318108AABBCCDDEEFF0011" }, "is not allowed"},
	} {
		bad := keyport.DataScriptRequest{APDUs: append([]string(nil), req.APDUs...)}
		tc.mod(bad.APDUs)
		body, _ := json.Marshal(bad)
		st, hdr, b := call("POST", domainPath+"/data-scripts", body)
		if st != 422 || hdr.Get("Content-Type") != "application/problem+json" || !bytes.Contains(b, []byte(tc.says)) {
			t.Errorf("%s: %d %s %s", name, st, hdr.Get("Content-Type"), b)
		}
	}
	if st, _, b := call("POST", fmt.Sprintf("/domains/%s/%s/data-scripts", w.EID, "A00000015153504102"), script); st != 404 {
		t.Errorf("another domain: %d %s", st, b)
	}
	after, _ := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobData})
	if len(after) != len(before) {
		t.Fatalf("refused scripts left jobs: %d → %d", len(before), len(after))
	}
	stop()
	wg.Wait()

	secrets := map[string][]byte{"enc key": w.Second[keyport.UsageENC], "mac key": w.Second[keyport.UsageMAC], "dek key": w.Second[keyport.UsageDEK]}
	for i := 0; i < len(data); i += gp.MaxDataObject {
		secrets[fmt.Sprintf("data object %d", i/gp.MaxDataObject+1)] = data[i : i+20]
	}
	if len(leaks(append(bytes.Clone(data), w.Second[keyport.UsageMAC]...), secrets)) < 4 {
		t.Fatal("the scan does not find the secrets where they are")
	}
	for where, b := range map[string][]byte{"database": databaseBytes(t, dsn), "logs": []byte(logs.String() + o.err.String()), "portal answers": rec.bytes()} {
		if l := leaks(b, secrets); len(l) > 0 {
			t.Errorf("%s holds %v", where, l)
		}
	}
	if !strings.Contains(logs.String(), "data script queued") || len(rec.bytes()) == 0 {
		t.Fatal("the scan saw no logs or no answers")
	}
}
