package keyport

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/keyport/keyport/gp"
)

// OpRelease is the issuer operation of a release (DESIGN.md flow 10): under
// the ISD keys, delete the SSD with its content, create it again with the
// same AID and the privileges and parameters personalization gives it, and
// load a fresh first key set (generated in the HSM when the release was
// asked for), confirmed by GET STATUS read-back. Its end queues the proof
// (releaseVerify): an SCP03 session keyport computes in the HSM with the
// new first keys. Only the card's answer to that moves the domain
// RELEASING → UNASSIGNED.
const OpRelease IssuerOp = "domain.release"

// SSD creation as personalization does it (DESIGN.md flow 1, PROTOCOLS.md
// §7.1): SD + AM, SCP03 i=70, the GP SSD package and module.
var (
	SSDPrivileges = gp.PrivSecurityDomain | gp.PrivAuthorizedManagement
	ssdLoadFile   = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50}
	ssdModule     = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41}
)

// releaseParams are a release job's parameters: the domain, its batch, and
// the new first keys as the HSM returned them (KWP blobs under the batch
// KEK, never clear) with their KCVs. A retry reuses them, so every run of
// the dialog loads the same keys.
type releaseParams struct {
	AID     AID                 `json:"aid"`
	Batch   string              `json:"batch"`
	Wrapped KeyBlobs            `json:"wrapped"`
	KCV     map[KeyUsage]string `json:"kcv"`
	By      string              `json:"by"`
}

type releaseOp struct{ p releaseParams }

func init() {
	RegisterIssuerOperation(OpRelease, func(pl *IssuerPayload) (IssuerOperation, error) {
		var p releaseParams
		if err := json.Unmarshal(pl.Params, &p); err != nil || p.AID == "" || p.Batch == "" || !p.Wrapped.Complete() {
			return nil, fmt.Errorf("keyport: %s job: bad parameters", pl.Op)
		}
		return releaseOp{p}, nil
	})
}

// ReleaseEncrypted is one new first key encrypted under the ISD DEK, as
// STORE DATA DGI 8113 carries it, with its KCV.
type ReleaseEncrypted struct {
	Cipher []byte
	KCV    []byte
}

// ReleaseCommands is step n of a release of SSD aid (the pure half of the
// operation), given the plain answers of the steps before and the new first
// keys encrypted under the ISD DEK (keys, in Usages order; step 1 only):
//
//	step 0: GET STATUS of the SSD (6A88: it is gone already)
//	step 1: DELETE of the SSD and its content (if step 0 found it),
//	        INSTALL [for install and make selectable] with the same AID,
//	        SD+AM and C9{81 02 03 70}, INSTALL [for personalization],
//	        STORE DATA DGI 00B9/8113 of the new key set at KVN 30
//	step 2: GET STATUS of the SSD (read-back)
//
// Run again after a break, it deletes what the run before created and
// creates it again with the same keys: the end state is the same.
func ReleaseCommands(aid AID, n int, prev [][]gp.Response, keys []ReleaseEncrypted) ([]gp.Command, error) {
	read := gp.GetStatus(gp.StatusApplications, false, aid.Bytes())
	switch n {
	case 0, 2:
		return []gp.Command{read}, nil
	case 1:
	default:
		return nil, fmt.Errorf("keyport: release has no step %d", n)
	}
	if len(keys) != len(Usages) {
		return nil, fmt.Errorf("keyport: release needs %d keys, has %d", len(Usages), len(keys))
	}
	var cmds []gp.Command
	if len(prev) > 0 && len(prev[0]) > 0 && prev[0][0].SW == gp.SWOK {
		cmds = append(cmds, gp.Delete(aid.Bytes(), true))
	}
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	cmds = append(cmds, gp.InstallForInstallCmd(ssdLoadFile, ssdModule, aid.Bytes(), SSDPrivileges, params, true),
		gp.InstallForPersonalizationCmd(aid.Bytes()))
	usage := []byte{gp.KeyUsageENC, gp.KeyUsageMAC, gp.KeyUsageDEK}
	var loads []gp.KeyLoad
	for i, k := range keys {
		loads = append(loads, gp.KeyLoad{Usage: usage[i], Type: gp.KeyTypeAES, Length: 16, KID: byte(i + 1), KVN: FirstKVN,
			KCV: k.KCV, Encrypted: k.Cipher})
	}
	return append(cmds, gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 0, gp.KeyLoadDGIs(loads))), nil
}

