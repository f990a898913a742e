package keyport_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// TestChangeDomainRefusesAnUnknownChangeAndQueuesNothing: the one entry
// of the CLI, the pages and the sandbox to release, lock and unlock takes
// only those three.
func TestChangeDomainRefusesAnUnknownChangeAndQueuesNothing(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	p, _, wk := w.Provider(t, "Bank A", fixture.RSAKeys()[0])
	c, _, err := w.Svc.Claim(ctx, p, keyport.ClaimRequest{EID: fixture.EID(t, 0), WrappingKeyID: wk})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Svc.ChangeDomain(ctx, p, c.EID, c.AID, "erase"); !errors.Is(err, keyport.ErrInvalid) {
		t.Fatalf("an unknown change: %v", err)
	}
	if jobs, err := w.Store.ListJobs(ctx, keyport.JobFilter{Kind: keyport.JobIssuer, Limit: 10}); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs after a refused change: %+v %v", jobs, err)
	}
	// The known ones reach their use case: on this imported module (no
	// ISD keys) each is the issuer-job refusal, not the unknown change's.
	for _, ch := range []keyport.CardChange{keyport.ChangeRelease, keyport.ChangeLock} {
		if _, err := w.Svc.ChangeDomain(ctx, p, c.EID, c.AID, ch); !errors.Is(err, keyport.ErrConflict) || !strings.Contains(err.Error(), "no ISD keys") {
			t.Fatalf("%s: %v", ch, err)
		}
	}
}
