package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent/ace/acetest"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/web"
)

// TestIssue10AppAccessAndProviderDataFromPersoToTheEnforcer is issue 10 end
// to end: keyport personalizes a module (ISD keys in the HSM), a provider
// claims a domain and installs its second keys over card-link
// (cardlinktest.NewIssuerWorld); the module then sits in a pcscd+vpcd
// reader behind `keyport agent`, which runs both the admin sessions and the
// app socket. The provider adds an access rule for app A's certificate over
// the API (ACTIVE once the card's read-back shows it), pushes data with
// `keyport sp data put`; app A reads it live (`keyport sp serve` ↔
// `keyport app relay` ↔ enforcer ↔ module); app B is refused with the
// enforcer's words; once the rule is deleted over the air, app A is
// refused too.
func TestIssue10AppAccessAndProviderDataFromPersoToTheEnforcer(t *testing.T) {
	ctx := context.Background()
	o := capture(t)
	logs := &syncBuffer{}
	stderr = logs // the agent and sp serve log from their goroutines
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{Tick: 50 * time.Millisecond})

	// From here on the module is in a PC/SC reader; the in-memory card of
	// the world is not used again.
	env := pcsctest.Start(t, pcsctest.Options{})
	env.StartCardProcess(t, w.CardPath, string(w.EID), 0)
	dir := t.TempDir()
	pskFile := filepath.Join(dir, "module.psk")
	os.WriteFile(pskFile, []byte(hex.EncodeToString(w.PSK)+"\n"), 0o600)
	socket := filepath.Join(dir, "run", "se.sock")
	stopAgent := startAgent(t, "--reader", env.Reader, "--server", w.Link.Addr, "--psk-identity", string(w.EID), "--psk-file", pskFile, "--app-socket", socket)

	portal := httptest.NewServer(web.New(w.Svc, web.Options{Log: slog.New(slog.NewTextHandler(logs, nil))}))
	defer portal.Close()
	call := func(method, path string, body []byte) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, portal.URL+"/api/v1"+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+w.Token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	domainPath := fmt.Sprintf("/domains/%s/%s", w.EID, w.AID)
	var dom web.DomainJSON
	if st, b := call("GET", domainPath, nil); st != 200 || json.Unmarshal(b, &dom) != nil || dom.State != keyport.Personalized || dom.KVN != 0x31 {
		t.Fatalf("domain: %d %s", st, b)
	}
	// The provider's second keys, as NewIssuerWorld made them; their KCVs
	// are the ones the card confirmed.
	second := map[string]string{}
	for _, u := range keyport.Usages {
		k := make([]byte, 16)
		for i := range k {
			k[i] = byte(i*7) + byte(len(u))
		}
		kcv, _ := gp.KCV(k)
		if !strings.EqualFold(hex.EncodeToString(kcv), dom.KCV[u]) {
			t.Fatalf("the %s key is not the world's second key", u)
		}
		second[string(u)] = hex.EncodeToString(k)
	}
	keysFile, tokenFile := filepath.Join(dir, "keys.json"), filepath.Join(dir, "token")
	kj, _ := json.Marshal(map[string]any{"eid": w.EID, "aid": w.AID, "kvn": 0x31, "keys": second})
	os.WriteFile(keysFile, kj, 0o600)
	os.WriteFile(tokenFile, []byte(w.Token), 0o600)

	// The access rule for app A, through the API, ACTIVE after the read-back.
	appA, appB := acetest.NewApp(t, "A"), acetest.NewApp(t, "B")
	certA, certB := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
	os.WriteFile(certA, appA.PEM, 0o600)
	os.WriteFile(certB, appB.PEM, 0o600)
	body, _ := json.Marshal(map[string]any{"certificate_pem": string(appA.PEM), "apdu": "always"})
	st, b := call("POST", domainPath+"/access-rules", body)
	var added web.AccessRuleResult
	if st != http.StatusAccepted || json.Unmarshal(b, &added) != nil {
		t.Fatalf("POST access-rules: %d %s", st, b)
	}
	rules := func() []keyport.AccessRuleView {
		t.Helper()
		var list struct {
			Rules []keyport.AccessRuleView `json:"rules"`
		}
		if st, b := call("GET", domainPath+"/access-rules", nil); st != 200 || json.Unmarshal(b, &list) != nil {
			t.Fatalf("GET access-rules: %d %s", st, b)
		}
		return list.Rules
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not happen; log:\n%s", what, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("the rule's read-back", func() bool {
		rs := rules()
		if len(rs) == 1 && rs[0].State == keyport.RuleFailed {
			t.Fatalf("rule failed: %+v", rs[0])
		}
		return len(rs) == 1 && rs[0].State == keyport.RuleActive
	})

	// The provider pushes its data through card-link.
	var data []byte
	for i := 0; len(data) < 500; i++ {
		data = fmt.Appendf(data, "transit pass %03d: zone 1-3, valid until 2027-06-30\n", i)
	}
	data = data[:500]
	dataFile := filepath.Join(dir, "pass.bin")
	os.WriteFile(dataFile, data, 0o600)
	out := kp(t, o, nil, "sp", "data", "put", "--keys", keysFile, "--portal", portal.URL, "--token-file", tokenFile, "--wait", "60s", "--dgi", "0101", "--in", dataFile)
	if !strings.Contains(out, "stored 500 bytes in DGI 0101..0103") {
		t.Fatalf("sp data put: %s", out)
	}

	// App A reads it live; app B is refused.
	url, ca, dataOut, stopSP := startSPServe(t, logs, keysFile, 3)
	relay := func(cert string) (string, error) {
		o.out.Reset()
		err := run(ctx, []string{"app", "relay", "--socket", socket, "--cert", cert, "--aid", string(w.AID), "--server", url, "--ca", ca})
		return o.out.String(), err
	}
	out, err := relay(certA)
	if err != nil || !regexp.MustCompile(`server: read 500 bytes from DGI 0101\.\.0103 of `+string(w.AID)+`\n$`).MatchString(out) {
		t.Fatalf("app A: %v\n%s", err, out)
	}
	files, _ := filepath.Glob(filepath.Join(dataOut, "*.bin"))
	if len(files) != 1 {
		t.Fatalf("sp serve kept %d reads", len(files))
	}
	if got, _ := os.ReadFile(files[0]); !bytes.Equal(got, data) {
		t.Fatalf("sp serve read %q", got)
	}
	var ee exitError
	if _, err := relay(certB); !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("app B: %v", err)
	}

	// The rule deleted over the air: app A is refused on its next open.
	if st, b := call("DELETE", domainPath+"/access-rules/"+added.Rule.ID, nil); st != http.StatusAccepted {
		t.Fatalf("DELETE access rule: %d %s", st, b)
	}
	waitFor("the rule's removal", func() bool { return len(rules()) == 0 })
	if _, err := relay(certA); !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("app A after the rule's deletion: %v", err)
	}
	stopSP()
	stopAgent()
	if strings.Contains(logs.String(), string(data[:24])) {
		t.Fatal("the logs hold the data")
	}
}
