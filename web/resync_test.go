package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/cardlinktest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/web"
)

func TestADomainWhoseCounterIsUnverifiedReportsNoCounterAndRefusesScripts(t *testing.T) {
	e := newAPI(t)
	path, body := claimedForScripts(t, e)
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	domainPath := fmt.Sprintf("/api/v1/domains/%s/%s", eid, aid)
	resp, b := e.do(t, e.token, "GET", domainPath, "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"sequence_counter":0,"sequence_counter_state":"known"`) {
		t.Fatalf("domain: %d %s", resp.StatusCode, b)
	}
	ctx := context.Background()
	d, err := e.w.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.w.Store.SetCounterUnverified(ctx, d.ID, true); err != nil {
		t.Fatal(err)
	}
	resp, b = e.do(t, e.token, "GET", domainPath, "", nil)
	var dom struct {
		Counter *int   `json:"sequence_counter"`
		State   string `json:"sequence_counter_state"`
	}
	if err := json.Unmarshal(b, &dom); err != nil || resp.StatusCode != 200 || dom.Counter != nil || dom.State != "resynchronizing" ||
		!strings.Contains(string(b), `"sequence_counter":null`) {
		t.Fatalf("unverified domain: %d %s", resp.StatusCode, b)
	}
	n := e.jobCount(t)
	resp, b = e.do(t, e.token, "POST", path, "application/json", body)
	wantProblem(t, "a script while the counter is re-read", resp, b, 409, "conflict", "resynchronizing")
	if !strings.Contains(string(b), "next admin session") {
		t.Fatalf("refusal does not say when to retry: %s", b)
	}
	if e.jobCount(t) != n {
		t.Fatal("a refused script was stored")
	}
	// Recording a counter the card reported ends it.
	if err := e.w.Store.SetDomainKeys(ctx, d.ID, d.KVN, nil, 7); err != nil {
		t.Fatal(err)
	}
	resp, b = e.do(t, e.token, "GET", domainPath, "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"sequence_counter":7,"sequence_counter_state":"known"`) {
		t.Fatalf("domain after the read: %d %s", resp.StatusCode, b)
	}
}