// JudgeRelease judges the plain answers of ReleaseCommands' steps 0..n:
// step 0 may find the SSD or not (6A88); step 1 must answer 9000 to every
// command; the read-back of step 2 must list the SSD SELECTABLE with SD+AM.
// Any other error status word fails the job with it.
func JudgeRelease(aid AID, n int, answers [][]gp.Response) IssuerVerdict {
	step := answers[n]
	if n == 0 && len(step) == 1 && step[0].SW == gp.SWReferencedDataNotFound {
		return IssuerVerdict{Outcome: IssuerContinue}
	}
	if v, failed := FirstError(releaseNames(n, answers), step); failed {
		return v
	}
	switch n {
	case 0:
		if _, err := registryEntry(aid, step); err != nil {
			return IssuerVerdict{Outcome: IssuerFailed, Cause: err.Error()}
		}
		return IssuerVerdict{Outcome: IssuerContinue}
	case 1:
		return IssuerVerdict{Outcome: IssuerContinue}
	}
	e, err := registryEntry(aid, step)
	if err != nil {
		return IssuerVerdict{Outcome: IssuerFailed, Cause: "read-back after the release: " + err.Error()}
	}
	if e.LifeCycle != gp.LifeCycleSelectable || e.Privileges != SSDPrivileges {
		return IssuerVerdict{Outcome: IssuerFailed, Cause: fmt.Sprintf("read-back shows the new SSD %s with privileges %s, want SELECTABLE with %s",
			e.LifeCycle, e.Privileges, SSDPrivileges)}
	}
	return IssuerVerdict{Outcome: IssuerDone}
}

// releaseNames are step n's commands for the names in a failure's cause.
func releaseNames(n int, answers [][]gp.Response) []gp.Command {
	if n != 1 {
		return []gp.Command{{INS: gp.INSGetStatus}}
	}
	var out []gp.Command
	if len(answers[0]) > 0 && answers[0][0].SW == gp.SWOK {
		out = append(out, gp.Command{INS: gp.INSDelete})
	}
	return append(out, gp.Command{INS: gp.INSInstall}, gp.Command{INS: gp.INSInstall}, gp.Command{INS: gp.INSStoreData})
}

func (releaseOp) Target() []byte { return nil }

func (o releaseOp) Commands(ctx context.Context, env *IssuerEnv, n int, prev [][]gp.Response) ([]gp.Command, error) {
	var keys []ReleaseEncrypted
	if n == 1 {
		pc, ok := env.Service.Custody.(PersoCustody)
		if !ok {
			return nil, fmt.Errorf("%w: the HSM custody cannot encrypt keys for the card", ErrUnavailable)
		}
		for _, u := range Usages {
			ct, kcvHex, err := pc.EncryptUnderKey(ctx, env.ISDKey(UsageDEK), FirstKey(o.p.Batch, env.Payload.EID, o.p.AID, u, o.p.Wrapped[u]))
			if err != nil {
				return nil, err
			}
			kcv, err := hex.DecodeString(kcvHex)
			if err != nil || len(kcv) != 3 || len(ct) != 16 || !strings.EqualFold(kcvHex, o.p.KCV[u]) {
				return nil, fmt.Errorf("keyport: the HSM returned a %d-byte encrypted %s key with KCV %q, want %s", len(ct), u, kcvHex, o.p.KCV[u])
			}
			keys = append(keys, ReleaseEncrypted{Cipher: ct, KCV: kcv})
		}
	}
	return ReleaseCommands(o.p.AID, n, prev, keys)
}

