package store_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/store/storetest"
)

func TestAccessRulesAreOnePerAppAndDomainUntilRemovedAndChangeOnlyForTheirJob(t *testing.T) {
	storetest.Each(t, func(t *testing.T, s *store.Store) {
		m := jobModule(t, s, 1)
		d := m.Domains[0]
		yes := true
		rule := func(id string) *keyport.AccessRule {
			return &keyport.AccessRule{ID: id, DomainID: d.ID, ProviderID: "prv_x", EID: d.EID, AID: d.AID, HashAlg: "sha256",
				Hash: strings.Repeat("AB", 32), APDU: keyport.APDUAlways, NFC: &yes, State: keyport.RulePending, JobRef: "job_1"}
		}
		if err := s.CreateAccessRule(ctx, rule("acr_1")); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateAccessRule(ctx, rule("acr_2")); !errors.Is(err, keyport.ErrConflict) {
			t.Fatalf("a second live rule for the same app: %v", err)
		}
		got, err := s.GetAccessRule(ctx, "acr_1")
		if err != nil || got.NFC == nil || !*got.NFC || got.Hash != strings.Repeat("AB", 32) || got.State != keyport.RulePending {
			t.Fatalf("get %+v %v", got, err)
		}
		// A later job took the rule over: the earlier job's end changes nothing.
		if ok, err := s.SetAccessRuleState(ctx, "acr_1", "", keyport.RuleDeleting, "job_2", "", ""); !ok || err != nil {
			t.Fatalf("delete queued: %v %v", ok, err)
		}
		if ok, _ := s.SetAccessRuleState(ctx, "acr_1", "job_1", keyport.RuleActive, "job_1", "", ""); ok {
			t.Fatal("the store job's end overwrote the delete")
		}
		if ok, _ := s.SetAccessRuleState(ctx, "acr_1", "job_2", keyport.RuleRemoved, "job_2", "", ""); !ok {
			t.Fatal("the delete job's end did not remove the rule")
		}
		if ok, _ := s.SetAccessRuleState(ctx, "acr_1", "", keyport.RuleActive, "job_3", "", ""); ok {
			t.Fatal("a REMOVED rule came back")
		}
		if rules, _ := s.ListAccessRules(ctx, d.ID); len(rules) != 0 {
			t.Fatalf("REMOVED rules listed: %+v", rules)
		}
		if err := s.CreateAccessRule(ctx, rule("acr_2")); err != nil {
			t.Fatalf("a new rule for the app after removal: %v", err)
		}
		if rules, _ := s.ListAccessRules(ctx, d.ID); len(rules) != 1 || rules[0].ID != "acr_2" {
			t.Fatalf("list %+v", rules)
		}
		if _, err := s.GetAccessRule(ctx, "acr_nope"); !errors.Is(err, keyport.ErrNotFound) {
			t.Fatalf("unknown rule: %v", err)
		}
	})
}