func TestTheDomainPageSaysTheCounterIsBeingReReadInsteadOfAStaleOne(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	ps := signInPages(t, srv.URL, w.Email, w.Password)
	page := "/portal/domains/" + string(w.EID) + "/" + string(w.AID)
	if st, body := ps.get(page); st != 200 || strings.Contains(body, `id="counter-resync"`) {
		t.Fatalf("domain page %d says the counter is re-read", st)
	}
	d, err := w.Store.GetDomain(context.Background(), w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Store.SetCounterUnverified(context.Background(), d.ID, true); err != nil {
		t.Fatal(err)
	}
	if st, body := ps.get(page); st != 200 || !strings.Contains(body, `id="counter-resync"`) || !strings.Contains(body, "next admin session") {
		t.Fatalf("domain page %d does not say the counter is re-read", st)
	}
}

// The domain page shows its owner the pending key version of a rotation
// whose answer was lost, and nothing of the kind before.
func TestTheDomainPageShowsThePendingKeyVersionOfAnUnprovenRotation(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	ps := signInPages(t, srv.URL, w.Email, w.Password)
	page := "/portal/domains/" + string(w.EID) + "/" + string(w.AID)
	ctx := context.Background()
	d, err := w.Store.GetDomain(ctx, w.EID, w.AID)
	if err != nil {
		t.Fatal(err)
	}
	if d.State != keyport.Personalized {
		if err := w.Store.TransitionDomain(ctx, d.ID, []keyport.DomainState{d.State}, keyport.Personalized, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Store.SetDomainKeys(ctx, d.ID, 0x31, d.KCV, 0); err != nil {
		t.Fatal(err)
	}
	if st, body := ps.get(page); st != 200 || strings.Contains(body, `id="pending-keys"`) {
		t.Fatalf("domain page %d shows pending keys with no rotation", st)
	}
	keys := func(b byte) map[keyport.KeyUsage][]byte {
		m := map[keyport.KeyUsage][]byte{}
		for _, u := range keyport.Usages {
			m[u] = bytes.Repeat([]byte{b}, 16)
		}
		return m
	}
	rot, err := keyport.RotateScript(w.AID, 0x31, 0, keys(1), keys(2))
	if err != nil {
		t.Fatal(err)
	}
	p, err := keyport.CheckRotateScript(w.EID, w.AID, 0x31, rot)
	if err != nil {
		t.Fatal(err)
	}
	storeLostKeyChange(t, w.Store, d, p)
	st, body := ps.get(page)
	i := strings.Index(body, `id="pending-keys"`)
	if st != 200 || i < 0 || !strings.Contains(body[i:], ">0x32<") || !strings.Contains(body[i:], "keyport sp script --rotate") {
		t.Fatalf("domain page %d does not show key version 32 pending:\n%s", st, body)
	}
}

// After a rotation whose outcome is unproven, GET domain shows its owner the
// pending key set (in the document's schema), and the rotation from it is
// accepted; the domain's KVN stays what the card last proved.
func TestADomainShowsItsOwnerThePendingKeysOfAnUnprovenRotation(t *testing.T) {
	e := newAPI(t)
	claimedForScripts(t, e)
	ctx := context.Background()
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	d, err := e.w.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	current, next := e.w.Keys[eid][fixture.AID(2)], e.w.Keys[eid][aid]
	if err := e.w.Store.TransitionDomain(ctx, d.ID, []keyport.DomainState{keyport.Assigned}, keyport.Personalized, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.w.Store.SetDomainKeys(ctx, d.ID, 0x31, d.KCV, 0); err != nil {
		t.Fatal(err)
	}
	rot, err := keyport.RotateScript(aid, 0x31, 0, current, next)
	if err != nil {
		t.Fatal(err)
	}
	p, err := keyport.CheckRotateScript(eid, aid, 0x31, rot)
	if err != nil {
		t.Fatal(err)
	}
	// The rotation went out and its answer was lost.
	lost := storeLostKeyChange(t, e.w.Store, d, p)
	domainPath := fmt.Sprintf("/api/v1/domains/%s/%s", eid, aid)
	resp, b := e.do(t, e.token, "GET", domainPath, "", nil)
	var dom struct {
		KVN     int                   `json:"kvn"`
		Pending []keyport.PendingKeys `json:"pending_keys"`
	}
	if err := json.Unmarshal(b, &dom); err != nil || resp.StatusCode != 200 || dom.KVN != 0x31 || len(dom.Pending) != 1 ||
		dom.Pending[0].KVN != 0x32 || dom.Pending[0].Job != lost.Ref || dom.Pending[0].KCV[keyport.UsageMAC] != rot.Expect.KCV[keyport.UsageMAC] {
		t.Fatalf("domain: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "GET", "/api/v1/domains", "", nil)
	if resp.StatusCode != 200 || strings.Contains(string(b), "pending_keys") {
		t.Fatalf("the domain list shows pending keys: %d %s", resp.StatusCode, b)
	}
	from, err := keyport.RotateScript(aid, 0x32, 0, next, current)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(from)
	resp, b = e.do(t, e.token, "POST", domainPath+"/scripts", "application/json", body)
	if resp.StatusCode != 201 || !strings.Contains(string(b), `"kvn":51`) {
		t.Fatalf("rotation from the pending KVN: %d %s", resp.StatusCode, b)
	}
}

// An ASSIGNED domain whose second-key answer was lost: GET domain shows its
// owner KVN 31 pending while the KVN stays 30, a rotation from 31 is
// accepted, and one from another KVN is refused (409) and stored nowhere.
func TestAnAssignedDomainShowsItsOwnerThePendingKeysOfALostSecondKeyAnswer(t *testing.T) {
	e := newAPI(t)
	claimedForScripts(t, e)
	ctx := context.Background()
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	d, err := e.w.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		t.Fatal(err)
	}
	first, second := e.w.Keys[eid][aid], e.w.Keys[eid][fixture.AID(2)]
	req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, first, second)
	if err != nil {
		t.Fatal(err)
	}
	p, err := keyport.CheckScript(eid, aid, 0x30, req)
	if err != nil {
		t.Fatal(err)
	}
	lost := storeLostKeyChange(t, e.w.Store, d, p)
	domainPath := fmt.Sprintf("/api/v1/domains/%s/%s", eid, aid)
	resp, b := e.do(t, e.token, "GET", domainPath, "", nil)
	var dom struct {
		State   keyport.DomainState   `json:"state"`
		KVN     int                   `json:"kvn"`
		Pending []keyport.PendingKeys `json:"pending_keys"`
	}
	if err := json.Unmarshal(b, &dom); err != nil || resp.StatusCode != 200 || dom.State != keyport.Assigned || dom.KVN != 0x30 || len(dom.Pending) != 1 ||
		dom.Pending[0].KVN != 0x31 || dom.Pending[0].Job != lost.Ref || dom.Pending[0].KCV[keyport.UsageMAC] != req.Expect.KCV[keyport.UsageMAC] {
		t.Fatalf("domain: %d %s", resp.StatusCode, b)
	}
	n := e.jobCount(t)
	bad, err := keyport.RotateScript(aid, 0x33, 0, second, first)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(bad)
	resp, b = e.do(t, e.token, "POST", domainPath+"/scripts", "application/json", body)
	wantProblem(t, "a rotation of an ASSIGNED domain from a KVN not pending", resp, b, 409, "conflict", "pending now 31")
	if e.jobCount(t) != n {
		t.Fatal("a refused rotation was stored")
	}
	from, err := keyport.RotateScript(aid, 0x31, 0, second, first)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = json.Marshal(from)
	resp, b = e.do(t, e.token, "POST", domainPath+"/scripts", "application/json", body)
	if resp.StatusCode != 201 || !strings.Contains(string(b), `"kvn":50`) {
		t.Fatalf("rotation from the pending KVN: %d %s", resp.StatusCode, b)
	}
}

// The portal page of an ASSIGNED domain with a pending key set says that
// the second-key script's outcome is unproven and what to build next.
func TestTheDomainPageOfAnAssignedDomainShowsThePendingKeyVersionOfALostSecondKeyAnswer(t *testing.T) {
	w := cardlinktest.NewIssuerWorld(t, cardlinktest.LinkOptions{NoWorker: true})
	srv := httptest.NewServer(web.New(w.Svc, web.Options{InsecureCookies: true, SpoolDir: t.TempDir()}))
	t.Cleanup(srv.Close)
	ps := signInPages(t, srv.URL, w.Email, w.Password)
	ctx := context.Background()
	m, err := w.Store.GetModule(ctx, w.EID)
	if err != nil {
		t.Fatal(err)
	}
	aid := m.Domains[1].AID
	wks, err := w.Svc.ListWrappingKeys(ctx, w.Prov)
	if err != nil || len(wks) == 0 {
		t.Fatalf("wrapping keys %v %v", wks, err)
	}
	if _, _, err := w.Svc.Claim(ctx, w.Prov, keyport.ClaimRequest{EID: w.EID, AID: aid, WrappingKeyID: wks[0].ID}); err != nil {
		t.Fatal(err)
	}
	page := "/portal/domains/" + string(w.EID) + "/" + string(aid)
	if st, body := ps.get(page); st != 200 || strings.Contains(body, `id="pending-keys"`) {
		t.Fatalf("domain page %d shows pending keys before any script", st)
	}
	d, err := w.Store.GetDomain(ctx, w.EID, aid)
	if err != nil {
		t.Fatal(err)
	}
	keys := func(b byte) map[keyport.KeyUsage][]byte {
		m := map[keyport.KeyUsage][]byte{}
		for _, u := range keyport.Usages {
			m[u] = bytes.Repeat([]byte{b}, 16)
		}
		return m
	}
	req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, keys(1), keys(2))
	if err != nil {
		t.Fatal(err)
	}
	p, err := keyport.CheckScript(w.EID, aid, 0x30, req)
	if err != nil {
		t.Fatal(err)
	}
	storeLostKeyChange(t, w.Store, d, p)
	st, body := ps.get(page)
	i := strings.Index(body, `id="pending-keys"`)
	if st != 200 || i < 0 || !strings.Contains(body[i:], ">0x31<") || !strings.Contains(body[i:], "second-key script") || !strings.Contains(body[i:], "keyport sp script --rotate") {
		t.Fatalf("domain page %d does not show key version 31 pending after a lost second key:\n%s", st, body)
	}
}

// storeLostKeyChange stores the key change p of domain d as a job that
// went out and whose answer was lost (FAILED "answer lost").
func storeLostKeyChange(t *testing.T, st interface {
	CreateJob(context.Context, *keyport.Job) error
}, d *keyport.Domain, p *keyport.SecondKeyPayload) *keyport.Job {
	t.Helper()
	lost := &keyport.Job{Ref: keyport.NewID("job"), Kind: keyport.JobSecondKey, DomainID: d.ID, ModuleID: d.ModuleID, ProviderID: d.OwnerID,
		State: keyport.JobFailed, SecondKey: p, Result: &keyport.ScriptResult{ScriptStatus: "answer-lost"}, LastError: "answer lost"}
	if err := st.CreateJob(context.Background(), lost); err != nil {
		t.Fatal(err)
	}
	return lost
}
