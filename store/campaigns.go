package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// campaignRow is a row of campaigns (migration 13).
type campaignRow struct {
	ID          string         `gorm:"column:id;primaryKey"`
	ProviderID  sql.NullString `gorm:"column:provider_id"`
	Op          string         `gorm:"column:op"`
	Params      string         `gorm:"column:params"`
	State       string         `gorm:"column:state"`
	Rate        int            `gorm:"column:rate"`
	ModuleCap   int            `gorm:"column:module_cap"`
	Busy        string         `gorm:"column:busy"`
	Actor       string         `gorm:"column:actor"`
	ActorName   string         `gorm:"column:actor_name"`
	Total       int            `gorm:"column:total"`
	LeaseHolder string         `gorm:"column:lease_holder"`
	LeaseUntil  *time.Time     `gorm:"column:lease_until"`
	CreatedAt   time.Time      `gorm:"column:created_at"`
	UpdatedAt   time.Time      `gorm:"column:updated_at"`
	FinishedAt  *time.Time     `gorm:"column:finished_at"`
}

func (campaignRow) TableName() string { return "campaigns" }

func (r campaignRow) model() keyport.Campaign {
	c := keyport.Campaign{ID: r.ID, ProviderID: r.ProviderID.String, Op: keyport.CampaignOp(r.Op),
		State: keyport.CampaignState(r.State), Rate: r.Rate, ModuleCap: r.ModuleCap, Busy: r.Busy, Actor: r.Actor,
		ActorName: r.ActorName, Total: r.Total, LeaseHolder: r.LeaseHolder, LeaseUntil: utcPtr(r.LeaseUntil),
		CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(), FinishedAt: utcPtr(r.FinishedAt)}
	if r.Params != "" {
		c.Params = json.RawMessage(r.Params)
	}
	return c
}

// campaignTargetRow is a row of campaign_targets (migration 13).
type campaignTargetRow struct {
	ID         int64         `gorm:"column:id;primaryKey"`
	CampaignID string        `gorm:"column:campaign_id"`
	DomainID   sql.NullInt64 `gorm:"column:domain_id"`
	ModuleID   sql.NullInt64 `gorm:"column:module_id"`
	EID        string        `gorm:"column:eid"`
	AID        string        `gorm:"column:aid"`
	State      string        `gorm:"column:state"`
	JobID      sql.NullInt64 `gorm:"column:job_id"`
	JobRef     string        `gorm:"column:job_ref"`
	Cause      string        `gorm:"column:cause"`
	Detail     string        `gorm:"column:detail"`
	Params     string        `gorm:"column:params"`
	UpdatedAt  time.Time     `gorm:"column:updated_at"`
}

func (campaignTargetRow) TableName() string { return "campaign_targets" }

func (r campaignTargetRow) model() keyport.CampaignTarget {
	return keyport.CampaignTarget{ID: r.ID, CampaignID: r.CampaignID, DomainID: r.DomainID.Int64, ModuleID: r.ModuleID.Int64,
		EID: keyport.EID(r.EID), AID: keyport.AID(r.AID), State: keyport.TargetState(r.State), JobID: r.JobID.Int64,
		JobRef: r.JobRef, Cause: r.Cause, Detail: r.Detail, Params: r.Params}
}

// CreateCampaign inserts c.
func (r *repo) CreateCampaign(ctx context.Context, c *keyport.Campaign) error {
	if c.ID == "" {
		return fmt.Errorf("store: create campaign: no ID: %w", keyport.ErrInvalid)
	}
	t := now()
	row := campaignRow{ID: c.ID, ProviderID: sql.NullString{String: c.ProviderID, Valid: c.ProviderID != ""}, Op: string(c.Op),
		Params: string(c.Params), State: string(c.State), Rate: c.Rate, ModuleCap: c.ModuleCap, Busy: c.Busy, Actor: c.Actor,
		ActorName: c.ActorName, Total: c.Total, CreatedAt: t, UpdatedAt: t}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create campaign", err)
	}
	c.CreatedAt, c.UpdatedAt = t, t
	return nil
}

