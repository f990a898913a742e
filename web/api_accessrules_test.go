package web_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

func appCertPEM(t *testing.T) (string, string) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(der)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), strings.ToUpper(hex.EncodeToString(h[:]))
}

// rulesAPI is the REST API over an issuer world: a module keyport
// personalized, with the provider's PERSONALIZED domain, and card-link.
func rulesAPI(t *testing.T) (*apiEnv, *cardlinktest.IssuerWorld) {
	t.Helper()
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	admin, _, err := w.Svc.CreateAdminToken(context.Background(), fixture.Admin, "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(web.New(w.Svc, web.Options{Log: slog.New(slog.NewTextHandler(testLog{t}, nil))}))
	t.Cleanup(srv.Close)
	return &apiEnv{w: w.World, srv: srv, cl: newContractTransport(t).client(), token: w.Token, admin: admin}, w
}

type ruleList struct {
	Rules []keyport.AccessRuleView `json:"rules"`
}

func TestAccessRulesOverTheAPIBecomeActiveAfterTheCardConfirmsAndGoAwayWhenDeleted(t *testing.T) {
	e, w := rulesAPI(t)
	base := fmt.Sprintf("/api/v1/domains/%s/%s/access-rules", w.EID, w.AID)
	certPEM, hash := appCertPEM(t)
	body, _ := json.Marshal(map[string]any{"certificate_pem": certPEM, "android_package": "com.bank.pay",
		"apdu": []map[string]string{{"header": "80CA0000", "mask": "FFFF0000"}}, "nfc": false})
	resp, b := e.do(t, e.token, "POST", base, "application/json", body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %d %s", resp.StatusCode, b)
	}
	var res web.AccessRuleResult
	if err := json.Unmarshal(b, &res); err != nil || res.Rule.State != keyport.RulePending || res.Rule.CertificateSHA256 != hash || res.Job == nil {
		t.Fatalf("POST answer %s", b)
	}
	if strings.Contains(string(b), "BEGIN CERTIFICATE") {
		t.Error("the answer repeats the certificate: only its hash is kept")
	}
	if _, err := w.Agent().Session(context.Background()); err != nil {
		t.Fatal(err)
	}
	var list ruleList
	for _, tok := range []string{e.token, e.admin} {
		resp, b = e.do(t, tok, "GET", base, "", nil)
		if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &list) != nil || len(list.Rules) != 1 || list.Rules[0].State != keyport.RuleActive {
			t.Fatalf("GET: %d %s", resp.StatusCode, b)
		}
	}
	if rules, _ := w.CardRules(t); len(rules) != 1 || string(rules[0].Package) != "com.bank.pay" {
		t.Fatalf("card rules %+v", rules)
	}
	resp, b = e.do(t, e.token, "GET", "/api/v1/jobs/"+res.Job.ID, "", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"operation":"access-rule.store"`) || !strings.Contains(string(b), `"DONE"`) {
		t.Fatalf("job: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "DELETE", base+"/"+res.Rule.ID, "", nil)
	if resp.StatusCode != http.StatusAccepted || !strings.Contains(string(b), `"DELETING"`) {
		t.Fatalf("DELETE: %d %s", resp.StatusCode, b)
	}
	if _, err := w.Agent().Session(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, b = e.do(t, e.token, "GET", base, "", nil)
	if json.Unmarshal(b, &list) != nil || len(list.Rules) != 0 {
		t.Fatalf("GET after delete: %s", b)
	}
	if rules, _ := w.CardRules(t); len(rules) != 0 {
		t.Fatalf("card rules %+v", rules)
	}
	resp, b = e.do(t, e.token, "DELETE", base+"/"+res.Rule.ID, "", nil)
	wantProblem(t, "delete a removed rule", resp, b, http.StatusNotFound, "not-found", "")
}

func TestBadAccessRuleRequestsGetAProblemAndStoreNothing(t *testing.T) {
	e, w := rulesAPI(t)
	ctx := context.Background()
	base := fmt.Sprintf("/api/v1/domains/%s/%s/access-rules", w.EID, w.AID)
	certPEM, hash := appCertPEM(t)
	good := `{"certificate_sha256":"` + hash + `","apdu":"always"}`
	otherP, otherToken, otherWK := w.Provider(t, "Shop", fixture.RSAKeys()[1])
	other := fmt.Sprintf("/api/v1/domains/%s/%s/access-rules", w.EID, "A00000015153504102")
	for _, c := range []struct {
		name, token, path, body string
		status                  int
		typ, detail             string
	}{
		{"malformed PEM", e.token, base, `{"certificate_pem":"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n","apdu":"always"}`, 422, "invalid", "certificate"},
		{"a key instead of a certificate", e.token, base, `{"certificate_pem":` + jsonStr(strings.ReplaceAll(certPEM, "CERTIFICATE", "PUBLIC KEY")) + `,"apdu":"always"}`, 422, "invalid", "CERTIFICATE"},
		{"a short hash", e.token, base, `{"certificate_sha256":"ABCD","apdu":"always"}`, 422, "invalid", "want 32"},
		{"a hash not hex", e.token, base, `{"certificate_sha1":"` + strings.Repeat("G", 40) + `","apdu":"always"}`, 422, "invalid", "not hex"},
		{"any app (no hash)", e.token, base, `{"apdu":"always"}`, 422, "invalid", "exactly one"},
		{"a wildcard AID in the body", e.token, base, `{"certificate_sha256":"` + hash + `","apdu":"always","aid":""}`, 422, "invalid", "unknown field"},
		{"a bad filter header", e.token, base, `{"certificate_sha256":"` + hash + `","apdu":[{"header":"80CA","mask":"FFFF0000"}]}`, 422, "invalid", "header"},
		{"a bad filter mask", e.token, base, `{"certificate_sha256":"` + hash + `","apdu":[{"header":"80CA0000","mask":"FFFF00000000"}]}`, 422, "invalid", "mask"},
		{"the AID of another provider's domain", otherToken, base, good, 404, "not-found", ""},
		{"an unclaimed domain", e.token, other, good, 404, "not-found", ""},
		{"not JSON", e.token, base, `certificate`, 422, "invalid", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, b := e.do(t, c.token, "POST", c.path, "application/json", []byte(c.body))
			wantProblem(t, c.name, resp, b, c.status, c.typ, c.detail)
		})
	}
	// The other provider claims domain 2 (ASSIGNED, not PERSONALIZED).
	if _, _, err := e.w.Svc.Claim(ctx, otherP, keyport.ClaimRequest{EID: w.EID, AID: "A00000015153504102", WrappingKeyID: otherWK}); err != nil {
		t.Fatal(err)
	}
	resp, b := e.do(t, otherToken, "POST", other, "application/json", []byte(good))
	wantProblem(t, "an ASSIGNED domain", resp, b, http.StatusConflict, "conflict", "PERSONALIZED")
	d2, _ := e.w.Store.GetDomain(ctx, w.EID, "A00000015153504102")
	d, _ := e.w.Store.GetDomain(ctx, w.EID, w.AID)
	for _, id := range []int64{d.ID, d2.ID} {
		if rules, _ := e.w.Store.ListAccessRules(ctx, id); len(rules) != 0 {
			t.Fatalf("%d rules stored from bad requests", len(rules))
		}
	}
	if jobs, _ := e.w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobIssuer}); len(jobs) != 0 {
		t.Fatalf("%d issuer jobs queued from bad requests", len(jobs))
	}
}

func jsonStr(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestAnAccessRuleForAnImportedModuleIsRefusedWithAConflictAndNotQueued(t *testing.T) {
	e := newAPI(t)
	ctx := context.Background()
	p, err := e.w.Svc.Authenticate(ctx, e.token)
	if err != nil {
		t.Fatal(err)
	}
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	if _, _, err := e.w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: e.wk}); err != nil {
		t.Fatal(err)
	}
	// The domain became PERSONALIZED (its second-key job is tested elsewhere).
	d, _ := e.w.Store.GetDomain(ctx, eid, aid)
	if err := e.w.Store.TransitionDomain(ctx, d.ID, []keyport.DomainState{keyport.Assigned}, keyport.Personalized, nil); err != nil {
		t.Fatal(err)
	}
	_, hash := appCertPEM(t)
	resp, b := e.do(t, e.token, "POST", fmt.Sprintf("/api/v1/domains/%s/%s/access-rules", eid, aid), "application/json",
		[]byte(`{"certificate_sha256":"`+hash+`","apdu":"always"}`))
	wantProblem(t, "imported module", resp, b, http.StatusConflict, "conflict", "no ISD keys")
	if rules, _ := e.w.Store.ListAccessRules(ctx, d.ID); len(rules) != 0 {
		t.Fatalf("%d rules stored", len(rules))
	}
	if jobs, _ := e.w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobIssuer}); len(jobs) != 0 {
		t.Fatalf("%d issuer jobs queued", len(jobs))
	}
}
