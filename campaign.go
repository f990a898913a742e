package keyport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// A campaign runs one operation over many domains: an issuer admin's over
// any module (by batch or by an EID list), a provider's over its own
// domains only (by EID list, all its PERSONALIZED domains, or one
// pre-built script per domain). Its targets are rows of their own
// (CampaignRepo), so a campaign over 100,000 modules holds one page of
// them in memory at a time; the runner (CampaignRunner) queues one job per
// target through the same use case the single-domain API calls, at the
// campaign's rate and never past its cap of pending jobs per module.
type CampaignOp string

// The operations a campaign runs.
const (
	CampaignLock       CampaignOp = "lock"
	CampaignUnlock     CampaignOp = "unlock"
	CampaignRelease    CampaignOp = "release"
	CampaignRuleAdd    CampaignOp = "access-rule.add"
	CampaignRuleRemove CampaignOp = "access-rule.remove"
	CampaignRotation   CampaignOp = "rotation-script"
	CampaignData       CampaignOp = "data-script"
)

// CampaignOps are the operations, in the order the API lists them.
var CampaignOps = []CampaignOp{CampaignLock, CampaignUnlock, CampaignRelease, CampaignRuleAdd, CampaignRuleRemove,
	CampaignRotation, CampaignData}

// Scripted reports whether op takes one pre-built script per domain (an
// NDJSON upload) instead of a target selection.
func (op CampaignOp) Scripted() bool { return op == CampaignRotation || op == CampaignData }

// ProviderOnly reports whether only a domain's provider may run op.
func (op CampaignOp) ProviderOnly() bool {
	return op == CampaignRuleAdd || op == CampaignRuleRemove || op.Scripted()
}

func (op CampaignOp) known() bool {
	for _, o := range CampaignOps {
		if o == op {
			return true
		}
	}
	return false
}

// CampaignState is where a campaign stands.
//
//	CREATING --targets stored--> RUNNING
//	RUNNING <--pause/resume--> PAUSED
//	RUNNING --every target ended--> FINISHED
//	RUNNING|PAUSED --cancel--> CANCELLED
type CampaignState string

// The campaign states.
const (
	// CampaignCreating: CreateCampaign is still storing its targets. No
	// one sees it, and the runner leaves it alone; one whose creation died
	// with its process is deleted by the runner (CampaignCreateTimeout).
	CampaignCreating  CampaignState = "CREATING"
	CampaignRunning   CampaignState = "RUNNING"
	CampaignPaused    CampaignState = "PAUSED"
	CampaignCancelled CampaignState = "CANCELLED"
	CampaignFinished  CampaignState = "FINISHED"
)

// TargetState is where one target of a campaign stands.
type TargetState string

// The target states. PENDING targets wait for the runner; QUEUED ones have
// a job, and take its end (DONE, FAILED; CANCELLED) when the runner sees
// it; REFUSED ones were refused by the use case (Cause says why: another
// provider's domain, a conflict, an imported module); SKIPPED ones were
// not queued (their module was busy and the campaign skips busy modules,
// or there was nothing to do).
const (
	TargetPending   TargetState = "PENDING"
	TargetQueued    TargetState = "QUEUED"
	TargetDone      TargetState = "DONE"
	TargetFailed    TargetState = "FAILED"
	TargetRefused   TargetState = "REFUSED"
	TargetSkipped   TargetState = "SKIPPED"
	TargetCancelled TargetState = "CANCELLED"
)

// TargetStates are the target states in the order progress lists them.
var TargetStates = []TargetState{TargetPending, TargetQueued, TargetDone, TargetFailed, TargetRefused, TargetSkipped, TargetCancelled}

// Causes of targets that were not queued.
const (
	CauseNotYours   = "not yours"
	CauseUnknown    = "unknown module or domain"
	CauseModuleBusy = "module busy"
	CauseNothing    = "nothing to do"
	CauseCancelled  = "campaign cancelled"
)

// Busy policies: what the runner does with a target whose module has
// ModuleCap pending card jobs already.
const (
	BusyWait = "wait" // leave it PENDING and come back to it
	BusySkip = "skip" // SKIPPED, cause "module busy"
)