func (o releaseOp) Judge(_ *IssuerEnv, n int, answers [][]gp.Response) IssuerVerdict {
	return JudgeRelease(o.p.AID, n, answers)
}

func (releaseOp) Queued(context.Context, Repo, *IssuerEnv) error { return nil }

// Finish: when the card confirmed the new SSD, the domain takes the new
// first keys (KVN 30, counter 0) and the proof job is queued; the domain
// stays RELEASING either way (a failed job's cause says why), and the
// admin retries (RetryRelease).
func (o releaseOp) Finish(ctx context.Context, tx Repo, env *IssuerEnv, v IssuerVerdict) (DomainState, error) {
	d, err := tx.GetDomain(ctx, env.Payload.EID, o.p.AID)
	if err != nil {
		return "", err
	}
	if v.Outcome != IssuerDone || d.State != Releasing {
		return d.State, nil
	}
	if err := tx.SetDomainWrapped(ctx, d.ID, KeyGenerated, o.p.Wrapped); err != nil {
		return "", err
	}
	if err := tx.SetDomainKeys(ctx, d.ID, int(FirstKVN), o.p.KCV, 0); err != nil {
		return "", err
	}
	d.KeySource, d.Wrapped, d.KVN, d.KCV, d.SeqCounter = KeyGenerated, o.p.Wrapped, int(FirstKVN), o.p.KCV, 0
	payload, err := env.Service.releaseVerifyScript(ctx, o.p.Batch, d)
	if err != nil {
		return "", err
	}
	now := env.Service.now().UTC()
	exp := now.Add(env.Service.Delivery.expiry())
	j := &Job{Ref: NewID("job"), Kind: JobSecondKey, DomainID: d.ID, ModuleID: d.ModuleID, ProviderID: d.OwnerID,
		State: JobQueued, NextRunAt: now, ExpiresAt: &exp, SecondKey: payload}
	if err := tx.CreateJob(ctx, j); err != nil {
		return "", err
	}
	if err := env.Service.audit(ctx, tx, "system", "release.verify-queued", domainObject(d.EID, d.AID), map[string]any{"job": j.Ref, "release_job": env.Job.Ref}); err != nil {
		return "", err
	}
	return Releasing, nil
}

// releaseVerifyScript precomputes the proof of a release: an SCP03 session
// with the new SSD under its new first keys, whose CMACs the HSM computes
// (the new SSD's counter is 0, so the card uses 1; i=70), at level 13, and
// GET DATA of the key information template, wrapped. JudgeVerify checks
// the card's answer under the same keys.
func (s *Service) releaseVerifyScript(ctx context.Context, batch string, d *Domain) (*SecondKeyPayload, error) {
	ks := gp.KeySet{KVN: FirstKVN, ENC: StaticKey(ctx, s.Custody, FirstKey(batch, d.EID, d.AID, UsageENC, d.Wrapped[UsageENC])),
		MAC: StaticKey(ctx, s.Custody, FirstKey(batch, d.EID, d.AID, UsageMAC, d.Wrapped[UsageMAC]))}
	hs, err := gp.NewHostSession(ks, nil)
	if err != nil {
		return nil, err
	}
	iu := hs.InitializeUpdate()
	if _, err := hs.Precompute(uint32(d.SeqCounter+1), d.AID.Bytes(), scp03I); err != nil {
		return nil, err
	}
	ea, err := hs.ExternalAuthenticate(gp.LevelCMAC | gp.LevelCDEC | gp.LevelRMAC)
	if err != nil {
		return nil, err
	}
	gd, err := hs.Wrap(gp.GetData(gp.DataKeyInformation))
	if err != nil {
		return nil, err
	}
	return &SecondKeyPayload{EID: d.EID, AID: d.AID, PutKey: -1, InitUpdate: 0, Verify: true, APDUs: apduHex([]gp.Command{iu, ea, gd}),
		Expect: Expectation{KVN: int(FirstKVN), KCV: d.KCV}}, nil
}

