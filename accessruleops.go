package keyport

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/keyport/keyport/gp"
)

// The issuer operations on the ARA-M (GPD SEAC; PROTOCOLS.md §4). Each runs
// in an SCP03 session opened on the ARA-M with the ISD keys (its associated
// SD): step 0 reads the refresh tag and sends the change; step 1 reads the
// tag again and every rule (GET DATA FF40), later steps the rest of the
// list (FF60). The card's read-back decides: a stored rule is ACTIVE only
// when the list shows it and the refresh tag changed; a deleted one is
// REMOVED only when the list no longer shows it.
const (
	OpStoreAccessRule         IssuerOp = "access-rule.store"
	OpDeleteAccessRule        IssuerOp = "access-rule.delete"
	OpRemoveDomainAccessRules IssuerOp = "access-rules.remove"
)

func init() {
	for _, op := range []IssuerOp{OpStoreAccessRule, OpDeleteAccessRule, OpRemoveDomainAccessRules} {
		RegisterIssuerOperation(op, decodeRuleOp)
	}
}

// ruleParams are an ARA-M operation's parameters: the rules it is about
// (keyport's IDs), the REF-AR-DO to store or delete (hex), or the AID whose
// rules all go.
type ruleParams struct {
	Rules []string `json:"rules,omitempty"`
	Rule  string   `json:"rule,omitempty"`
	AID   AID      `json:"aid,omitempty"`
}

type ruleOp struct {
	op   IssuerOp
	p    ruleParams
	rule gp.AccessRule
}

func decodeRuleOp(pl *IssuerPayload) (IssuerOperation, error) {
	o := &ruleOp{op: pl.Op}
	if err := json.Unmarshal(pl.Params, &o.p); err != nil {
		return nil, fmt.Errorf("keyport: %s params: %w", pl.Op, err)
	}
	switch pl.Op {
	case OpStoreAccessRule, OpDeleteAccessRule:
		b, err := hex.DecodeString(o.p.Rule)
		if err != nil {
			return nil, fmt.Errorf("keyport: %s rule: %w", pl.Op, err)
		}
		rs, err := gp.ParseAccessRules(b)
		if err != nil || len(rs) != 1 || len(rs[0].AID) < 5 || len(rs[0].DeviceAppID) == 0 {
			return nil, fmt.Errorf("keyport: %s: the rule is not one REF-AR-DO for an AID and an app", pl.Op)
		}
		o.rule = rs[0]
	case OpRemoveDomainAccessRules:
		if len(o.p.AID.Bytes()) < 5 {
			return nil, fmt.Errorf("keyport: %s: no AID", pl.Op)
		}
	}
	return o, nil
}

func (o *ruleOp) Target() []byte { return gp.ARAMAID }

// maxRulePages bounds the Get-Next commands of one script.
const maxRulePages = 32

func (o *ruleOp) change() gp.Command {
	switch o.op {
	case OpStoreAccessRule:
		return gp.StoreAccessRule(o.rule)
	case OpDeleteAccessRule:
		return gp.DeleteAccessRule(o.rule)
	}
	return gp.DeleteAccessRulesOf(o.p.AID.Bytes())
}

func (o *ruleOp) Commands(_ context.Context, _ *IssuerEnv, n int, prev [][]gp.Response) ([]gp.Command, error) {
	switch n {
	case 0:
		return []gp.Command{gp.GetData(gp.DataRefreshTag), o.change()}, nil
	case 1:
		return []gp.Command{gp.GetData(gp.DataRefreshTag), gp.GetData(gp.DataAccessRulesAll)}, nil
	}
	rb := readRules(prev)
	if rb.err != nil || rb.page == 0 {
		return nil, fmt.Errorf("keyport: %s: no rule list to continue", o.op)
	}
	k := min((rb.total-len(rb.all)+rb.page-1)/rb.page, maxRulePages)
	cmds := make([]gp.Command, max(k, 1))
	for i := range cmds {
		cmds[i] = gp.GetData(gp.DataAccessRulesNext)
	}
	return cmds, nil
}

// ruleList is the read-back so far: the FF40 object's bytes, its size,
// the size of its first page, and the refresh tag read with it.
type ruleList struct {
	all         []byte
	total, page int
	tag         []byte
	empty       bool // 6A88: no rules
	err         error
}

func readRules(steps [][]gp.Response) ruleList {
	var rl ruleList
	if len(steps) < 2 || len(steps[1]) < 2 {
		rl.err = fmt.Errorf("the read-back is incomplete")
		return rl
	}
	rl.tag = refreshTag(steps[1][0])
	first := steps[1][1]
	if first.SW == gp.SWReferencedDataNotFound {
		rl.empty = true
		return rl
	}
	rl.all = bytes.Clone(first.Data)
	rl.page = len(first.Data)
	if rl.total, rl.err = gp.AccessRulesSize(rl.all); rl.err != nil {
		return rl
	}
	for _, st := range steps[2:] {
		for _, r := range st {
			rl.all = append(rl.all, r.Data...)
		}
	}
	return rl
}

func refreshTag(r gp.Response) []byte {
	t, rest, err := gp.ParseTLV(r.Data)
	if r.SW != gp.SWOK || err != nil || len(rest) != 0 || t.Tag != 0xDF20 || len(t.Value) != 8 {
		return nil
	}
	return t.Value
}