// Campaign bounds.
const (
	MaxCampaignTargets  = 100_000 // EID list entries or script lines of one campaign
	MaxCampaignRate     = 1000    // jobs queued per second
	DefaultCampaignRate = 50
	MaxCampaignBody     = 8 << 20   // a JSON request (an EID list)
	MaxCampaignUpload   = 128 << 20 // an NDJSON upload, spooled, then read as a stream
	MaxCampaignLine     = 64 << 10
)

// Campaign is one operation over many domains.
type Campaign struct {
	ID string
	// ProviderID is the provider that runs it; "" for the issuer's.
	ProviderID string
	Op         CampaignOp
	// Params are the operation's parameters (an access rule's request);
	// scripts are per target.
	Params json.RawMessage
	State  CampaignState
	// Rate is the most jobs queued per second.
	Rate int
	// ModuleCap is the most card jobs pending (QUEUED or SENT) on one
	// module that the campaign queues to; Busy says what happens at it.
	ModuleCap int
	Busy      string
	// Actor and ActorName are who made it (the audit actor, and the
	// principal's name, with which the runner queues its jobs).
	Actor, ActorName string
	Total            int
	// LeaseHolder and LeaseUntil are the runner that works it now.
	LeaseHolder string
	LeaseUntil  *time.Time
	CreatedAt   time.Time
	UpdatedAt   time.Time
	FinishedAt  *time.Time
}

// CampaignTarget is one domain of a campaign (one row).
type CampaignTarget struct {
	ID         int64
	CampaignID string
	// DomainID and ModuleID are 0 for a target refused at creation (an
	// EID that names no domain of the caller's).
	DomainID, ModuleID int64
	EID                EID
	AID                AID
	State              TargetState
	JobID              int64
	JobRef             string
	// Cause groups the failure report: the job's failure SW ("SW 6982"),
	// or an error class ("not yours", "conflict", "expired").
	Cause string
	// Detail is one example of the cause in words.
	Detail string
	// Params is the target's own script (scripted operations), JSON.
	Params string
}

// CampaignEnd is a QUEUED target whose job has ended.
type CampaignEnd struct {
	TargetID  int64
	JobState  JobState
	Result    *ScriptResult
	LastError string
}

// CampaignCause is one line of the failure report.
type CampaignCause struct {
	State  TargetState `json:"state"`
	Cause  string      `json:"cause"`
	Count  int         `json:"count"`
	Detail string      `json:"example,omitempty"`
}

// CampaignRepo stores campaigns and their targets.
// (Declared in ports.go.)

