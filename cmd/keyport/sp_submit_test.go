package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// sp script --submit reads the counter from the portal, checks the package
// against the portal's receipt keys, submits the script with the token of
// --token-file and names the job; bad arguments and a refused token queue
// nothing.
func TestSPScriptSubmitQueuesTheScriptAndRefusesBadArgumentsWithoutQueueing(t *testing.T) {
	ctx := context.Background()
	o := capture(t)
	dir := t.TempDir()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	sp := fixture.RSAKeys()[0]
	der, _ := x509.MarshalPKCS8PrivateKey(sp)
	keyPath, pkgPath, tokenPath := filepath.Join(dir, "sp.pem"), filepath.Join(dir, "pkg.json"), filepath.Join(dir, "token")
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	prov, token, wk := w.Provider(t, "Submit Bank", sp)
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := w.Svc.Claim(ctx, prov, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	pkg, err := w.Svc.KeyPackage(ctx, prov, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(pkgPath, pkg, 0o600)
	os.WriteFile(tokenPath, []byte(token+"\n"), 0o600)
	wrongPath := filepath.Join(dir, "wrong")
	os.WriteFile(wrongPath, []byte("kp_notatoken\n"), 0o600)
	srv := httptest.NewServer(web.New(w.Svc, web.Options{}))
	defer srv.Close()
	jobs := func() int {
		js, err := w.Svc.ListJobs(ctx, fixture.Admin, keyport.JobFilter{})
		if err != nil {
			t.Fatal(err)
		}
		return len(js)
	}

	base := []string{"sp", "script", "--package", pkgPath, "--key", keyPath, "--generate"}
	for i, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--submit", "localhost:8080", "--token-file", tokenPath}, "give the portal's URL"},
		{[]string{"--submit", srv.URL}, "needs an API token"},
		{[]string{"--submit", srv.URL, "--token-file", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"--submit", srv.URL, "--token-file", wrongPath}, "401"},
	} {
		args := append(append([]string{}, base...), c.args...)
		args = append(args, "--new-keys-out", filepath.Join(dir, "keys-"+string(rune('a'+i))+".json"))
		if err := run(ctx, args); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("sp script %v: %v, want an error saying %q", c.args, err, c.says)
		}
	}
	if n := jobs(); n != 0 {
		t.Fatalf("refused submissions queued %d jobs", n)
	}

	out := filepath.Join(dir, "script.json")
	got := kp(t, o, nil, append(base, "--submit", srv.URL+"/", "--token-file", tokenPath, "--out", out,
		"--new-keys-out", filepath.Join(dir, "keys.json"))...)
	m := regexp.MustCompile(`\(counter (\d+)\) submitted: job (job_\S+) QUEUED\nfollow it in the portal: (\S+)`).FindStringSubmatch(got)
	d, err := w.Svc.GetDomain(ctx, prov, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	if m == nil || m[1] != itoa(d.SeqCounter) || m[3] != srv.URL+"/portal/jobs/"+m[2] {
		t.Fatalf("sp script --submit printed %q (domain counter %d)", got, d.SeqCounter)
	}
	j, err := w.Svc.GetJob(ctx, prov, m[2])
	if err != nil || j.State != keyport.JobQueued || jobs() != 1 {
		t.Fatalf("job %s: %+v %v", m[2], j, err)
	}
	if b, err := os.ReadFile(out); err != nil || !strings.Contains(string(b), `"apdus"`) {
		t.Fatalf("--out: %v %.60s", err, b)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