// GetCampaign returns the campaign.
func (r *repo) GetCampaign(ctx context.Context, id string) (*keyport.Campaign, error) {
	var row campaignRow
	if err := r.r.WithContext(ctx).Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, wrap("get campaign", err)
	}
	c := row.model()
	return &c, nil
}

func campaignModels(rows []campaignRow) []keyport.Campaign {
	out := make([]keyport.Campaign, len(rows))
	for i, row := range rows {
		out[i] = row.model()
	}
	return out
}

// ListCampaigns returns the provider's campaigns ("": all), newest first.
func (r *repo) ListCampaigns(ctx context.Context, providerID string, limit int) ([]keyport.Campaign, error) {
	q := r.r.WithContext(ctx).Model(&campaignRow{})
	if providerID != "" {
		q = q.Where("provider_id = ?", providerID)
	}
	var rows []campaignRow
	if err := q.Where("state <> ?", string(keyport.CampaignCreating)).Order("created_at DESC, id DESC").
		Limit(limit).Find(&rows).Error; err != nil {
		return nil, wrap("list campaigns", err)
	}
	return campaignModels(rows), nil
}

// CreatingCampaigns returns campaigns still CREATING from before before.
func (r *repo) CreatingCampaigns(ctx context.Context, before time.Time, limit int) ([]keyport.Campaign, error) {
	var rows []campaignRow
	err := r.r.WithContext(ctx).Where("state = ? AND created_at < ?", string(keyport.CampaignCreating), dbTime(before)).
		Order("created_at, id").Limit(limit).Find(&rows).Error
	if err != nil {
		return nil, wrap("creating campaigns", err)
	}
	return campaignModels(rows), nil
}

// deleteChunk is how many targets one statement of DeleteCampaign deletes.
const deleteChunk = 1000

// DeleteCampaign deletes the campaign's targets a chunk at a time, then
// the campaign.
func (r *repo) DeleteCampaign(ctx context.Context, id string) error {
	db := r.w.WithContext(ctx)
	for {
		res := db.Exec(`DELETE FROM campaign_targets WHERE id IN
			(SELECT id FROM campaign_targets WHERE campaign_id = ? ORDER BY id LIMIT ?)`, id, deleteChunk)
		if res.Error != nil {
			return wrap("delete campaign targets", res.Error)
		}
		if res.RowsAffected < deleteChunk {
			break
		}
	}
	if err := db.Exec(`DELETE FROM campaigns WHERE id = ?`, id).Error; err != nil {
		return wrap("delete campaign", err)
	}
	return nil
}

// RunnableCampaigns returns the campaigns without a finish time.
func (r *repo) RunnableCampaigns(ctx context.Context, limit int) ([]keyport.Campaign, error) {
	var rows []campaignRow
	err := r.r.WithContext(ctx).Where("finished_at IS NULL AND state IN ?", []string{string(keyport.CampaignRunning),
		string(keyport.CampaignPaused), string(keyport.CampaignCancelled)}).Order("created_at, id").Limit(limit).Find(&rows).Error
	if err != nil {
		return nil, wrap("runnable campaigns", err)
	}
	return campaignModels(rows), nil
}

// SetCampaignTotal records how many targets the campaign has.
func (r *repo) SetCampaignTotal(ctx context.Context, id string, total int) error {
	return r.updateRow(ctx, "set campaign total", "campaigns", id, map[string]any{"total": total, "updated_at": now()})
}

// SetCampaignState moves the campaign conditionally.
func (r *repo) SetCampaignState(ctx context.Context, id string, from []keyport.CampaignState, to keyport.CampaignState) error {
	states := make([]string, len(from))
	for i, s := range from {
		states[i] = string(s)
	}
	res := r.w.WithContext(ctx).Exec(`UPDATE campaigns SET state = ?, updated_at = ? WHERE id = ? AND state IN ?`,
		string(to), now(), id, states)
	if res.Error != nil {
		return wrap("set campaign state", res.Error)
	}
	if res.RowsAffected != 1 {
		return fmt.Errorf("store: set campaign state: not in %v: %w", from, keyport.ErrConflict)
	}
	return nil
}