// CampaignRequest is the body of POST /api/v1/campaigns (and its admin
// twin), or the query of an NDJSON upload.
type CampaignRequest struct {
	Op        CampaignOp      `json:"op"`
	Rate      int             `json:"rate,omitempty"`
	ModuleCap int             `json:"module_cap,omitempty"`
	Busy      string          `json:"busy,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Targets   CampaignTargets `json:"targets"`
}

// CampaignTargets selects a campaign's domains: exactly one of Batch
// (issuer only), EIDs ("EID" for every domain of the module the caller may
// act on, "EID/AID" for one) or AllPersonalized (providers: every one of
// its PERSONALIZED domains). AID, with Batch, keeps one AID of each module.
type CampaignTargets struct {
	Batch           string   `json:"batch,omitempty"`
	AID             AID      `json:"aid,omitempty"`
	EIDs            []string `json:"eids,omitempty"`
	AllPersonalized bool     `json:"all_personalized,omitempty"`
}

// CampaignScript is one line of a scripted campaign's NDJSON upload: the
// domain and its script, as the single-script APIs take it (rotation:
// apdus and expect; data: apdus).
type CampaignScript struct {
	EID    EID         `json:"eid"`
	AID    AID         `json:"aid"`
	APDUs  []string    `json:"apdus"`
	Expect Expectation `json:"expect"`
}

// ParseCampaignRequest decodes and checks a create body (JSON, no unknown
// fields): a known operation, rate, cap and busy policy in range, one
// target selection, at most MaxCampaignTargets EIDs each well formed.
// Scripted operations take their targets from an upload (ParseCampaignScripts)
// and no selection.
func ParseCampaignRequest(body []byte) (*CampaignRequest, error) {
	if len(body) > MaxCampaignBody {
		return nil, Invalid("", "the request is larger than %d bytes", MaxCampaignBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req CampaignRequest
	if err := dec.Decode(&req); err != nil {
		return nil, invalid("", "the body is not a campaign request: "+jsonReason(err))
	}
	if dec.More() {
		return nil, invalid("", "one JSON object, nothing after it")
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	return &req, nil
}

func (req *CampaignRequest) check() error {
	if !req.Op.known() {
		names := make([]string, len(CampaignOps))
		for i, o := range CampaignOps {
			names[i] = string(o)
		}
		return Invalid("op", "unknown operation %q; one of %s", clipField(string(req.Op)), strings.Join(names, ", "))
	}
	if req.Rate == 0 {
		req.Rate = DefaultCampaignRate
	}
	if req.Rate < 1 || req.Rate > MaxCampaignRate {
		return Invalid("rate", "jobs per second, 1..%d", MaxCampaignRate)
	}
	if req.ModuleCap == 0 {
		req.ModuleCap = 1
	}
	if req.ModuleCap < 1 || req.ModuleCap > 16 {
		return invalid("module_cap", "pending jobs per module, 1..16")
	}
	switch req.Busy {
	case "":
		req.Busy = BusyWait
	case BusyWait, BusySkip:
	default:
		return invalid("busy", `"wait" or "skip"`)
	}
	if req.Op == CampaignRuleAdd || req.Op == CampaignRuleRemove {
		if len(req.Params) == 0 {
			return invalid("params", "the access rule (as POST …/access-rules takes it)")
		}
		var ar AccessRuleRequest
		if err := json.Unmarshal(req.Params, &ar); err != nil {
			return invalid("params", "not an access rule: "+jsonReason(err))
		}
		if _, err := ar.Rule(); err != nil {
			return err
		}
	} else if len(req.Params) > 0 {
		return Invalid("params", "operation %s takes no parameters", req.Op)
	}
	t := req.Targets
	if req.Op.Scripted() {
		if t.Batch != "" || len(t.EIDs) > 0 || t.AllPersonalized {
			return invalid("targets", "a script campaign's targets are the lines of its NDJSON upload")
		}
		return nil
	}
	n := 0
	if t.Batch != "" {
		n++
	}
	if len(t.EIDs) > 0 {
		n++
	}
	if t.AllPersonalized {
		n++
	}
	if n != 1 {
		return invalid("targets", "exactly one of batch, eids, all_personalized")
	}
	if t.AID != "" {
		if t.Batch == "" {
			return invalid("targets.aid", "only with batch")
		}
		if _, err := ParseAID(string(t.AID)); err != nil {
			return invalid("targets.aid", "not an AID")
		}
	}
	if len(t.EIDs) > MaxCampaignTargets {
		return Invalid("targets.eids", "at most %d entries, got %d", MaxCampaignTargets, len(t.EIDs))
	}
	for i, e := range t.EIDs {
		if _, _, err := parseTargetEntry(e); err != nil {
			return Invalid(fmt.Sprintf("targets.eids[%d]", i), "%v", err)
		}
	}
	return nil
}

// parseTargetEntry reads "EID" or "EID/AID".
func parseTargetEntry(s string) (EID, AID, error) {
	e, a, has := strings.Cut(s, "/")
	eid, err := ParseEID(e)
	if err != nil {
		return "", "", fmt.Errorf("not an EID or EID/AID")
	}
	if !has {
		return eid, "", nil
	}
	aid, err := ParseAID(a)
	if err != nil {
		return "", "", fmt.Errorf("not an EID/AID: bad AID")
	}
	return eid, aid, nil
}

// ParseCampaignScripts reads an NDJSON upload, one CampaignScript a line
// (blank lines skipped), and calls fn for each with its line number. A line
// longer than MaxCampaignLine, one that is not a script object (unknown
// fields refused), a bad EID or AID, a domain named twice, or more than
// MaxCampaignTargets lines is an *InvalidError naming the line; fn's error
// stops the reading and is returned as it is.
func ParseCampaignScripts(r io.Reader, fn func(line int, s *CampaignScript) error) (int, error) {
	sc := newLineScanner(io.LimitReader(r, MaxCampaignUpload+1), MaxCampaignLine)
	seen := map[string]struct{}{}
	n := 0
	for {
		b, err := sc.next()
		if sc.read > MaxCampaignUpload {
			return n, Invalid("", "the upload is larger than %d bytes", MaxCampaignUpload)
		}
		if err == io.EOF {
			break
		}
		var le *LineError
		if errors.As(err, &le) {
			return n, Invalid(fmt.Sprintf("line %d", le.Line), "longer than %d bytes", MaxCampaignLine)
		}
		if err != nil {
			return n, err
		}
		line := sc.line
		if n == MaxCampaignTargets {
			return n, Invalid(fmt.Sprintf("line %d", line), "at most %d scripts in one campaign", MaxCampaignTargets)
		}
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		var s CampaignScript
		if err := dec.Decode(&s); err != nil {
			return n, invalid(fmt.Sprintf("line %d", line), "not a script object: "+jsonReason(err))
		}
		if dec.More() {
			return n, invalid(fmt.Sprintf("line %d", line), "one JSON object a line")
		}
		eid, err := ParseEID(string(s.EID))
		if err != nil {
			return n, invalid(fmt.Sprintf("line %d", line), "eid: not an EID")
		}
		aid, err := ParseAID(string(s.AID))
		if err != nil {
			return n, invalid(fmt.Sprintf("line %d", line), "aid: not an AID")
		}
		s.EID, s.AID = eid, aid
		if len(s.APDUs) == 0 || len(s.APDUs) > MaxScriptAPDUs {
			return n, Invalid(fmt.Sprintf("line %d", line), "apdus: 1..%d APDUs", MaxScriptAPDUs)
		}
		key := string(eid) + "/" + string(aid)
		if _, dup := seen[key]; dup {
			return n, invalid(fmt.Sprintf("line %d", line), "domain "+key+" has a script on an earlier line")
		}
		seen[key] = struct{}{}
		n++
		if err := fn(line, &s); err != nil {
			return n, err
		}
	}
	if n == 0 {
		return 0, invalid("", "the upload holds no script")
	}
	return n, nil
}

// CampaignView is a campaign as the API shows it: its settings and live
// progress (targets by state).
type CampaignView struct {
	ID        string              `json:"id"`
	Provider  string              `json:"provider,omitempty"`
	Op        CampaignOp          `json:"op"`
	State     CampaignState       `json:"state"`
	Rate      int                 `json:"rate"`
	ModuleCap int                 `json:"module_cap"`
	Busy      string              `json:"busy"`
	Total     int                 `json:"total"`
	Counts    map[TargetState]int `json:"counts"`
	Causes    []CampaignCause     `json:"causes,omitempty"`
	CreatedBy string              `json:"created_by"`
	// CreatedByName is the name the one who started it signed in with:
	// an admin's or portal user's e-mail address, an operator's name or an
	// API token's name ("" when none was recorded).
	CreatedByName string     `json:"created_by_name,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	FinishedAt    *time.Time `json:"finished_at,omitempty"`
}

