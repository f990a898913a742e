package cardlink_test

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/internal/scptest"
	"github.com/keyport/keyport/keywrap"
)

func firstKeysOfWorld(t *testing.T, w *cardlinktest.IssuerWorld) map[keyport.KeyUsage][]byte {
	t.Helper()
	// The world's provider claimed before; its package is still
	// downloadable while the domain is PERSONALIZED.
	b, err := w.Svc.KeyPackage(ctx, w.Prov, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	set, _ := w.Svc.JWKS(ctx)
	pkg, err := keyport.VerifyKeyPackage(b, set)
	if err != nil {
		t.Fatal(err)
	}
	out := map[keyport.KeyUsage][]byte{}
	for _, k := range pkg.Keys {
		if out[k.Usage], err = keywrap.UnwrapRSAAES(fixture.RSAKeys()[0], k.Wrapped, fixture.OAEPHash(t, pkg.Wrapping.OAEPHash)); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func TestReleaseRecreatesTheSSDWithFreshFirstKeysAndASecondProviderClaimsAndUsesIt(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	oldFirst := firstKeysOfWorld(t, w)
	before := issuerDomain(t, w)
	app := newTestApp(t, "bank-app")
	_, rj := addRule(t, w, app)
	if j := runJob(t, w, rj.Ref); j.State != keyport.JobDone {
		t.Fatalf("rule job %s: %s", j.State, j.LastError)
	}
	rel, err := w.Svc.RequestRelease(ctx, w.Prov, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	if d := issuerDomain(t, w); d.State != keyport.Releasing {
		t.Fatalf("domain %s after the request", d.State)
	}
	if _, err := w.Svc.KeyPackage(ctx, w.Prov, w.EID, w.AID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("old key package while RELEASING: %v", err)
	}
	if _, err := w.Svc.LockDomain(ctx, fixture.Admin, w.EID, w.AID, true); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("lock of a RELEASING domain: %v", err)
	}
	if _, err := w.Svc.RequestRelease(ctx, w.Prov, w.EID, w.AID); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("second release: %v", err)
	}
	if j := runJob(t, w, rel.Ref); j.State != keyport.JobDone {
		t.Fatalf("release job %s: %s", j.State, j.LastError)
	}
	d := issuerDomain(t, w)
	if d.State != keyport.Unassigned || d.OwnerID != "" || d.KVN != 0x30 || d.KCV[keyport.UsageENC] == before.KCV[keyport.UsageENC] {
		t.Fatalf("domain after the release: %s owner %q KVN %02X KCV %v (before %v)", d.State, d.OwnerID, d.KVN, d.KCV, before.KCV)
	}
	// The card: the old keys (first and second) open nothing.
	if _, sw, _ := scptest.Authenticate(t, w.Card, w.AID.Bytes(), gp.KeySet{KVN: 0x31, ENC: gp.AESKey(issuerWorldSecond()[keyport.UsageENC]), MAC: gp.AESKey(issuerWorldSecond()[keyport.UsageMAC])}); sw != gp.SWReferencedDataNotFound {
		t.Fatalf("old second keys: %s", sw)
	}
	if _, sw, _ := scptest.Authenticate(t, w.Card, w.AID.Bytes(), gp.KeySet{KVN: 0x30, ENC: gp.AESKey(oldFirst[keyport.UsageENC]), MAC: gp.AESKey(oldFirst[keyport.UsageMAC])}); sw == gp.SWOK {
		t.Fatalf("the previous key package's keys still authenticate")
	}
	w.Card.Card.Reset()
	// The first provider's app lost its rule: no rule names the AID, and
	// the enforcer refuses it.
	rules, _ := w.CardRules(t)
	for _, r := range rules {
		if string(r.AID) == string(w.AID.Bytes()) {
			t.Fatalf("a rule for the released AID is left on the card: %+v", r)
		}
	}
	var denied *ace.AppError
	if err := openAs(t, w, ace.NewEnforcer(w.Card, nil), app); !errors.As(err, &denied) || denied.Code != ace.CodeDenied {
		t.Fatalf("the first provider's app after the release: %v", err)
	}
	w.Card.Card.Reset()
	// The first provider sees nothing of the domain.
	if _, err := w.Svc.GetDomain(ctx, w.Prov, w.EID, w.AID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("first provider's GET domain: %v", err)
	}
	if _, err := w.Svc.KeyPackage(ctx, w.Prov, w.EID, w.AID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("first provider's key package: %v", err)
	}
	// Its jobs about the release say they are done, and show nothing of
	// the new keys.
	verify, _ := w.Store.ListJobs(ctx, keyport.JobFilter{DomainID: d.ID, Kind: keyport.JobSecondKey, States: []keyport.JobState{keyport.JobDone}})
	last := verify[len(verify)-1]
	if last.SecondKey == nil || !last.SecondKey.Verify {
		t.Fatalf("last done job %+v", last.SecondKey)
	}
	vj, err := w.Svc.GetJob(ctx, w.Prov, last.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if v := vj.View(); v.Expect != nil || v.Result == nil || !v.Result.Confirmed || len(v.Result.Responses) != 0 {
		t.Fatalf("the proof job as the first provider sees it: %+v %+v", v.Expect, v.Result)
	}
	// A second provider claims, personalizes and uses the domain. Its
	// counter is the one keyport learned from the proof session.
	shop, _, wk := w.Provider(t, "Shop", fixture.RSAKeys()[0])
	pkg, first := cardlinktest.ClaimAndUnwrap(t, w.Svc, shop, w.EID, w.AID, wk, fixture.RSAKeys()[0])
	if pkg.Keys[0].KCV != d.KCV[keyport.UsageENC] {
		t.Fatalf("package KCV %s, domain %s", pkg.Keys[0].KCV, d.KCV[keyport.UsageENC])
	}
	second := map[keyport.KeyUsage][]byte{}
	for i, u := range keyport.Usages {
		second[u] = make([]byte, 16)
		second[u][0] = byte(0xA0 + i)
	}
	if pkg.SequenceCounter != 1 {
		t.Fatalf("package counter %d, want 1 (the proof session's)", pkg.SequenceCounter)
	}
	// The test's check with the old first keys above ran one INITIALIZE
	// UPDATE on KVN 30 that keyport did not see: the card is one ahead,
	// and keyport is told so, as the failed session of a real one would.
	if err := w.Store.SetDomainKeys(ctx, d.ID, d.KVN, nil, 2); err != nil {
		t.Fatal(err)
	}
	req, err := keyport.SecondKeyScript(w.AID, pkg.KVN, 2, 0x31, first, second)
	if err != nil {
		t.Fatal(err)
	}
	sj, err := w.Svc.SubmitScript(ctx, shop, w.EID, w.AID, req)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, sj.Ref); j.State != keyport.JobDone {
		t.Fatalf("second provider's script: %s %s", j.State, j.LastError)
	}
	if d := issuerDomain(t, w); d.State != keyport.Personalized || d.OwnerID != shop.ProviderID {
		t.Fatalf("domain %s owner %s", d.State, d.OwnerID)
	}
	if _, err := w.Svc.GetDomain(ctx, w.Prov, w.EID, w.AID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("first provider sees the second's domain: %v", err)
	}
	for _, a := range []string{"domain.release.request", "issuer.start", "domain.release.done", "access-rule.remove-all", "release.verify-queued", "release.confirmed"} {
		if n := w.CountAudit(t, a); n < 1 {
			t.Errorf("audit %s: %d events", a, n)
		}
	}
	if _, err := w.Svc.VerifyAudit(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseOfAnotherProvidersDomainIsNotFoundAndStoresNothing(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	other, _, _ := w.Provider(t, "Other", fixture.RSAKeys()[0])
	if _, err := w.Svc.RequestRelease(ctx, other, w.EID, w.AID); !errors.Is(err, keyport.ErrNotFound) {
		t.Fatalf("release of another provider's domain: %v", err)
	}
	m, _ := w.Store.GetModule(ctx, w.EID)
	free := m.Domains[1].AID
	if _, err := w.Svc.RequestRelease(ctx, fixture.Admin, w.EID, free); !errors.Is(err, keyport.ErrConflict) {
		t.Fatalf("release of an UNASSIGNED domain: %v", err)
	}
	if d := issuerDomain(t, w); d.State != keyport.Personalized {
		t.Fatalf("domain %s", d.State)
	}
	if jobs, _ := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobIssuer}); len(jobs) != 0 {
		t.Fatalf("%d issuer jobs stored", len(jobs))
	}
	if n := w.CountAudit(t, "domain.release.request"); n != 0 {
		t.Fatalf("%d release audit events", n)
	}
}

func TestAReleaseTheCardRefusesFailsWithTheSWStaysReleasingAndTheAdminsRetryCompletesIt(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	rel, err := w.Svc.RequestRelease(ctx, fixture.Admin, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	w.Card.SetFault(func(apdu []byte) []byte {
		if len(apdu) > 1 && apdu[1] == gp.INSDelete {
			return []byte{0x69, 0x85}
		}
		return nil
	})
	j := runJob(t, w, rel.Ref)
	if j.State != keyport.JobFailed || j.Result == nil || j.Result.SW != "6985" {
		t.Fatalf("release job %s %+v", j.State, j.Result)
	}
	if d := issuerDomain(t, w); d.State != keyport.Releasing || d.OwnerID != w.Prov.ProviderID {
		t.Fatalf("domain %s owner %q after a refused release", d.State, d.OwnerID)
	}
	if _, err := w.Svc.RetryRelease(ctx, w.Prov, w.EID, w.AID); !errors.Is(err, keyport.ErrForbidden) {
		t.Fatalf("provider retry: %v", err)
	}
	w.Card.SetFault(nil)
	retry, err := w.Svc.RetryRelease(ctx, fixture.Admin, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	if j := runJob(t, w, retry.Ref); j.State != keyport.JobDone {
		t.Fatalf("retried release %s: %s", j.State, j.LastError)
	}
	if d := issuerDomain(t, w); d.State != keyport.Unassigned {
		t.Fatalf("domain %s after the retry", d.State)
	}
	if n := w.CountAudit(t, "domain.release.failed"); n != 1 {
		t.Fatalf("%d domain.release.failed events", n)
	}
}

func TestAReleaseWhoseAnswerIsLostAfterTheCardRecreatedTheSSDIsRedoneAndCompletesOnce(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	rel, err := w.Svc.RequestRelease(ctx, w.Prov, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	var writes atomic.Int32
	dials := 0
	// Request 4 carries the answer to script 3 (DELETE, INSTALL, STORE
	// DATA, which the card ran); the connection breaks there.
	a := agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Retries: 1, Retry: time.Millisecond,
		Dial: func(ctx2 context.Context) (net.Conn, error) {
			if dials++; dials > 1 {
				return nil, errors.New("test: no network")
			}
			c, err := tlspsk.Dial(ctx2, "tcp", w.Link.Addr, &tlspsk.ClientConfig{Identity: string(w.EID), PSK: w.PSK})
			if err != nil {
				return nil, err
			}
			return dropConn{Conn: c, writes: &writes, at: 4}, nil
		}}, w.Card)
	if _, err := a.Session(ctx); err == nil {
		t.Fatal("the broken session succeeded")
	}
	if j := job(t, w, rel.Ref); j.State != keyport.JobSent {
		t.Fatalf("release job %s after the lost answer", j.State)
	}
	if d := issuerDomain(t, w); d.State != keyport.Releasing {
		t.Fatalf("domain %s after the lost answer", d.State)
	}
	m, _ := w.Svc.Store.GetModule(ctx, w.EID)
	if err := w.Svc.Store.ReleaseLease(ctx, m.ID, ""); err != nil {
		t.Fatal(err)
	}
	j := runJob(t, w, rel.Ref)
	if j.State != keyport.JobDone || j.Result.Issuer == nil || j.Result.Issuer.Runs != 2 {
		t.Fatalf("release job %s %+v", j.State, j.Result)
	}
	if d := issuerDomain(t, w); d.State != keyport.Unassigned {
		t.Fatalf("domain %s", d.State)
	}
	for _, a := range []string{"domain.release.done", "release.confirmed"} {
		if n := w.CountAudit(t, a); n != 1 {
			t.Errorf("%s: %d events, want exactly 1", a, n)
		}
	}
	// The card holds the SSD once, SELECTABLE, under the keys keyport has.
	_, sw, isd := scptest.Authenticate(t, w.Card, m.ISDAID.Bytes(), scptest.ISDKeys(w.HSM, m))
	if sw != gp.SWOK {
		t.Fatalf("ISD: %s", sw)
	}
	n := 0
	for _, e := range isd.SecurityDomains() {
		if string(e.AID) == string(w.AID.Bytes()) {
			n++
			if e.LifeCycle != gp.LifeCycleSelectable {
				t.Errorf("SSD %s", e.LifeCycle)
			}
		}
	}
	if n != 1 {
		t.Fatalf("the card lists the SSD %d times", n)
	}
	w.Card.Card.Reset()
	d := issuerDomain(t, w)
	if _, sw, _ := scptest.Authenticate(t, w.Card, w.AID.Bytes(), scptest.StoredFirstKeys(t, w.Store, w.HSM, "p1", w.EID, w.AID)); sw != gp.SWOK {
		t.Fatalf("the stored first keys (KCV %v) on the new SSD: %s", d.KCV, sw)
	}
}