// EndCampaign sets the finish time once.
func (r *repo) EndCampaign(ctx context.Context, id string, at time.Time) (bool, error) {
	res := r.w.WithContext(ctx).Exec(`UPDATE campaigns SET finished_at = ?, updated_at = ? WHERE id = ? AND finished_at IS NULL`,
		dbTime(at), now(), id)
	if res.Error != nil {
		return false, wrap("end campaign", res.Error)
	}
	return res.RowsAffected == 1, nil
}

// ClaimCampaign takes or renews the lease in one conditional update.
func (r *repo) ClaimCampaign(ctx context.Context, id, holder string, at, until time.Time) (bool, error) {
	res := r.w.WithContext(ctx).Exec(`UPDATE campaigns SET lease_holder = ?, lease_until = ?
		WHERE id = ? AND (lease_holder = ? OR lease_holder = '' OR lease_until IS NULL OR lease_until < ?)`,
		holder, dbTime(until), id, holder, dbTime(at))
	if res.Error != nil {
		return false, wrap("claim campaign", res.Error)
	}
	return res.RowsAffected == 1, nil
}

// CampaignStateForQueue reads the state, the row locked FOR SHARE on
// PostgreSQL (an UPDATE of the state waits for the queueing transaction).
func (r *repo) CampaignStateForQueue(ctx context.Context, id string) (keyport.CampaignState, error) {
	q := `SELECT state FROM campaigns WHERE id = ?`
	if r.dialect == dialectPostgres {
		q += ` FOR SHARE`
	}
	var st sql.NullString
	if err := r.w.WithContext(ctx).Raw(q, id).Scan(&st).Error; err != nil {
		return "", wrap("campaign state", err)
	}
	if !st.Valid {
		return "", fmt.Errorf("store: campaign state: %w", keyport.ErrNotFound)
	}
	return keyport.CampaignState(st.String), nil
}

// LockModuleForQueue locks the module row FOR NO KEY UPDATE on PostgreSQL
// (the job insert holds FOR KEY SHARE on it already, through its foreign
// key; FOR UPDATE would deadlock two transactions that both hold that).
func (r *repo) LockModuleForQueue(ctx context.Context, moduleID int64) error {
	if r.dialect != dialectPostgres {
		return nil // one writer at a time
	}
	var id int64
	return wrap("lock module", r.w.WithContext(ctx).Raw(`SELECT id FROM modules WHERE id = ? FOR NO KEY UPDATE`, moduleID).Scan(&id).Error)
}

// AddCampaignTargets inserts ts in one multi-row statement.
func (r *repo) AddCampaignTargets(ctx context.Context, ts []keyport.CampaignTarget) error {
	if len(ts) == 0 {
		return nil
	}
	t := now()
	rows := make([]campaignTargetRow, len(ts))
	for i, x := range ts {
		rows[i] = campaignTargetRow{CampaignID: x.CampaignID, DomainID: nullInt(x.DomainID), ModuleID: nullInt(x.ModuleID),
			EID: string(x.EID), AID: string(x.AID), State: string(x.State), JobID: nullInt(x.JobID), JobRef: x.JobRef,
			Cause: x.Cause, Detail: x.Detail, Params: x.Params, UpdatedAt: t}
	}
	if err := r.w.WithContext(ctx).CreateInBatches(rows, 200).Error; err != nil {
		return wrap("add campaign targets", err)
	}
	for i := range ts {
		ts[i].ID = rows[i].ID
	}
	return nil
}

// AddCampaignBatchTargets inserts the batch's claimed domains.
func (r *repo) AddCampaignBatchTargets(ctx context.Context, campaignID string, batchID int64, aid keyport.AID) (int, error) {
	from := `FROM domains d JOIN modules m ON m.id = d.module_id WHERE m.batch_id = ? AND d.owner_id IS NOT NULL`
	args := []any{batchID}
	if aid != "" {
		from += ` AND d.aid = ?`
		args = append(args, string(aid))
	}
	return r.addTargetsOf(ctx, "add campaign batch targets", campaignID, from, args)
}

// AddCampaignProviderTargets inserts the provider's domains in state.
func (r *repo) AddCampaignProviderTargets(ctx context.Context, campaignID, providerID string, state keyport.DomainState) (int, error) {
	return r.addTargetsOf(ctx, "add campaign provider targets", campaignID,
		`FROM domains d WHERE d.owner_id = ? AND d.state = ?`, []any{providerID, string(state)})
}