// principal is who the runner queues the campaign's jobs as.
func (c *Campaign) principal() Principal {
	if c.ProviderID != "" {
		return Principal{ProviderID: c.ProviderID, Name: c.ActorName}
	}
	return Principal{Admin: true, Name: c.ActorName}
}

func campaignObject(id string) string { return "campaign:" + id }

// visible reports whether p may see and control c.
func (c *Campaign) visible(p Principal) bool {
	if p.Admin {
		return true
	}
	return p.ProviderID != "" && c.ProviderID == p.ProviderID
}

// CreateCampaign stores a campaign of req with its targets, and the
// "campaign.create" audit event; the runner starts on it at its next tick.
// An issuer admin selects by batch or EID list; a provider by EID list or
// all its PERSONALIZED domains, and an entry that names another provider's
// domain (or none) becomes a REFUSED target with cause "not yours":
// nothing is queued for it. scripts is the NDJSON upload of a scripted
// operation (nil otherwise): each line is checked as the single-script API
// checks it, and a bad one fails the whole request (*InvalidError naming
// the line) with nothing stored.
//
// No transaction is open while the selection is read and checked: the
// campaign is stored CREATING, which no one sees, its targets are written
// a chunk a transaction (on SQLite each holds the one writer for a few
// milliseconds, where a 100,000-line upload in one transaction held every
// other write of the deployment for seconds), and one last transaction
// makes it RUNNING with its total and the audit event. A creation that
// fails deletes what it wrote; one that dies with its process is deleted
// by the runner once it is older than twice CampaignCreateTimeout.
// The runner's own checks at queueing time stay the authority on each
// target: a domain released meanwhile is refused then, as one released
// after the creation always was.
func (s *Service) CreateCampaign(ctx context.Context, p Principal, req CampaignRequest, scripts io.Reader) (*Campaign, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	if p.Admin && req.Op.ProviderOnly() {
		return nil, Invalid("op", "%s is a provider's operation on its own domains", req.Op)
	}
	if err := req.check(); err != nil {
		return nil, err
	}
	if req.Op.Scripted() != (scripts != nil) {
		if scripts == nil {
			return nil, invalid("", "a script campaign takes an NDJSON upload (application/x-ndjson), one script a line")
		}
		return nil, Invalid("", "operation %s takes a JSON request, not an upload", req.Op)
	}
	if !p.Admin && req.Targets.Batch != "" {
		return nil, invalid("targets.batch", "a provider selects by EID list or all_personalized")
	}
	if p.Admin && req.Targets.AllPersonalized {
		return nil, invalid("targets.all_personalized", "a provider's selection")
	}
	now := s.now().UTC()
	c := &Campaign{ID: NewID("cmp"), ProviderID: p.ProviderID, Op: req.Op, Params: req.Params, State: CampaignCreating,
		Rate: req.Rate, ModuleCap: req.ModuleCap, Busy: req.Busy, Actor: p.Actor(), ActorName: p.Name,
		CreatedAt: now, UpdatedAt: now}
	var batchID int64
	if req.Targets.Batch != "" {
		b, err := s.Store.GetBatch(ctx, req.Targets.Batch)
		if errors.Is(err, ErrNotFound) {
			return nil, invalid("targets.batch", "no such batch")
		}
		if err != nil {
			return nil, err
		}
		batchID = b.ID
	}
	ctx, cancel := context.WithTimeout(ctx, CampaignCreateTimeout)
	defer cancel()
	if err := s.Store.CreateCampaign(ctx, c); err != nil {
		return nil, err
	}
	w := &targetWriter{s: s, c: c}
	err := w.write(ctx, p, req, batchID, scripts)
	if err == nil {
		err = s.Store.Tx(ctx, func(tx Repo) error {
			if err := tx.SetCampaignState(ctx, c.ID, []CampaignState{CampaignCreating}, CampaignRunning); err != nil {
				return err
			}
			if err := tx.SetCampaignTotal(ctx, c.ID, w.total); err != nil {
				return err
			}
			return s.audit(ctx, tx, p.Actor(), "campaign.create", campaignObject(c.ID),
				map[string]any{"op": c.Op, "targets": w.total, "refused": w.refused, "rate": c.Rate, "module_cap": c.ModuleCap, "busy": c.Busy})
		})
	}
	if err != nil {
		s.dropCampaign(ctx, c.ID)
		return nil, err
	}
	c.State, c.Total = CampaignRunning, w.total
	s.log().Info("campaign created", "campaign", c.ID, "op", c.Op, "targets", c.Total)
	return c, nil
}

