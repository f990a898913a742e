package cardlink_test

import (
	"bytes"
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
	"errors"
	"math/big"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
)

// testApp is a device app: its self-signed signing certificate.
type testApp struct{ der, pem []byte }

func newTestApp(t *testing.T, name string) testApp {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return testApp{der: der, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (a testApp) sha256() string {
	h := sha256.Sum256(a.der)
	return strings.ToUpper(hex.EncodeToString(h[:]))
}

// addRule posts the app's rule as the API would (the request parser, then
// the use case) and returns the rule and its job.
func addRule(t *testing.T, w *cardlinktest.IssuerWorld, app testApp) (*keyport.AccessRule, *keyport.Job) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"certificate_pem": string(app.pem), "apdu": "always"})
	r, err := keyport.ParseAccessRuleRequest(body)
	if err != nil {
		t.Fatal(err)
	}
	rule, j, err := w.Svc.AddAccessRule(ctx, w.Prov, w.EID, w.AID, r)
	if err != nil {
		t.Fatal(err)
	}
	return rule, j
}

func ruleState(t *testing.T, w *cardlinktest.IssuerWorld, id string) *keyport.AccessRule {
	t.Helper()
	r, err := w.Svc.Store.GetAccessRule(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func job(t *testing.T, w *cardlinktest.IssuerWorld, ref string) *keyport.Job {
	t.Helper()
	j, err := w.Svc.GetJob(ctx, w.Prov, ref)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// openAs asks an enforcer on the module for a channel to the domain as app.
func openAs(t *testing.T, w *cardlinktest.IssuerWorld, enf *ace.Enforcer, app testApp) error {
	t.Helper()
	c1, c2 := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); enf.ServeConn(ctx, c2) }()
	cl := ace.NewAppClient(c1)
	_, err := cl.Open(app.der, w.AID.Bytes(), "")
	cl.Close()
	<-done
	return err
}

func TestAnAccessRuleIsActiveOnlyAfterTheCardShowsItAndTheEnforcerThenAdmitsOnlyThatApp(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	a, b := newTestApp(t, "app A"), newTestApp(t, "app B")
	enf := ace.NewEnforcer(w.Card, nil)
	_, tag0 := w.CardRules(t)
	rule, j := addRule(t, w, a)
	if rule.State != keyport.RulePending || j.State != keyport.JobQueued || rule.Hash != a.sha256() {
		t.Fatalf("rule %+v, job %s", rule, j.State)
	}
	if got := ruleState(t, w, rule.ID); got.State != keyport.RulePending || got.JobRef != j.Ref {
		t.Fatalf("before the session the rule is %s (job %q)", got.State, got.JobRef)
	}
	var denied *ace.AppError
	if err := openAs(t, w, enf, a); !errors.As(err, &denied) {
		t.Fatalf("before the rule is on the card, app A: %v", err)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if got := job(t, w, j.Ref); got.State != keyport.JobDone {
		t.Fatalf("job %s: %s %+v", got.State, got.LastError, got.Result)
	}
	if got := ruleState(t, w, rule.ID); got.State != keyport.RuleActive {
		t.Fatalf("rule %s (%s)", got.State, got.Cause)
	}
	// The card, not the database: the ARA-M holds the rule.
	onCard, tag1 := w.CardRules(t)
	if len(onCard) != 1 || !bytes.Equal(onCard[0].AID, w.AID.Bytes()) || strings.ToUpper(hex.EncodeToString(onCard[0].DeviceAppID)) != a.sha256() ||
		!bytes.Equal(onCard[0].APDU, []byte{1}) {
		t.Fatalf("ARA-M rules %+v", onCard)
	}
	if bytes.Equal(tag0, tag1) {
		t.Error("refresh tag unchanged")
	}
	if err := openAs(t, w, enf, a); err != nil {
		t.Fatalf("app A refused: %v", err)
	}
	if err := openAs(t, w, enf, b); !errors.As(err, &denied) || denied.Code != ace.CodeDenied {
		t.Fatalf("app B: %v", err)
	}
	list, err := w.Svc.ListAccessRules(ctx, w.Prov, w.EID, w.AID)
	if err != nil || len(list) != 1 || list[0].View().State != keyport.RuleActive {
		t.Fatalf("list %+v %v", list, err)
	}

	// Delete over the air: the enforcer sees the new refresh tag and
	// re-reads the rules.
	del, dj, err := w.Svc.DeleteAccessRule(ctx, w.Prov, w.EID, w.AID, rule.ID)
	if err != nil || del.State != keyport.RuleDeleting || dj == nil {
		t.Fatalf("delete: %+v %v", del, err)
	}
	if list, _ := w.Svc.ListAccessRules(ctx, w.Prov, w.EID, w.AID); len(list) != 1 || list[0].State != keyport.RuleDeleting {
		t.Fatalf("list while deleting %+v", list)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if got := job(t, w, dj.Ref); got.State != keyport.JobDone {
		t.Fatalf("delete job %s: %s", got.State, got.LastError)
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 0 {
		t.Fatalf("ARA-M still holds %+v", onCard)
	}
	if list, _ := w.Svc.ListAccessRules(ctx, w.Prov, w.EID, w.AID); len(list) != 0 {
		t.Fatalf("list after delete %+v", list)
	}
	reads := enf.RuleReads()
	if err := openAs(t, w, enf, a); !errors.As(err, &denied) {
		t.Fatalf("app A after the delete: %v", err)
	}
	if enf.RuleReads() != reads+1 {
		t.Errorf("the enforcer read the rules %d times after the delete, want 1", enf.RuleReads()-reads)
	}
	for _, a := range []string{"access-rule.add", "access-rule.store.done", "access-rule.delete", "access-rule.delete.done"} {
		if w.CountAudit(t, a) != 1 {
			t.Errorf("audit %s: %d", a, w.CountAudit(t, a))
		}
	}
}

func TestRemoveDomainAccessRulesEmptiesTheARAMOfTheDomainsAID(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	r1, _ := addRule(t, w, newTestApp(t, "A"))
	r2, _ := addRule(t, w, newTestApp(t, "B"))
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 2 {
		t.Fatalf("card rules %d", len(onCard))
	}
	d, _ := w.Svc.Store.GetDomain(ctx, w.EID, w.AID)
	j, err := w.Svc.RemoveDomainAccessRules(ctx, "system", d)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{r1.ID, r2.ID} {
		if s := ruleState(t, w, id).State; s != keyport.RuleDeleting {
			t.Fatalf("rule %s while removing", s)
		}
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if got := job(t, w, j.Ref); got.State != keyport.JobDone {
		t.Fatalf("remove job %s: %s", got.State, got.LastError)
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 0 {
		t.Fatalf("ARA-M still holds %+v", onCard)
	}
	for _, id := range []string{r1.ID, r2.ID} {
		if s := ruleState(t, w, id).State; s != keyport.RuleRemoved {
			t.Fatalf("rule %s after remove", s)
		}
	}
}

// dropConn breaks the connection when the agent writes its n-th request.
type dropConn struct {
	net.Conn
	writes *atomic.Int32
	at     int32
}

func (c dropConn) Write(b []byte) (int, error) {
	if c.writes.Add(1) == c.at {
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

func TestARuleStoreWhoseAnswerIsLostIsRedoneInTheNextSessionAndStoredOnce(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	rule, j := addRule(t, w, newTestApp(t, "A"))
	var writes atomic.Int32
	dials := 0
	// Request 3 carries the answer to script 2 (the STORE DATA, which the
	// card ran); the connection breaks there and the agent cannot come back.
	a := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Retries: 1, Retry: time.Millisecond,
		Dial: func(ctx2 context.Context) (net.Conn, error) {
			if dials++; dials > 1 {
				return nil, errors.New("test: no network")
			}
			c, err := tlspsk.Dial(ctx2, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
			if err != nil {
				return nil, err
			}
			return dropConn{Conn: c, writes: &writes, at: 3}, nil
		}}, w.Card)
	if _, err := a.Session(ctx); err == nil {
		t.Fatal("the broken session succeeded")
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 1 {
		t.Fatalf("the card ran the store: %d rules", len(onCard))
	}
	if got := job(t, w, j.Ref); got.State != keyport.JobSent {
		t.Fatalf("job %s after the lost answer", got.State)
	}
	if s := ruleState(t, w, rule.ID).State; s != keyport.RulePending {
		t.Fatalf("rule %s with its answer lost", s)
	}
	// The broken session's lease runs out (as it would after 3 s).
	m, _ := w.Svc.Store.GetModule(ctx, w.EID)
	if err := w.Svc.Store.ReleaseLease(ctx, m.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	got := job(t, w, j.Ref)
	if got.State != keyport.JobDone || got.Result.Issuer == nil || got.Result.Issuer.Runs != 2 {
		t.Fatalf("job %s %+v", got.State, got.Result)
	}
	if s := ruleState(t, w, rule.ID).State; s != keyport.RuleActive {
		t.Fatalf("rule %s", s)
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 1 {
		t.Fatalf("the card holds %d rules, want exactly one", len(onCard))
	}
	if n := w.CountAudit(t, "access-rule.store.done"); n != 1 {
		t.Fatalf("%d done events", n)
	}
}

func TestARuleStoreWhoseConnectionDropsIsResumedInTheSameSessionAndCompletesOnce(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	rule, j := addRule(t, w, newTestApp(t, "A"))
	var writes atomic.Int32
	a := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Retry: time.Millisecond,
		Dial: func(ctx2 context.Context) (net.Conn, error) {
			c, err := tlspsk.Dial(ctx2, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
			if err != nil {
				return nil, err
			}
			return dropConn{Conn: c, writes: &writes, at: 3}, nil
		}}, w.Card)
	rep, err := a.Session(ctx)
	if err != nil || rep.Resumed != 1 {
		t.Fatalf("session %+v %v", rep, err)
	}
	if got := job(t, w, j.Ref); got.State != keyport.JobDone || got.Result.Issuer.Runs != 1 {
		t.Fatalf("job %s %+v", got.State, got.Result)
	}
	if s := ruleState(t, w, rule.ID).State; s != keyport.RuleActive {
		t.Fatalf("rule %s", s)
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 1 {
		t.Fatalf("%d rules on the card", len(onCard))
	}
}

// isARAMStore reports a wrapped ARA-M STORE DATA (84 E2 90 00 …).
func isARAMStore(apdu []byte) bool {
	return len(apdu) > 4 && apdu[0]&0x84 == 0x84 && apdu[1] == 0xE2 && apdu[2] == 0x90
}

func TestAnErrorStatusWordFailsTheRuleJobWithTheSWAndAnAdminRetryCompletesIt(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.Card.SetFault(func(apdu []byte) []byte {
		if isARAMStore(apdu) {
			return []byte{0x6A, 0x84} // not enough memory
		}
		return nil
	})
	rule, j := addRule(t, w, newTestApp(t, "A"))
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	got := job(t, w, j.Ref)
	if got.State != keyport.JobFailed || got.Result == nil || got.Result.SW != "6A84" {
		t.Fatalf("job %s %+v", got.State, got.Result)
	}
	r := ruleState(t, w, rule.ID)
	if r.State != keyport.RuleFailed || r.SW != "6A84" || !strings.Contains(r.Cause, "STORE DATA") {
		t.Fatalf("rule %+v", r)
	}
	if onCard, _ := w.CardRules(t); len(onCard) != 0 {
		t.Fatalf("card %+v", onCard)
	}
	if n := w.CountAudit(t, "access-rule.store.failed"); n != 1 {
		t.Fatalf("%d failed events", n)
	}
	w.Card.SetFault(nil)
	if _, err := w.Svc.RetryIssuerJob(ctx, w.Prov, j.Ref); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("a provider retried: %v", err)
	}
	again, err := w.Svc.RetryIssuerJob(ctx, keyport.Principal{Admin: true, Name: "ops"}, j.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if s := ruleState(t, w, rule.ID).State; s != keyport.RulePending {
		t.Fatalf("rule %s after the retry was queued", s)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if got := job(t, w, again.Ref); got.State != keyport.JobDone {
		t.Fatalf("retry %s %s", got.State, got.LastError)
	}
	if s := ruleState(t, w, rule.ID).State; s != keyport.RuleActive {
		t.Fatalf("rule %s", s)
	}
}

func TestAWrongCardCryptogramEndsTheRuleJobBeforeEXTERNALAUTHENTICATE(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	var extAuth atomic.Int32
	w.Card.SetFault(func(apdu []byte) []byte {
		switch {
		case len(apdu) > 4 && apdu[1] == gp.INSInitializeUpdate:
			r := w.Card.Card.Process(apdu)
			if len(r) > 10 {
				r[len(r)-6] ^= 0x01 // a bit of the card cryptogram (before counter and SW)
			}
			return r
		case len(apdu) > 4 && apdu[1] == gp.INSExternalAuthenticate:
			extAuth.Add(1)
		}
		return nil
	})
	rule, j := addRule(t, w, newTestApp(t, "A"))
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	got := job(t, w, j.Ref)
	if got.State != keyport.JobFailed || !strings.Contains(got.LastError, "cryptogram") {
		t.Fatalf("job %s: %s", got.State, got.LastError)
	}
	if extAuth.Load() != 0 {
		t.Error("EXTERNAL AUTHENTICATE went out after a wrong card cryptogram")
	}
	if s := ruleState(t, w, rule.ID).State; s != keyport.RuleFailed {
		t.Fatalf("rule %s", s)
	}
}

func TestAWrongRMACKeepsTheRuleJobFromBeingDone(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	w.Card.SetFault(func(apdu []byte) []byte {
		if isARAMStore(apdu) {
			r := w.Card.Card.Process(apdu)
			if len(r) > 2 {
				r[len(r)-3] ^= 0x80 // the R-MAC's last byte
			}
			return r
		}
		return nil
	})
	rule, j := addRule(t, w, newTestApp(t, "A"))
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	got := job(t, w, j.Ref)
	if got.State == keyport.JobDone || !strings.Contains(got.LastError, "secure channel") {
		t.Fatalf("job %s: %s", got.State, got.LastError)
	}
	if s := ruleState(t, w, rule.ID).State; s == keyport.RuleActive {
		t.Fatal("rule ACTIVE on a forged answer")
	}
}

// The database and the logs hold no key: neither a static key of the card
// (ISD, SSD) nor a session key of the issuer dialogs.
func TestIssuerJobsLeaveNoKeyMaterialInTheDatabaseOrTheLogs(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	rule, j := addRule(t, w, newTestApp(t, "A"))
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Svc.DeleteAccessRule(ctx, w.Prov, w.EID, w.AID, rule.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	done := job(t, w, j.Ref)
	if done.State != keyport.JobDone {
		t.Fatalf("job %s", done.State)
	}
	secrets := w.CardKeys(t)
	if len(secrets) < 6 {
		t.Fatalf("only %d card keys found", len(secrets))
	}
	// The session keys of the store dialog, from the ISD keys (KVN 31) the
	// module holds and the challenges the job recorded.
	prog := done.Result.Issuer
	hc, _ := hex.DecodeString(prog.HostChallenge)
	iu, _ := hex.DecodeString(prog.InitUpdate)
	card, err := gp.ParseInitUpdateResponse(iu)
	if err != nil {
		t.Fatal(err)
	}
	isd := isdKeys(t, w)
	sk, err := gp.DeriveSessionKeys(gp.KeySet{KVN: keyport.PersoISDKVN, ENC: gp.AESKey(isd[0]), MAC: gp.AESKey(isd[1])}, hc, card.CardChallenge)
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := gp.NewHostSession(gp.KeySet{KVN: keyport.PersoISDKVN, ENC: gp.AESKey(isd[0]), MAC: gp.AESKey(isd[1])}, hc)
	if err := hs.OnInitUpdateResponse(gp.Response{Data: iu, SW: gp.SWOK}); err != nil {
		t.Fatalf("the recorded dialog does not verify under the module's ISD keys: %v", err)
	}
	secrets = append(secrets, sessionKeyBytes(sk)...)
	db := readDB(t, w.DBPath)
	logs := w.Logs.Bytes()
	if len(logs) == 0 {
		t.Fatal("nothing was logged")
	}
	for i, k := range secrets {
		for _, form := range [][]byte{k, []byte(hex.EncodeToString(k)), []byte(strings.ToUpper(hex.EncodeToString(k)))} {
			if bytes.Contains(db, form) {
				t.Errorf("secret %d found in the database", i)
			}
			if bytes.Contains(logs, form) {
				t.Errorf("secret %d found in the logs", i)
			}
		}
	}
}

func isdKeys(t *testing.T, w *cardlinktest.IssuerWorld) [3][]byte { return w.ISDKeys(t) }

func sessionKeyBytes(sk gp.SessionKeys) [][]byte { return [][]byte{sk.ENC, sk.MAC, sk.RMAC} }

// readDB returns the SQLite database's bytes, its write-ahead log included.
func readDB(t *testing.T, path string) []byte {
	t.Helper()
	var out []byte
	for _, p := range []string{path, path + "-wal"} {
		b, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		out = append(out, b...)
	}
	if len(out) == 0 {
		t.Fatal("no database file")
	}
	return out
}