func (o *ruleOp) Judge(_ *IssuerEnv, n int, answers [][]gp.Response) IssuerVerdict {
	step := answers[n]
	if n == 0 {
		if len(step) == 0 || refreshTag(step[0]) == nil {
			if v, failed := FirstError(nil, step); failed {
				return v
			}
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the ARA-M gave no refresh tag (GET DATA DF20)"}
		}
		if len(step) < 2 {
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the module did not run the STORE DATA"}
		}
		if o.tolerated(step[1].SW) {
			return IssuerVerdict{Outcome: IssuerContinue}
		}
		if v, failed := FirstError([]gp.Command{gp.GetData(gp.DataRefreshTag), o.change()}, step); failed {
			return v
		}
		return IssuerVerdict{Outcome: IssuerContinue}
	}
	for _, r := range step {
		if r.SW != gp.SWOK && !(n == 1 && r.SW == gp.SWReferencedDataNotFound) {
			v, _ := FirstError(nil, []gp.Response{r})
			v.Cause = "the read-back failed: " + v.Cause
			return v
		}
	}
	rl := readRules(answers)
	if rl.err != nil {
		return IssuerVerdict{Outcome: IssuerFailed, Cause: "the ARA-M's rule list: " + rl.err.Error()}
	}
	if !rl.empty && len(rl.all) < rl.total {
		if n > 2+MaxAccessRuleSteps {
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the ARA-M's rule list does not end"}
		}
		return IssuerVerdict{Outcome: IssuerContinue}
	}
	var rules []gp.AccessRule
	if !rl.empty {
		if len(rl.all) != rl.total {
			return IssuerVerdict{Outcome: IssuerFailed, Cause: fmt.Sprintf("the ARA-M sent %d bytes of rules, announced %d", len(rl.all), rl.total)}
		}
		var err error
		if rules, err = gp.ParseAccessRules(rl.all); err != nil {
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the ARA-M's rule list does not parse: " + err.Error()}
		}
	}
	changed := !bytes.Equal(refreshTag(answers[0][0]), rl.tag)
	applied := answers[0][1].SW == gp.SWOK
	switch o.op {
	case OpStoreAccessRule:
		want := o.rule.Bytes()
		found := false
		for _, r := range rules {
			found = found || bytes.Equal(r.Bytes(), want)
		}
		switch {
		case !found:
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the card's read-back does not show the rule"}
		case applied && !changed:
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the ARA-M's refresh tag did not change: handsets would not re-read the rules"}
		}
	case OpDeleteAccessRule:
		ref := o.rule.RefDO()
		for _, r := range rules {
			if bytes.Equal(r.RefDO(), ref) {
				return IssuerVerdict{Outcome: IssuerFailed, Cause: "the card's read-back still shows the rule"}
			}
		}
		if applied && !changed {
			return IssuerVerdict{Outcome: IssuerFailed, Cause: "the ARA-M's refresh tag did not change: handsets would keep the rule"}
		}
	default:
		aid := o.p.AID.Bytes()
		for _, r := range rules {
			if bytes.Equal(r.AID, aid) {
				return IssuerVerdict{Outcome: IssuerFailed, Cause: "the card's read-back still shows a rule for the AID"}
			}
		}
	}
	return IssuerVerdict{Outcome: IssuerDone}
}

// MaxAccessRuleSteps bounds the Get-Next scripts of one read-back.
const MaxAccessRuleSteps = 16

// tolerated reports a change's status word that the read-back judges
// instead: 6A89 (the rule exists, from an earlier run of the dialog) for a
// store, 6A88 (no such rule) for a delete.
func (o *ruleOp) tolerated(sw gp.SW) bool {
	if o.op == OpStoreAccessRule {
		return sw == 0x6A89
	}
	return sw == gp.SWReferencedDataNotFound
}

func (o *ruleOp) ruleIDs(ctx context.Context, tx Repo, env *IssuerEnv) ([]string, error) {
	if o.op != OpRemoveDomainAccessRules {
		return o.p.Rules, nil
	}
	rules, err := tx.ListAccessRules(ctx, env.Job.DomainID)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, r := range rules {
		ids = append(ids, r.ID)
	}
	return ids, nil
}

func (o *ruleOp) Queued(ctx context.Context, tx Repo, env *IssuerEnv) error {
	to := RuleDeleting
	if o.op == OpStoreAccessRule {
		to = RulePending
	}
	ids, err := o.ruleIDs(ctx, tx, env)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if _, err := tx.SetAccessRuleState(ctx, id, "", to, env.Job.Ref, "", ""); err != nil {
			return err
		}
	}
	return nil
}

func (o *ruleOp) Finish(ctx context.Context, tx Repo, env *IssuerEnv, v IssuerVerdict) (DomainState, error) {
	ids := o.p.Rules
	if o.op == OpRemoveDomainAccessRules {
		rules, err := tx.ListAccessRules(ctx, env.Job.DomainID)
		if err != nil {
			return "", err
		}
		ids = nil
		for _, r := range rules {
			ids = append(ids, r.ID)
		}
	}
	to, cause := RuleActive, ""
	switch {
	case v.Outcome != IssuerDone && o.op == OpStoreAccessRule:
		to, cause = RuleFailed, v.Cause
	case v.Outcome != IssuerDone:
		to, cause = RuleFailed, "delete failed, the card may still hold the rule: "+v.Cause
	case o.op != OpStoreAccessRule:
		to = RuleRemoved
	}
	for _, id := range ids {
		// Only the rules this job last changed: a later delete wins.
		if _, err := tx.SetAccessRuleState(ctx, id, env.Job.Ref, to, env.Job.Ref, cause, v.SW); err != nil {
			return "", err
		}
	}
	if env.Job.DomainID == 0 {
		return "", nil
	}
	d, err := tx.GetDomain(ctx, env.Payload.EID, env.Payload.AID)
	if err != nil {
		return "", err
	}
	return d.State, nil
}