// CampaignCreateTimeout bounds one CreateCampaign; a campaign still
// CREATING twice as long after it was created is a dead creation's.
const CampaignCreateTimeout = 30 * time.Minute

// dropCampaign deletes what a failed creation wrote, even when ctx ended;
// what it cannot delete, the runner's sweep does.
func (s *Service) dropCampaign(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := s.Store.DeleteCampaign(ctx, id); err != nil {
		s.log().Warn("campaign creation failed and its rows are left to the runner's sweep", "campaign", id, "err", err)
	}
}

// SweepCampaigns deletes up to limit campaigns whose creation died with
// its process (CREATING, created more than twice CampaignCreateTimeout
// ago), and returns how many.
func (s *Service) SweepCampaigns(ctx context.Context, limit int) (int, error) {
	cs, err := s.Store.CreatingCampaigns(ctx, s.now().Add(-2*CampaignCreateTimeout), limit)
	if err != nil {
		return 0, err
	}
	for i, c := range cs {
		if err := s.Store.DeleteCampaign(ctx, c.ID); err != nil {
			return i, err
		}
		s.log().Warn("campaign whose creation never finished deleted", "campaign", c.ID, "created", c.CreatedAt)
	}
	return len(cs), nil
}

// targetWriter checks a campaign's selection and inserts its targets, a
// chunk a transaction; its reads are the store's, outside any transaction.
type targetWriter struct {
	s       *Service
	c       *Campaign
	buf     []CampaignTarget
	total   int
	refused int
}

