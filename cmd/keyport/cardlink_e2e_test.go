package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/pcsc"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// webhookSink records the events POSTed to it, with their signatures.
type webhookSink struct {
	mu     sync.Mutex
	bodies [][]byte
	sigs   []string
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.bodies = append(s.bodies, b)
	s.sigs = append(s.sigs, r.Header.Get(keyport.WebhookSignatureHeader))
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// TestSecondKeyFromClaimToPersonalizedThroughPCSCWithTheProvidersOwnTools is
// flows 5 to 8 end to end: a module in a real pcscd+vpcd reader, a claim
// over the REST API, the key package, `keyport sp script`, the script
// submitted over the REST API, the handset agent woken through the wake-up
// channel running the admin session over TLS-PSK (OpenSSL) and PC/SC, the
// module confirming the new KVN and KCVs, the domain PERSONALIZED, signed
// webhooks; afterwards only the provider's keys open the SSD.
func TestSecondKeyFromClaimToPersonalizedThroughPCSCWithTheProvidersOwnTools(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	ctx := context.Background()
	o := capture(t)
	dir := t.TempDir()
	st := storetest.Open(t, storetest.SQLitePath(t))
	w := fixture.New(t, st, 1, 2)
	w.Svc.Link = w.HSM
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	first := w.Keys[eid][aid]
	env.StartCard(t, cardlinktest.NewModule(t, eid, map[keyport.AID]map[keyport.KeyUsage][]byte{aid: first}))

	// The provider: its key pair, its webhook, its API token.
	sp := fixture.RSAKeys()[0]
	der, _ := x509.MarshalPKCS8PrivateKey(sp)
	os.WriteFile(filepath.Join(dir, "sp.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	prov, token, wk := w.Provider(t, "Card Bank", sp)
	sink := &webhookSink{}
	hooks := httptest.NewServer(sink)
	defer hooks.Close()
	w.Svc.Delivery.DevLoopbackWebhooks = true // the sink listens on 127.0.0.1
	if _, err := w.Svc.SetWebhook(ctx, prov, hooks.URL+"/keyport"); err != nil {
		t.Fatal(err)
	}
	portal := httptest.NewServer(web.New(w.Svc, web.Options{}))
	defer portal.Close()
	call := func(method, path string, body []byte) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, portal.URL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		rb, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, rb
	}

	// Claim, download the package, read the counter keyport reports.
	if st, rb := call("POST", "/api/v1/claims", []byte(fmt.Sprintf(`{"eid":"%s","aid":"%s","wrapping_key_id":"%s"}`, eid, aid, wk))); st != 201 {
		t.Fatalf("claim: %d %s", st, rb)
	}
	domainPath := fmt.Sprintf("/api/v1/domains/%s/%s", eid, aid)
	st2, pkg := call("GET", domainPath+"/key-package", nil)
	if st2 != 200 {
		t.Fatalf("key package: %d", st2)
	}
	os.WriteFile(filepath.Join(dir, "pkg.json"), pkg, 0o600)
	var dom web.DomainJSON
	_, rb := call("GET", domainPath, nil)
	json.Unmarshal(rb, &dom)

	// keyport sp script, with the provider's package, key and counter.
	kp(t, o, nil, "sp", "script", "--package", filepath.Join(dir, "pkg.json"), "--key", filepath.Join(dir, "sp.pem"),
		"--jwks", portal.URL, "--generate", "--counter", fmt.Sprint(*dom.SequenceCounter),
		"--out", filepath.Join(dir, "script.json"), "--new-keys-out", filepath.Join(dir, "new-keys.json"))
	script, _ := os.ReadFile(filepath.Join(dir, "script.json"))
	st3, rb := call("POST", domainPath+"/scripts", script)
	var job keyport.JobView
	if json.Unmarshal(rb, &job); st3 != 201 || job.State != keyport.JobQueued {
		t.Fatalf("submit: %d %s", st3, rb)
	}

	// Card-link, and `keyport agent` on the pcscd reader, waiting for a wake-up.
	link := cardlinktest.StartLink(t, w.Svc, cardlinktest.LinkOptions{DevLoopbackWebhooks: true})
	psk := w.HandshakePSK(t, eid)
	pskFile := filepath.Join(dir, "module.psk")
	os.WriteFile(pskFile, []byte(hex.EncodeToString(psk)+"\n"), 0o600)
	actx, stop := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() {
		agentDone <- run(actx, []string{"agent", "--reader", env.Reader, "--server", link.Addr, "--psk-identity", string(eid), "--psk-file", pskFile})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for job.State != keyport.JobDone {
		if job.State.Final() || time.Now().After(deadline) {
			t.Fatalf("job %s: %+v %s", job.State, job.Result, job.LastError)
		}
		time.Sleep(50 * time.Millisecond)
		_, rb = call("GET", "/api/v1/jobs/"+job.ID, nil)
		job = keyport.JobView{}
		json.Unmarshal(rb, &job)
	}
	stop()
	if err := <-agentDone; err != nil {
		t.Fatalf("keyport agent: %v", err)
	}
	reader, err := pcsc.Open(ctx, env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()

	// The module's answer is the proof, and the provider sees it.
	var sreq keyport.ScriptRequest
	json.Unmarshal(script, &sreq)
	// At level 13 the card's answers after EXTERNAL AUTHENTICATE carry an
	// 8-byte R-MAC before the status word: PUT KEY answers KVN ‖ KCVs ‖ R-MAC.
	wantPutKey := fmt.Sprintf("31%s%s%s", sreq.Expect.KCV[keyport.UsageENC], sreq.Expect.KCV[keyport.UsageMAC], sreq.Expect.KCV[keyport.UsageDEK])
	if job.Result == nil || !job.Result.Confirmed || len(job.Result.Responses) != 4 ||
		!strings.HasPrefix(job.Result.Responses[2], wantPutKey) || len(job.Result.Responses[2]) != len(wantPutKey)+16+4 || !strings.HasSuffix(job.Result.Responses[2], "9000") ||
		len(job.Result.Responses[3]) != 16+4 || !strings.HasSuffix(job.Result.Responses[3], "9000") {
		t.Fatalf("job result %+v, want the PUT KEY answer %s ‖ R-MAC ‖ 9000", job.Result, wantPutKey)
	}
	_, rb = call("GET", domainPath, nil)
	json.Unmarshal(rb, &dom)
	if dom.State != keyport.Personalized || dom.KVN != 0x31 || dom.KCV[keyport.UsageMAC] != sreq.Expect.KCV[keyport.UsageMAC] {
		t.Fatalf("domain after the session: %+v", dom)
	}

	// Afterwards the provider's keys open the SSD and the first keys do not.
	var nk NewKeysFile
	b, _ := os.ReadFile(filepath.Join(dir, "new-keys.json"))
	if err := json.Unmarshal(b, &nk); err != nil {
		t.Fatal(err)
	}
	second := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		if second[u], err = keywrap.UnwrapRSAAES(sp, nk.Wrapped[u], fixture.OAEPHash(t, nk.OAEPHash)); err != nil {
			t.Fatal(err)
		}
	}
	host := cardlinktest.NewHost(t, reader)
	if sw := host.Authenticate(aid.Bytes(), 0x31, cardlinktest.Triple(second)); sw != gp.SWOK {
		t.Fatalf("the provider's keys: %v", sw)
	}
	if sw := host.Authenticate(aid.Bytes(), 0x30, cardlinktest.Triple(first)); sw != gp.SWReferencedDataNotFound {
		t.Fatalf("the first keys: %v, want 6A88", sw)
	}

	// Signed webhooks told the provider every state change.
	set, _ := w.Svc.JWKS(ctx)
	deadline = time.Now().Add(10 * time.Second)
	var types []string
	for {
		types = types[:0]
		sink.mu.Lock()
		for i, body := range sink.bodies {
			ev, err := keyport.VerifyWebhook(body, sink.sigs[i], set)
			if err != nil {
				t.Fatalf("webhook %d: %v", i, err)
			}
			types = append(types, ev.Type)
		}
		sink.mu.Unlock()
		if slices.Contains(types, "job.done") || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	slices.Sort(types)
	if strings.Join(types, ",") != "job.done,job.queued,job.sent" {
		t.Fatalf("webhook events %v", types)
	}
	if _, err := w.Svc.VerifyAudit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestServeStartsTheAdminServerOnKEYPORT_ADMIN_ADDR checks the wiring: with
// KEYPORT_ADMIN_ADDR set, `keyport serve` answers TLS-PSK there, an
// identity that names no module is refused at the handshake, and TLS 1.0
// only with KEYPORT_ADMIN_LEGACY_TLS.
func TestServeStartsTheAdminServerOnKEYPORT_ADMIN_ADDR(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("legacy=%v", legacy), func(t *testing.T) {
			adminAddr := serveAdmin(t, legacy)
			// TLS 1.0 gets as far as the PSK check only with legacy on.
			_, err := tlspsk.Dial(context.Background(), "tcp", adminAddr, &tlspsk.ClientConfig{Identity: eid(7), PSK: make([]byte, 16),
				Legacy: true, MinVersion: tlspsk.VersionTLS10, MaxVersion: tlspsk.VersionTLS10})
			if got := errors.Is(err, tlspsk.ErrPSKMismatch); got != legacy {
				t.Fatalf("TLS 1.0 client with legacy %v: %v", legacy, err)
			}
			if err == nil {
				t.Fatal("an unknown module completed the handshake over TLS 1.0")
			}
		})
	}
}

// serveAdmin runs `keyport serve` with an admin server until the test ends
// and returns the admin address once it answers: an unknown module's
// TLS 1.2 handshake fails as a wrong PSK does (the server does not tell
// which EIDs it knows).
func serveAdmin(t *testing.T, legacy bool) string {
	capture(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := l.Addr().String()
	l.Close()
	t.Setenv("KEYPORT_ADMIN_ADDR", adminAddr)
	t.Setenv("KEYPORT_ADMIN_LEGACY_TLS", strconv.FormatBool(legacy))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--data-dir", filepath.Join(dir, "data"), "--hsm", hsmtest.New(t), "--addr", "127.0.0.1:0"})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := tlspsk.Dial(ctx, "tcp", adminAddr, &tlspsk.ClientConfig{Identity: eid(7), PSK: make([]byte, 16)})
		if err == nil {
			c.Close()
			t.Fatal("an unknown module completed the handshake")
		}
		if errors.Is(err, tlspsk.ErrPSKMismatch) {
			return adminAddr
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin server on %s: %v", adminAddr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestSPScriptReusesTheKeysFileOfAnEarlierGenerateAndRefusesBadArguments(t *testing.T) {
	ctx := context.Background()
	o := capture(t)
	dir := t.TempDir()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	sp := fixture.RSAKeys()[0]
	der, _ := x509.MarshalPKCS8PrivateKey(sp)
	os.WriteFile(filepath.Join(dir, "sp.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	prov, _, wk := w.Provider(t, "Script Bank", sp)
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := w.Svc.Claim(ctx, prov, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	pkg, err := w.Svc.KeyPackage(ctx, prov, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	pkgPath, keyPath, keysPath := filepath.Join(dir, "pkg.json"), filepath.Join(dir, "sp.pem"), filepath.Join(dir, "new.json")
	os.WriteFile(pkgPath, pkg, 0o600)
	var a, b keyport.ScriptRequest
	json.Unmarshal([]byte(kp(t, o, nil, "sp", "script", "--package", pkgPath, "--key", keyPath, "--generate", "--counter", "0", "--new-keys-out", keysPath)), &a)
	json.Unmarshal([]byte(kp(t, o, nil, "sp", "script", "--package", pkgPath, "--key", keyPath, "--new-keys", keysPath, "--counter", "5")), &b)
	if len(a.APDUs) != 4 || len(b.APDUs) != 4 || a.Expect.KCV[keyport.UsageENC] != b.Expect.KCV[keyport.UsageENC] || a.APDUs[1] == b.APDUs[1] {
		t.Fatalf("--generate then --new-keys: %+v / %+v", a.Expect, b.Expect)
	}
	if !strings.Contains(o.err.String(), "signature is not checked") {
		t.Fatalf("no warning without --jwks: %s", o.err.String())
	}
	for _, args := range [][]string{
		{"--package", pkgPath, "--key", keyPath, "--counter", "0"},                                           // neither --generate nor --new-keys
		{"--package", pkgPath, "--key", keyPath, "--generate", "--new-keys", keysPath, "--counter", "0"},     // both
		{"--package", pkgPath, "--key", keyPath, "--generate"},                                               // no counter
		{"--package", keyPath, "--key", keyPath, "--generate", "--counter", "0"},                             // not a package
		{"--package", pkgPath, "--key", keyPath, "--generate", "--counter", "0", "--new-keys-out", keysPath}, // never overwrites
	} {
		if err := run(ctx, append([]string{"sp", "script"}, args...)); err == nil {
			t.Errorf("sp script %v succeeded", args)
		}
	}
	// A rotation from the keys file --generate wrote (KVN 31) to KVN 32,
	// whose next keys go to a file of their own.
	nextPath := filepath.Join(dir, "next.json")
	var r keyport.ScriptRequest
	json.Unmarshal([]byte(kp(t, o, nil, "sp", "script", "--rotate", "--key", keyPath, "--current-keys", keysPath, "--generate",
		"--counter", "3", "--new-keys-out", nextPath)), &r)
	if _, err := keyport.CheckRotateScript(eid, aid, 0x31, r); err != nil || !r.Rotate || r.Expect.KVN != 0x32 {
		t.Fatalf("rotation script %+v: %v", r.Expect, err)
	}
	var next NewKeysFile
	if b, err := os.ReadFile(nextPath); err != nil || json.Unmarshal(b, &next) != nil || next.KVN != 0x32 || next.KCV[keyport.UsageDEK] != r.Expect.KCV[keyport.UsageDEK] {
		t.Fatalf("next keys file %+v: %v", next, err)
	}
	for _, args := range [][]string{
		{"--rotate", "--key", keyPath, "--generate", "--counter", "0"},                                                         // no current keys
		{"--rotate", "--key", keyPath, "--current-keys", pkgPath, "--generate", "--counter", "0"},                              // not a keys file
		{"--rotate", "--key", keyPath, "--current-keys", keysPath, "--generate"},                                               // no counter
		{"--rotate", "--key", keyPath, "--current-keys", keysPath, "--new-keys-out", nextPath, "--generate", "--counter", "0"}, // never overwrites
	} {
		if err := run(ctx, append([]string{"sp", "script"}, args...)); err == nil {
			t.Errorf("sp script %v succeeded", args)
		}
	}
}
