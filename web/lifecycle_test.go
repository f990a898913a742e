package web_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
)

func TestLifecycleRequestsThatDoNotFitGetProblemsAndQueueNothing(t *testing.T) {
	e := newAPI(t)
	claimedForScripts(t, e) // domain 1 of module 0 is the provider's, ASSIGNED
	eid := fixture.EID(t, 0)
	mine := fmt.Sprintf("/api/v1/domains/%s/%s", eid, fixture.AID(1))
	free := fmt.Sprintf("/api/v1/domains/%s/%s", eid, fixture.AID(2))
	_, other, _ := e.w.Provider(t, "Bank B", fixture.RSAKeys()[0])
	for _, tc := range []struct {
		name, token, path string
		status            int
		typ, detail       string
	}{
		{"release of a domain not yours", other, mine + "/release", 404, "not-found", ""},
		{"lock of a domain not yours", other, mine + "/lock", 404, "not-found", ""},
		{"release of an unassigned domain", e.token, free + "/release", 404, "not-found", ""},
		{"release on an imported module", e.token, mine + "/release", 409, "conflict", "ISD keys"},
		{"lock on an imported module", e.token, mine + "/lock", 409, "conflict", "ISD keys"},
		{"unlock of a domain that is not locked", e.token, mine + "/unlock", 409, "conflict", "ASSIGNED"},
		{"an admin's release of an unassigned domain", e.admin, free + "/release", 409, "conflict", "UNASSIGNED"},
		{"a malformed AID", e.token, fmt.Sprintf("/api/v1/domains/%s/XYZ/release", eid), 422, "invalid", ""},
		{"a provider's retry", e.token, "/api/v1/admin" + mine[len("/api/v1"):] + "/release/retry", 403, "forbidden", ""},
		{"a retry of a domain not releasing", e.admin, "/api/v1/admin" + mine[len("/api/v1"):] + "/release/retry", 409, "conflict", "ASSIGNED"},
	} {
		resp, b := e.do(t, tc.token, "POST", tc.path, "", nil)
		wantProblem(t, tc.name, resp, b, tc.status, tc.typ, tc.detail)
	}
	jobs, err := e.w.Store.ListJobs(context.Background(), keyport.JobFilter{Kind: keyport.JobIssuer, Limit: 10})
	if err != nil || len(jobs) != 0 {
		t.Fatalf("%d issuer jobs stored: %v", len(jobs), err)
	}
	if d, _ := e.w.Store.GetDomain(context.Background(), eid, fixture.AID(1)); d.State != keyport.Assigned {
		t.Fatalf("domain %s", d.State)
	}
}