const targetChunk = 500

// write stores the targets of req's selection (or of the scripts).
func (w *targetWriter) write(ctx context.Context, p Principal, req CampaignRequest, batchID int64, scripts io.Reader) error {
	st := w.s.Store
	var err error
	switch {
	case scripts != nil:
		_, err = ParseCampaignScripts(scripts, func(line int, sc *CampaignScript) error {
			return w.script(ctx, p, line, sc)
		})
	case batchID != 0:
		var n int
		n, err = st.AddCampaignBatchTargets(ctx, w.c.ID, batchID, req.Targets.AID)
		w.total += n
	case req.Targets.AllPersonalized:
		var n int
		n, err = st.AddCampaignProviderTargets(ctx, w.c.ID, p.ProviderID, Personalized)
		w.total += n
	default:
		for _, e := range req.Targets.EIDs {
			if err = w.entry(ctx, p, e); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = w.flush(ctx)
	}
	if err == nil && w.total == 0 {
		err = invalid("targets", "the selection names no domain")
	}
	return err
}

func (w *targetWriter) add(ctx context.Context, t CampaignTarget) error {
	t.CampaignID = w.c.ID
	if t.State == "" {
		t.State = TargetPending
	}
	if t.State == TargetRefused {
		w.refused++
	}
	w.buf = append(w.buf, t)
	w.total++
	if len(w.buf) >= targetChunk {
		return w.flush(ctx)
	}
	return nil
}

func (w *targetWriter) flush(ctx context.Context) error {
	if len(w.buf) == 0 {
		return nil
	}
	err := w.s.Store.Tx(ctx, func(tx Repo) error { return tx.AddCampaignTargets(ctx, w.buf) })
	w.buf = w.buf[:0]
	return err
}

// refuse adds a target refused at creation.
func (w *targetWriter) refuse(ctx context.Context, eid EID, aid AID, cause string) error {
	return w.add(ctx, CampaignTarget{EID: eid, AID: aid, State: TargetRefused, Cause: cause, Detail: cause})
}

// entry adds the targets of one EID list entry.
func (w *targetWriter) entry(ctx context.Context, p Principal, e string) error {
	eid, aid, err := parseTargetEntry(e)
	if err != nil {
		return invalid("targets.eids", err.Error())
	}
	notFound := CauseUnknown
	if !p.Admin {
		notFound = CauseNotYours // another's and none look the same
	}
	if aid != "" {
		d, err := w.s.Store.GetDomain(ctx, eid, aid)
		if errors.Is(err, ErrNotFound) || err == nil && !p.Admin && d.OwnerID != p.ProviderID {
			return w.refuse(ctx, eid, aid, notFound)
		}
		if err != nil {
			return err
		}
		return w.add(ctx, CampaignTarget{DomainID: d.ID, ModuleID: d.ModuleID, EID: d.EID, AID: d.AID})
	}
	m, err := w.s.Store.GetModule(ctx, eid)
	if errors.Is(err, ErrNotFound) {
		return w.refuse(ctx, eid, "", notFound)
	}
	if err != nil {
		return err
	}
	n := 0
	for _, d := range m.Domains {
		if d.OwnerID == "" || !p.Admin && d.OwnerID != p.ProviderID {
			continue
		}
		n++
		if err := w.add(ctx, CampaignTarget{DomainID: d.ID, ModuleID: m.ID, EID: m.EID, AID: d.AID}); err != nil {
			return err
		}
	}
	if n == 0 {
		return w.refuse(ctx, eid, "", notFound)
	}
	return nil
}

// script checks one uploaded script as the single-script API would, for the
// caller's own domain.
func (w *targetWriter) script(ctx context.Context, p Principal, line int, sc *CampaignScript) error {
	d, err := w.s.Store.GetDomain(ctx, sc.EID, sc.AID)
	if errors.Is(err, ErrNotFound) || err == nil && d.OwnerID != p.ProviderID {
		return w.refuse(ctx, sc.EID, sc.AID, CauseNotYours)
	}
	if err != nil {
		return err
	}
	var params []byte
	switch w.c.Op {
	case CampaignRotation:
		req := ScriptRequest{APDUs: sc.APDUs, Expect: sc.Expect, Rotate: true}
		// From the domain's KVN or, after an unproven rotation, from a
		// pending one (the history is read only for the latter).
		pending, err := rotationPending(ctx, w.s.Store, d, req.Expect.KVN)
		if err != nil {
			return err
		}
		if _, err := CheckRotateScript(sc.EID, sc.AID, d.KVN, req, pending...); err != nil {
			return lineError(line, err)
		}
		params, err = json.Marshal(req)
	case CampaignData:
		if sc.Expect.KVN != 0 || len(sc.Expect.KCV) > 0 {
			return invalid(fmt.Sprintf("line %d", line), "expect: a data script declares no PUT KEY answer")
		}
		req := DataScriptRequest{APDUs: sc.APDUs}
		if _, err := CheckDataScript(sc.EID, sc.AID, d.KVN, req); err != nil {
			return lineError(line, err)
		}
		params, err = json.Marshal(req)
	}
	if err != nil {
		return err
	}
	return w.add(ctx, CampaignTarget{DomainID: d.ID, ModuleID: d.ModuleID, EID: d.EID, AID: d.AID, Params: string(params)})
}

func lineError(line int, err error) error {
	var ie *InvalidError
	if errors.As(err, &ie) {
		f := fmt.Sprintf("line %d", line)
		if ie.Field != "" {
			f += ": " + ie.Field
		}
		return &InvalidError{Field: f, Reason: ie.Reason}
	}
	return err
}

// GetCampaign returns one of the caller's campaigns (admins see all) with
// its progress and failure report; another provider's is ErrNotFound.
func (s *Service) GetCampaign(ctx context.Context, p Principal, id string) (*CampaignView, error) {
	c, err := s.visibleCampaign(ctx, p, id)
	if err != nil {
		return nil, err
	}
	return s.campaignView(ctx, c, true)
}

func (s *Service) visibleCampaign(ctx context.Context, p Principal, id string) (*Campaign, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	if !strings.HasPrefix(id, "cmp_") || len(id) > 64 {
		return nil, ErrNotFound
	}
	c, err := s.Store.GetCampaign(ctx, id)
	if err != nil {
		return nil, err
	}
	if !c.visible(p) || c.State == CampaignCreating {
		return nil, ErrNotFound
	}
	return c, nil
}

func (s *Service) campaignView(ctx context.Context, c *Campaign, causes bool) (*CampaignView, error) {
	counts, err := s.Store.CampaignCounts(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	v := &CampaignView{ID: c.ID, Provider: c.ProviderID, Op: c.Op, State: c.State, Rate: c.Rate, ModuleCap: c.ModuleCap,
		Busy: c.Busy, Total: c.Total, Counts: map[TargetState]int{}, CreatedBy: c.Actor, CreatedByName: c.ActorName, CreatedAt: c.CreatedAt,
		UpdatedAt: c.UpdatedAt, FinishedAt: c.FinishedAt}
	for _, st := range TargetStates {
		v.Counts[st] = counts[st]
	}
	if causes {
		if v.Causes, err = s.Store.CampaignCauses(ctx, c.ID); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// ListCampaigns lists the caller's campaigns, newest first (admins: every
// campaign, the issuer's and the providers'), with their progress.
func (s *Service) ListCampaigns(ctx context.Context, p Principal, limit int) ([]CampaignView, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	if limit <= 0 || limit > 200 {
		limit = 50
	}
	owner := p.ProviderID
	if p.Admin {
		owner = ""
	}
	cs, err := s.Store.ListCampaigns(ctx, owner, limit)
	if err != nil {
		return nil, err
	}
	out := make([]CampaignView, 0, len(cs))
	for i := range cs {
		v, err := s.campaignView(ctx, &cs[i], false)
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, nil
}

// PauseCampaign stops the runner queuing the campaign's jobs: once it
// returns no further job of the campaign is queued (every queueing
// transaction re-reads the campaign's state, locked, before it inserts),
// and the jobs already queued run as usual. ErrConflict unless RUNNING.
func (s *Service) PauseCampaign(ctx context.Context, p Principal, id string) (*CampaignView, error) {
	return s.moveCampaign(ctx, p, id, []CampaignState{CampaignRunning}, CampaignPaused, "campaign.pause", nil)
}

// ResumeCampaign lets the runner queue a PAUSED campaign's jobs again.
func (s *Service) ResumeCampaign(ctx context.Context, p Principal, id string) (*CampaignView, error) {
	return s.moveCampaign(ctx, p, id, []CampaignState{CampaignPaused}, CampaignRunning, "campaign.resume", nil)
}

// CancelCampaign ends a RUNNING or PAUSED campaign: nothing more is queued,
// its PENDING targets are CANCELLED, and so is each of its jobs still
// QUEUED (as CancelJob would: the operation's Finish runs, the provider is
// told) before it returns; jobs already SENT run out, and their targets
// take their end.
func (s *Service) CancelCampaign(ctx context.Context, p Principal, id string) (*CampaignView, error) {
	return s.moveCampaign(ctx, p, id, []CampaignState{CampaignRunning, CampaignPaused}, CampaignCancelled, "campaign.cancel",
		func(c *Campaign) error { return s.cancelCampaignJobs(ctx, c, p.Actor()) })
}

func (s *Service) moveCampaign(ctx context.Context, p Principal, id string, from []CampaignState, to CampaignState, action string, after func(*Campaign) error) (*CampaignView, error) {
	c, err := s.visibleCampaign(ctx, p, id)
	if err != nil {
		return nil, err
	}
	err = s.Store.Tx(ctx, func(tx Repo) error {
		if err := tx.SetCampaignState(ctx, c.ID, from, to); err != nil {
			return err
		}
		return s.audit(ctx, tx, p.Actor(), action, campaignObject(c.ID), map[string]any{"from": c.State, "to": to})
	})
	if errors.Is(err, ErrConflict) {
		return nil, fmt.Errorf("%w: campaign is %s", ErrConflict, c.State)
	}
	if err != nil {
		return nil, err
	}
	c.State = to
	if after != nil {
		if err := after(c); err != nil {
			return nil, err
		}
	}
	s.log().Info("campaign "+strings.TrimPrefix(action, "campaign."), "campaign", c.ID)
	return s.GetCampaign(ctx, p, id)
}

// cancelCampaignJobs cancels c's PENDING targets and QUEUED jobs, a page
// at a time.
func (s *Service) cancelCampaignJobs(ctx context.Context, c *Campaign, actor string) error {
	if err := s.Store.CancelPendingTargets(ctx, c.ID); err != nil {
		return err
	}
	var after int64
	for {
		ts, err := s.Store.CampaignTargetsAfter(ctx, c.ID, TargetQueued, after, 500)
		if err != nil || len(ts) == 0 {
			return err
		}
		for _, t := range ts {
			after = t.ID
			j, err := s.Store.GetJob(ctx, t.JobRef)
			if err != nil {
				return err
			}
			err = s.cancelQueued(ctx, j, jobEnd{to: JobCancelled, cause: CauseCancelled, actor: actor, action: "job.cancel"})
			if err != nil && !errors.Is(err, ErrConflict) { // ErrConflict: it went out meanwhile
				return err
			}
		}
	}
}