// targetRange is how many domains one statement of addTargetsOf inserts.
const targetRange = 1000

// addTargetsOf inserts, PENDING, the domains that from (a FROM and WHERE
// over domains d, with args) selects, in domain ID order, a range of IDs a
// statement: the IDs come from one read of the selection, streamed on the
// reader, so that no write statement lasts as long as the selection is big
// (on SQLite every statement writes through the one writer; 400,000
// targets in one statement held it 0.55 s here). Each range's statement
// selects anew, so a domain that left the selection since the read is not
// inserted; the runner checks every target again when it queues it anyway.
// Inside a transaction it is one statement.
func (r *repo) addTargetsOf(ctx context.Context, op, campaignID, from string, args []any) (int, error) {
	insert := `INSERT INTO campaign_targets (campaign_id, domain_id, module_id, eid, aid, state, updated_at)
		SELECT ?, d.id, d.module_id, d.eid, d.aid, ?, ? ` + from
	head := []any{campaignID, string(keyport.TargetPending), now()}
	if r.inTx {
		res := r.w.WithContext(ctx).Exec(insert+` ORDER BY d.id`, append(head, args...)...)
		if res.Error != nil {
			return 0, wrap(op, res.Error)
		}
		return int(res.RowsAffected), nil
	}
	rows, err := r.r.WithContext(ctx).Raw(`SELECT d.id `+from+` ORDER BY d.id`, args...).Rows()
	if err != nil {
		return 0, wrap(op, err)
	}
	defer rows.Close()
	// A range is read by its IDs: SQLite's planner otherwise took the
	// owner index, which holds the whole selection, for every range (13.6
	// s instead of 0.6 for 400,000 targets). NOT INDEXED leaves it the
	// rowid; PostgreSQL's planner takes the primary key by itself.
	ranged := insert
	if r.dialect == dialectSQLite {
		ranged = strings.Replace(insert, "FROM domains d ", "FROM domains d NOT INDEXED ", 1)
	}
	total := 0
	var lo, hi int64
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		res := r.w.WithContext(ctx).Exec(ranged+` AND d.id BETWEEN ? AND ? ORDER BY d.id`,
			append(append(head[:len(head):len(head)], args...), lo, hi)...)
		if res.Error != nil {
			return wrap(op, res.Error)
		}
		total += int(res.RowsAffected)
		n = 0
		return nil
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return total, wrap(op, err)
		}
		if n == 0 {
			lo = id
		}
		hi = id
		n++
		if n == targetRange {
			if err := flush(); err != nil {
				return total, err
			}
		}
	}
	if err := rows.Err(); err != nil {
		return total, wrap(op, err)
	}
	return total, flush()
}

// CampaignTargetsAfter pages through the campaign's targets in one state
// (campaign_targets_state index).
func (r *repo) CampaignTargetsAfter(ctx context.Context, campaignID string, state keyport.TargetState, afterID int64, limit int) ([]keyport.CampaignTarget, error) {
	var rows []campaignTargetRow
	err := r.r.WithContext(ctx).Where("campaign_id = ? AND state = ? AND id > ?", campaignID, string(state), afterID).
		Order("id").Limit(limit).Find(&rows).Error
	if err != nil {
		return nil, wrap("campaign targets", err)
	}
	out := make([]keyport.CampaignTarget, len(rows))
	for i, row := range rows {
		out[i] = row.model()
	}
	return out, nil
}

// MarkCampaignTarget moves a target conditionally.
func (r *repo) MarkCampaignTarget(ctx context.Context, id int64, from, to keyport.TargetState, jobID int64, jobRef, cause, detail string) (bool, error) {
	q := `UPDATE campaign_targets SET state = ?, cause = ?, detail = ?, updated_at = ?`
	args := []any{string(to), cause, detail, now()}
	if jobID != 0 || jobRef != "" {
		q += `, job_id = ?, job_ref = ?`
		args = append(args, nullInt(jobID), jobRef)
	}
	res := r.w.WithContext(ctx).Exec(q+` WHERE id = ? AND state = ?`, append(args, id, string(from))...)
	if res.Error != nil {
		return false, wrap("mark campaign target", res.Error)
	}
	return res.RowsAffected == 1, nil
}

