package store_test

import (
	"strconv"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func newCampaign(t *testing.T, r keyport.Repo, providerID string) *keyport.Campaign {
	t.Helper()
	c := &keyport.Campaign{ID: keyport.NewID("cmp"), ProviderID: providerID, Op: keyport.CampaignLock,
		State: keyport.CampaignCreating, Rate: 10, ModuleCap: 1, Busy: "wait", Actor: "admin:test"}
	if err := r.CreateCampaign(ctx, c); err != nil {
		t.Fatal(err)
	}
	return c
}

// targetsOf returns the campaign's target domain IDs in target order.
func targetsOf(t *testing.T, s *store.Store, c *keyport.Campaign) []int64 {
	t.Helper()
	ids, err := store.QueryStringsForTest(s, `SELECT domain_id FROM campaign_targets WHERE campaign_id = ? ORDER BY id`, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i], _ = strconv.ParseInt(id, 10, 64)
	}
	return out
}

// wantTargets fails unless got holds each of want once, in domain ID order.
func wantTargets(t *testing.T, what string, got []int64, want int) {
	t.Helper()
	if len(got) != want {
		t.Fatalf("%s: %d targets, want %d", what, len(got), want)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("%s: target %d is domain %d after domain %d: not once each in ID order", what, i, got[i], got[i-1])
		}
	}
}

// TestCampaignSelectionsTakeEachDomainOnceOverManyRanges: a batch's or a
// provider's domains are inserted a range of IDs a statement; across more
// ranges than one, each selected domain is a target once, in ID order, and
// nothing else is, in a transaction as outside one.
func TestCampaignSelectionsTakeEachDomainOnceOverManyRanges(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		b := createBatch(t, s, "b")
		other := createBatch(t, s, "other")
		p := createProvider(t, s, "a@example.com")
		q := createProvider(t, s, "q@example.com")
		importModules(t, s, b.ID, 1, 1300, 2)
		importModules(t, s, other.ID, 5001, 10, 2)
		// Claimed in b: every module but each seventh; the first 100
		// modules' domains are ASSIGNED, the rest PERSONALIZED. Provider
		// q owns the other batch's domains.
		for _, stmt := range []struct {
			q    string
			args []any
		}{
			{`UPDATE domains SET owner_id = ?, state = 'PERSONALIZED' WHERE module_id IN (SELECT id FROM modules WHERE batch_id = ?)`, []any{p.ID, b.ID}},
			{`UPDATE domains SET owner_id = NULL, state = 'UNASSIGNED' WHERE module_id % 7 = 0 AND module_id IN (SELECT id FROM modules WHERE batch_id = ?)`, []any{b.ID}},
			{`UPDATE domains SET state = 'ASSIGNED' WHERE owner_id IS NOT NULL AND module_id <= 100`, nil},
			{`UPDATE domains SET owner_id = ?, state = 'PERSONALIZED' WHERE module_id IN (SELECT id FROM modules WHERE batch_id = ?)`, []any{q.ID, other.ID}},
		} {
			if err := store.ExecForTest(s, stmt.q, stmt.args...); err != nil {
				t.Fatal(err)
			}
		}
		count := func(q string, args ...any) int {
			n, err := store.QueryStringsForTest(s, q, args...)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := strconv.Atoi(n[0])
			return v
		}
		claimed := count(`SELECT COUNT(*) FROM domains d JOIN modules m ON m.id = d.module_id WHERE m.batch_id = ? AND d.owner_id IS NOT NULL`, b.ID)
		personalized := count(`SELECT COUNT(*) FROM domains WHERE owner_id = ? AND state = 'PERSONALIZED'`, p.ID)
		if claimed < 2*1000 || personalized >= claimed {
			t.Fatalf("set-up: %d claimed, %d personalized", claimed, personalized)
		}

		c := newCampaign(t, s, "")
		n, err := s.AddCampaignBatchTargets(ctx, c.ID, b.ID, "")
		if err != nil || n != claimed {
			t.Fatalf("AddCampaignBatchTargets = %d, %v; want %d", n, err, claimed)
		}
		wantTargets(t, "batch", targetsOf(t, s, c), claimed)

		c = newCampaign(t, s, "")
		n, err = s.AddCampaignBatchTargets(ctx, c.ID, b.ID, testAID(2))
		if err != nil || n != claimed/2 {
			t.Fatalf("AddCampaignBatchTargets of one AID = %d, %v; want %d", n, err, claimed/2)
		}
		wantTargets(t, "batch, one AID", targetsOf(t, s, c), claimed/2)

		c = newCampaign(t, s, p.ID)
		n, err = s.AddCampaignProviderTargets(ctx, c.ID, p.ID, keyport.Personalized)
		if err != nil || n != personalized {
			t.Fatalf("AddCampaignProviderTargets = %d, %v; want %d", n, err, personalized)
		}
		wantTargets(t, "provider", targetsOf(t, s, c), personalized)

		c = newCampaign(t, s, p.ID)
		if err := s.Tx(ctx, func(tx keyport.Repo) error {
			n, err = tx.AddCampaignProviderTargets(ctx, c.ID, p.ID, keyport.Personalized)
			return err
		}); err != nil || n != personalized {
			t.Fatalf("AddCampaignProviderTargets in a transaction = %d, %v; want %d", n, err, personalized)
		}
		wantTargets(t, "provider, in a transaction", targetsOf(t, s, c), personalized)
	})
}