// JudgeVerify decides whether the card proved a release: the answer is the
// card's own under the new first keys (card cryptogram, card challenge for
// the card's counter, R-MACs: gp.CheckAnswers), every command answered
// 9000, and the key information lists key set 30 with its three keys.
func (p *SecondKeyPayload) JudgeVerify(status string, body []byte, keys gp.KeySet) (ScriptResult, error) {
	r := ScriptResult{ScriptStatus: status}
	if status != "ok" {
		return notRun(status, body), nil
	}
	a, ok, err := p.provenAnswer(&r, body, keys, "the new first keys")
	if !ok {
		return r, err
	}
	if len(a.answers) > 0 && a.answers[0].SW == gp.SWOK {
		r.SequenceCounter = LearnCounter(a.cmds, a.resps)
	}
	if !allRan(&r, a.cmds, a.answers) {
		return r, nil
	}
	ki, err := gp.ParseKeyInformation(a.answers[len(a.answers)-1].Data)
	n := 0
	for _, k := range ki {
		if k.KVN == FirstKVN {
			n++
		}
	}
	if err != nil || n != len(Usages) {
		r.Cause = fmt.Sprintf("the key information does not list the first key set (KVN %02X, %d keys): %v", FirstKVN, n, err)
		return r, nil
	}
	r.Confirmed = true
	return r, nil
}

// RequestRelease starts the release of domain eid/aid (flow 10): its
// provider (of its own domain; others' are ErrNotFound) or an issuer admin
// asks; new first keys are generated in the HSM; the domain goes
// ASSIGNED/PERSONALIZED → RELEASING and the release job is queued, in one
// transaction. ErrConflict for a domain in another state, one with an
// issuer job pending, or a module keyport holds no ISD keys of (imported);
// nothing is stored then.
func (s *Service) RequestRelease(ctx context.Context, p Principal, eid EID, aid AID) (*Job, error) {
	d, by, err := s.domainForCardChange(ctx, p, eid, aid)
	if err != nil {
		return nil, err
	}
	if _, err := Next(d.State, EventRelease, ""); err != nil {
		return nil, err
	}
	params, err := s.newReleaseKeys(ctx, d)
	if err != nil {
		return nil, err
	}
	params.By = by
	check := func(ctx context.Context, tx Repo) error {
		cur, err := tx.GetDomain(ctx, eid, aid)
		if err != nil {
			return err
		}
		if !p.Admin && cur.OwnerID != p.ProviderID {
			return ErrNotFound
		}
		if err := noPendingIssuerJob(ctx, tx, cur); err != nil {
			return err
		}
		return tx.TransitionDomain(ctx, cur.ID, From(EventRelease), Releasing, nil)
	}
	j, err := s.QueueIssuerJob(ctx, IssuerJobRequest{EID: eid, Domain: d, Op: OpRelease, Params: params,
		Actor: p.Actor(), Action: "domain.release.request", In: check})
	if err != nil {
		return nil, err
	}
	return j, s.removeRulesForRelease(ctx, p, d)
}

// removeRulesForRelease queues the removal of the owner's access rules
// after a release job (the module runs its jobs in order: the SSD is
// re-created, the rules of its AID deleted, then the proof runs). The
// proof does not free the domain unless that removal is DONE
// (releaseRulesRemoved); if queueing it fails, the release goes on and
// its proof fails, and the admin's retry queues both again.
func (s *Service) removeRulesForRelease(ctx context.Context, p Principal, d *Domain) error {
	if _, err := s.RemoveDomainAccessRules(ctx, p.Actor(), d); err != nil {
		return fmt.Errorf("keyport: release queued, but not the removal of the access rules (retry the release): %w", err)
	}
	return nil
}