// CancelPendingTargets cancels the PENDING targets.
func (r *repo) CancelPendingTargets(ctx context.Context, campaignID string) error {
	err := r.w.WithContext(ctx).Exec(`UPDATE campaign_targets SET state = ?, cause = ?, detail = ?, updated_at = ?
		WHERE campaign_id = ? AND state = ?`, string(keyport.TargetCancelled), keyport.CauseCancelled, keyport.CauseCancelled,
		now(), campaignID, string(keyport.TargetPending)).Error
	return wrap("cancel campaign targets", err)
}

// CampaignEnds pages through QUEUED targets whose job ended.
func (r *repo) CampaignEnds(ctx context.Context, campaignID string, afterID int64, limit int) ([]keyport.CampaignEnd, error) {
	var rows []struct {
		ID        int64  `gorm:"column:id"`
		State     string `gorm:"column:job_state"`
		Result    string `gorm:"column:result"`
		LastError string `gorm:"column:last_error"`
	}
	err := r.r.WithContext(ctx).Raw(`SELECT t.id, j.state AS job_state, j.result, j.last_error
		FROM campaign_targets t JOIN jobs j ON j.id = t.job_id
		WHERE t.campaign_id = ? AND t.state = ? AND t.id > ? AND j.state IN ? ORDER BY t.id LIMIT ?`,
		campaignID, string(keyport.TargetQueued), afterID,
		[]string{string(keyport.JobDone), string(keyport.JobFailed), string(keyport.JobCancelled), string(keyport.JobExpired)},
		limit).Scan(&rows).Error
	if err != nil {
		return nil, wrap("campaign ends", err)
	}
	out := make([]keyport.CampaignEnd, len(rows))
	for i, row := range rows {
		out[i] = keyport.CampaignEnd{TargetID: row.ID, JobState: keyport.JobState(row.State), LastError: row.LastError}
		if row.Result != "" {
			var res keyport.ScriptResult
			if err := json.Unmarshal([]byte(row.Result), &res); err == nil {
				out[i].Result = &res
			}
		}
	}
	return out, nil
}

// CampaignCounts counts targets by state.
func (r *repo) CampaignCounts(ctx context.Context, campaignID string) (map[keyport.TargetState]int, error) {
	var rows []struct {
		State string `gorm:"column:state"`
		N     int    `gorm:"column:n"`
	}
	if err := r.r.WithContext(ctx).Raw(`SELECT state, COUNT(*) AS n FROM campaign_targets WHERE campaign_id = ? GROUP BY state`,
		campaignID).Scan(&rows).Error; err != nil {
		return nil, wrap("campaign counts", err)
	}
	out := map[keyport.TargetState]int{}
	for _, row := range rows {
		out[keyport.TargetState(row.State)] = row.N
	}
	return out, nil
}

// CampaignCauses groups the targets that did not end DONE.
func (r *repo) CampaignCauses(ctx context.Context, campaignID string) ([]keyport.CampaignCause, error) {
	var rows []struct {
		State  string `gorm:"column:state"`
		Cause  string `gorm:"column:cause"`
		N      int    `gorm:"column:n"`
		Detail string `gorm:"column:detail"`
	}
	if err := r.r.WithContext(ctx).Raw(`SELECT state, cause, COUNT(*) AS n, MIN(detail) AS detail FROM campaign_targets
		WHERE campaign_id = ? AND state IN ? GROUP BY state, cause ORDER BY n DESC, state, cause`, campaignID,
		[]string{string(keyport.TargetFailed), string(keyport.TargetRefused), string(keyport.TargetSkipped), string(keyport.TargetCancelled)}).
		Scan(&rows).Error; err != nil {
		return nil, wrap("campaign causes", err)
	}
	out := make([]keyport.CampaignCause, len(rows))
	for i, row := range rows {
		out[i] = keyport.CampaignCause{State: keyport.TargetState(row.State), Cause: row.Cause, Count: row.N, Detail: row.Detail}
	}
	return out, nil
}
