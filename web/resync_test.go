package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

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