// releaseRulesRemoved says why domain d may not be freed yet, "" when it
// may: a removal of its access rules queued after its last release job
// must be DONE.
func releaseRulesRemoved(ctx context.Context, repo Repo, d *Domain) (string, error) {
	jobs, err := issuerJobs(ctx, repo, d.ID)
	if err != nil {
		return "", err
	}
	last := -1
	for i, j := range jobs {
		if j.Issuer != nil && j.Issuer.Op == OpRelease {
			last = i
		}
	}
	state := "not queued"
	for _, j := range jobs[last+1:] {
		if j.Issuer != nil && j.Issuer.Op == OpRemoveDomainAccessRules {
			if j.State == JobDone {
				return "", nil
			}
			state = fmt.Sprintf("job %s is %s", j.Ref, j.State)
		}
	}
	return "the owner's access rules were not removed (" + state + "): the admin retries the release", nil
}

// newReleaseKeys generates a release's new first keys in the HSM.
func (s *Service) newReleaseKeys(ctx context.Context, d *Domain) (releaseParams, error) {
	m, err := s.Store.GetModule(ctx, d.EID)
	if err != nil {
		return releaseParams{}, err
	}
	if !m.ISDKeys.Complete() {
		return releaseParams{}, ErrNoISDKeys
	}
	b, err := s.batch(ctx, d.BatchID)
	if err != nil {
		return releaseParams{}, err
	}
	pc, ok := s.Custody.(PersoCustody)
	if !ok {
		return releaseParams{}, fmt.Errorf("%w: the HSM custody cannot generate card keys", ErrUnavailable)
	}
	gen, err := pc.GenerateKeys(ctx, b.Name, nil)
	if err != nil {
		return releaseParams{}, err
	}
	out := releaseParams{AID: d.AID, Batch: b.Name, Wrapped: KeyBlobs{}, KCV: map[KeyUsage]string{}}
	for _, g := range gen {
		out.Wrapped[g.Usage], out.KCV[g.Usage] = g.Wrapped, strings.ToUpper(g.KCV)
	}
	if !out.Wrapped.Complete() {
		return releaseParams{}, fmt.Errorf("keyport: the HSM generated an incomplete key set")
	}
	return out, nil
}

// RetryRelease queues the release of a RELEASING domain again (issuer
// admins): after a failed release job or a failed proof, with the keys of
// the last release job, so that every run loads the same keys.
// ErrConflict when the domain is not RELEASING or a job for it is pending.
func (s *Service) RetryRelease(ctx context.Context, p Principal, eid EID, aid AID) (*Job, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if d.State != Releasing {
		return nil, fmt.Errorf("%w: domain is %s; only a RELEASING domain's release is retried", ErrConflict, d.State)
	}
	jobs, err := issuerJobs(ctx, s.Store, d.ID)
	if err != nil {
		return nil, err
	}
	var params *releaseParams
	for i := len(jobs) - 1; i >= 0 && params == nil; i-- {
		if pl := jobs[i].Issuer; pl != nil && pl.Op == OpRelease {
			var rp releaseParams
			if err := json.Unmarshal(pl.Params, &rp); err != nil {
				return nil, err
			}
			params = &rp
		}
	}
	if params == nil {
		return nil, fmt.Errorf("%w: no release job for this domain", ErrConflict)
	}
	check := func(ctx context.Context, tx Repo) error {
		cur, err := tx.GetDomain(ctx, eid, aid)
		if err != nil {
			return err
		}
		if cur.State != Releasing {
			return fmt.Errorf("%w: domain is %s", ErrConflict, cur.State)
		}
		if err := noPendingIssuerJob(ctx, tx, cur); err != nil {
			return err
		}
		pending, err := tx.ListJobs(ctx, JobFilter{DomainID: cur.ID, Kind: JobSecondKey, States: []JobState{JobQueued, JobSent}, Limit: 1})
		if err != nil {
			return err
		}
		if len(pending) > 0 {
			return fmt.Errorf("%w: job %s for this domain is still %s", ErrConflict, pending[0].Ref, pending[0].State)
		}
		return nil
	}
	j, err := s.QueueIssuerJob(ctx, IssuerJobRequest{EID: eid, Domain: d, Op: OpRelease, Params: params,
		Actor: p.Actor(), Action: "domain.release.retry", In: check})
	if err != nil {
		return nil, err
	}
	return j, s.removeRulesForRelease(ctx, p, d)
}
