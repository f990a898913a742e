package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

// claimedForScripts claims domain 1 of module 0 and returns its scripts
// path and a valid script body for it.
func claimedForScripts(t *testing.T, e *apiEnv) (string, []byte) {
	t.Helper()
	eid, aid := fixture.EID(t, 0), fixture.AID(1)
	resp, b := e.do(t, e.token, "POST", "/api/v1/claims", "application/json",
		[]byte(fmt.Sprintf(`{"eid":%q,"aid":%q,"wrapping_key_id":%q}`, eid, aid, e.wk)))
	if resp.StatusCode != 201 {
		t.Fatalf("claim: %d %s", resp.StatusCode, b)
	}
	req, err := keyport.SecondKeyScript(aid, 0x30, 0, 0x31, e.w.Keys[eid][aid], e.w.Keys[eid][fixture.AID(2)])
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(req)
	return fmt.Sprintf("/api/v1/domains/%s/%s/scripts", eid, aid), body
}

func (e *apiEnv) jobCount(t *testing.T) int {
	t.Helper()
	jobs, err := e.w.Store.ListJobs(context.Background(), keyport.JobFilter{Kind: keyport.JobSecondKey, Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	return len(jobs)
}

func TestScriptSubmissionQueuesAJobTheProviderCanFollowAndCancel(t *testing.T) {
	e := newAPI(t)
	path, body := claimedForScripts(t, e)
	resp, b := e.do(t, e.token, "POST", path, "application/json", body)
	var job keyport.JobView
	if json.Unmarshal(b, &job); resp.StatusCode != 201 || job.State != keyport.JobQueued || resp.Header.Get("Location") != "/api/v1/jobs/"+job.ID {
		t.Fatalf("submit: %d %s", resp.StatusCode, b)
	}
	if job.Expect == nil || job.Expect.KVN != 0x31 || job.ExpiresAt == nil {
		t.Fatalf("job view %s", b)
	}
	resp, b = e.do(t, e.token, "GET", "/api/v1/jobs/"+job.ID, "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"state":"QUEUED"`) {
		t.Fatalf("get: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "POST", path, "application/json", body)
	wantProblem(t, "a second script while one is queued", resp, b, 409, "conflict", job.ID)
	resp, b = e.do(t, e.admin, "GET", "/api/v1/admin/jobs?state=queued", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), job.ID) {
		t.Fatalf("admin list: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "POST", "/api/v1/jobs/"+job.ID+"/cancel", "", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"state":"CANCELLED"`) {
		t.Fatalf("cancel: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do(t, e.token, "POST", "/api/v1/jobs/"+job.ID+"/cancel", "", nil)
	wantProblem(t, "cancel twice", resp, b, 409, "conflict", "CANCELLED")
}

func TestAnotherProviderSeesNeitherTheDomainsScriptsNorItsJobs(t *testing.T) {
	e := newAPI(t)
	path, body := claimedForScripts(t, e)
	_, b := e.do(t, e.token, "POST", path, "application/json", body)
	var job keyport.JobView
	json.Unmarshal(b, &job)
	_, other, _ := e.w.Provider(t, "Bank B", fixture.RSAKeys()[0])
	resp, b := e.do(t, other, "POST", path, "application/json", body)
	wantProblem(t, "script for another's domain", resp, b, 404, "not-found", "")
	resp, b = e.do(t, other, "GET", "/api/v1/jobs/"+job.ID, "", nil)
	wantProblem(t, "another's job", resp, b, 404, "not-found", "")
	resp, b = e.do(t, other, "GET", "/api/v1/admin/jobs", "", nil)
	wantProblem(t, "admin list as a provider", resp, b, 403, "forbidden", "")
}

func TestBadScriptSubmissionsGetClearProblemsAndStoreNothing(t *testing.T) {
	e := newAPI(t)
	path, good := claimedForScripts(t, e)
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		typ, detail       string
	}{
		{"a form instead of JSON", "application/x-www-form-urlencoded", "apdus=80500000", 415, "unsupported-media-type", "application/json"},
		{"malformed JSON", "application/json", `{"apdus":[`, 422, "invalid", "ends in the middle"},
		{"an unknown field", "application/json", `{"apdus":[],"keys":{}}`, 422, "invalid", "unknown field"},
		{"apdus that are not a list", "application/json", `{"apdus":"80500000","expect":{"kvn":49}}`, 422, "invalid", "apdus"},
		{"apdus that are numbers", "application/json", `{"apdus":[1,2],"expect":{"kvn":49}}`, 422, "invalid", "apdus"},
		{"an empty script", "application/json", `{"apdus":[],"expect":{"kvn":49,"kcv":{}}}`, 422, "invalid", "no APDU"},
		{"hex that is no APDU", "application/json", `{"apdus":["8050"],"expect":{"kvn":49,"kcv":{}}}`, 422, "invalid", "apdus[0]"},
		{"a script without PUT KEY", "application/json", `{"apdus":["8050300008112233445566778800"],"expect":{"kvn":49}}`, 422, "invalid", "no PUT KEY"},
		{"no expectation", "application/json", strings.Replace(string(good), `"kvn":49`, `"kvn":0`, 1), 422, "invalid", "expect.kvn"},
		{"two JSON values", "application/json", string(good) + string(good), 422, "invalid", "more than one"},
	} {
		resp, b := e.do(t, e.token, "POST", path, tc.ctype, []byte(tc.body))
		wantProblem(t, tc.name, resp, b, tc.status, tc.typ, tc.detail)
	}
	resp, b := e.do(t, e.token, "POST", "/api/v1/domains/89049032000000000000000000000000/A00000015153504101/scripts", "application/json", good)
	wantProblem(t, "an EID with bad check digits", resp, b, 422, "invalid", "")
	resp, b = e.do(t, e.token, "GET", "/api/v1/jobs/job_doesnotexist", "", nil)
	wantProblem(t, "an unknown job", resp, b, 404, "not-found", "")
	if n := e.jobCount(t); n != 0 {
		t.Fatalf("%d jobs stored after bad submissions", n)
	}
}

// TestAdminJobsPageShowsTheNewest200JobsNewestFirst: the console's job
// list, with more jobs than it shows, holds the newest 200, newest first;
// it used to show the oldest 200, so new jobs never appeared on it.
func TestAdminJobsPageShowsTheNewest200JobsNewestFirst(t *testing.T) {
	ctx := context.Background()
	p := startPortal(t, 1, 1)
	m, err := p.w.Store.GetModule(ctx, fixture.EID(t, 0))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 205 {
		j := &keyport.Job{Ref: fmt.Sprintf("job_t%03d", i), Kind: keyport.JobSecondKey, DomainID: m.Domains[0].ID, ModuleID: m.ID,
			State: keyport.JobDone, NextRunAt: time.Now(), SecondKey: &keyport.SecondKeyPayload{EID: m.EID, AID: m.Domains[0].AID, APDUs: []string{"84820000"}}}
		if err := p.w.Store.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	admin := signInPages(t, p.srv.URL, p.adminEmail, p.adminPW)
	st, body := admin.get("/admin/jobs")
	if st != 200 {
		t.Fatalf("admin jobs page: %d", st)
	}
	for i := range 205 {
		ref := fmt.Sprintf("job_t%03d", i)
		if shown := strings.Contains(body, ref); shown != (i >= 5) {
			t.Errorf("%s shown: %v, want %v", ref, shown, i >= 5)
		}
	}
	if newest, oldest := strings.Index(body, "job_t204"), strings.Index(body, "job_t005"); newest < 0 || oldest < newest {
		t.Errorf("job_t204 at %d, job_t005 at %d: not newest first", newest, oldest)
	}
}
