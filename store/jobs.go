package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// jobRow is a row of jobs (migrations 1 and 3).
type jobRow struct {
	ID         int64          `gorm:"column:id;primaryKey"`
	Ref        sql.NullString `gorm:"column:ref"`
	Kind       string         `gorm:"column:kind"`
	DomainID   sql.NullInt64  `gorm:"column:domain_id"`
	ModuleID   sql.NullInt64  `gorm:"column:module_id"`
	ProviderID sql.NullString `gorm:"column:provider_id"`
	State      string         `gorm:"column:state"`
	Attempts   int            `gorm:"column:attempts"`
	NextRunAt  time.Time      `gorm:"column:next_run_at"`
	ExpiresAt  *time.Time     `gorm:"column:expires_at"`
	Payload    string         `gorm:"column:payload"`
	Result     string         `gorm:"column:result"`
	LastError  string         `gorm:"column:last_error"`
	CreatedAt  time.Time      `gorm:"column:created_at"`
	UpdatedAt  time.Time      `gorm:"column:updated_at"`
	Version    int            `gorm:"column:version"` // migration 19
}

func (jobRow) TableName() string { return "jobs" }

// jobColumns are jobRow's columns in the order of dest.
const jobColumns = `id, ref, kind, domain_id, module_id, provider_id, state, attempts, next_run_at, expires_at, payload, result, last_error, created_at, updated_at, version`

// dest is where a row of jobColumns scans to, without gorm's reflection.
func (r *jobRow) dest() []any {
	return []any{&r.ID, &r.Ref, &r.Kind, &r.DomainID, &r.ModuleID, &r.ProviderID, &r.State, &r.Attempts, &r.NextRunAt,
		&r.ExpiresAt, &r.Payload, &r.Result, &r.LastError, &r.CreatedAt, &r.UpdatedAt, &r.Version}
}

func (r jobRow) model() (keyport.Job, error) {
	j := keyport.Job{ID: r.ID, Ref: r.Ref.String, Kind: keyport.JobKind(r.Kind), DomainID: r.DomainID.Int64,
		ModuleID: r.ModuleID.Int64, ProviderID: r.ProviderID.String, State: keyport.JobState(r.State),
		Attempts: r.Attempts, NextRunAt: r.NextRunAt.UTC(), ExpiresAt: utcPtr(r.ExpiresAt),
		LastError: r.LastError, CreatedAt: r.CreatedAt.UTC(), UpdatedAt: r.UpdatedAt.UTC(), Version: r.Version}
	switch j.Kind {
	case keyport.JobSecondKey:
		j.SecondKey = new(keyport.SecondKeyPayload)
		if err := json.Unmarshal([]byte(r.Payload), j.SecondKey); err != nil {
			return j, fmt.Errorf("store: job %s: second-key payload: %w", j.Ref, err)
		}
	case keyport.JobData:
		j.Data = new(keyport.DataPayload)
		if err := json.Unmarshal([]byte(r.Payload), j.Data); err != nil {
			return j, fmt.Errorf("store: job %s: data payload: %w", j.Ref, err)
		}
	case keyport.JobIssuer:
		j.Issuer = new(keyport.IssuerPayload)
		if err := json.Unmarshal([]byte(r.Payload), j.Issuer); err != nil {
			return j, fmt.Errorf("store: job %s: issuer payload: %w", j.Ref, err)
		}
	case keyport.JobWebhook:
		j.Event = []byte(r.Payload)
	default:
		return j, fmt.Errorf("store: job %s: unknown kind %q", j.Ref, r.Kind)
	}
	if r.Result != "" {
		j.Result = new(keyport.ScriptResult)
		if err := json.Unmarshal([]byte(r.Result), j.Result); err != nil {
			return j, fmt.Errorf("store: job %s: result: %w", j.Ref, err)
		}
	}
	return j, nil
}

// jobPayload is what the payload column holds for j.
func jobPayload(j *keyport.Job) (string, error) {
	switch j.Kind {
	case keyport.JobSecondKey:
		if j.SecondKey == nil {
			return "", fmt.Errorf("store: job %s: a second-key job without its script: %w", j.Ref, keyport.ErrInvalid)
		}
		b, err := json.Marshal(j.SecondKey)
		if err != nil {
			return "", fmt.Errorf("store: job %s: second-key payload: %w", j.Ref, err)
		}
		return string(b), nil
	case keyport.JobData:
		if j.Data == nil {
			return "", fmt.Errorf("store: job %s: a data job without its script: %w", j.Ref, keyport.ErrInvalid)
		}
		b, err := json.Marshal(j.Data)
		if err != nil {
			return "", fmt.Errorf("store: job %s: data payload: %w", j.Ref, err)
		}
		return string(b), nil
	case keyport.JobIssuer:
		if j.Issuer == nil {
			return "", fmt.Errorf("store: job %s: an issuer job without its operation: %w", j.Ref, keyport.ErrInvalid)
		}
		b, err := json.Marshal(j.Issuer)
		if err != nil {
			return "", fmt.Errorf("store: job %s: issuer payload: %w", j.Ref, err)
		}
		return string(b), nil
	case keyport.JobWebhook:
		return string(j.Event), nil
	}
	return "", fmt.Errorf("store: job %s: unknown kind %q: %w", j.Ref, j.Kind, keyport.ErrInvalid)
}

// jobResult is what the result column holds for j ("" for none).
func jobResult(j *keyport.Job) (string, error) {
	if j.Result == nil {
		return "", nil
	}
	b, err := json.Marshal(j.Result)
	if err != nil {
		return "", fmt.Errorf("store: job %s: result: %w", j.Ref, err)
	}
	return string(b), nil
}

func nullInt(v int64) sql.NullInt64 { return sql.NullInt64{Int64: v, Valid: v != 0} }

// CreateJob inserts j and sets its ID, CreatedAt and UpdatedAt.
func (r *repo) CreateJob(ctx context.Context, j *keyport.Job) error {
	if j.Ref == "" {
		return fmt.Errorf("store: create job: no reference: %w", keyport.ErrInvalid)
	}
	payload, err := jobPayload(j)
	if err != nil {
		return err
	}
	result, err := jobResult(j)
	if err != nil {
		return err
	}
	t := now()
	row := jobRow{Ref: sql.NullString{String: j.Ref, Valid: true}, Kind: string(j.Kind), DomainID: nullInt(j.DomainID),
		ModuleID: nullInt(j.ModuleID), ProviderID: sql.NullString{String: j.ProviderID, Valid: j.ProviderID != ""},
		State: string(j.State), Attempts: j.Attempts, NextRunAt: dbTime(j.NextRunAt), ExpiresAt: dbTimePtr(j.ExpiresAt),
		Payload: payload, Result: result, LastError: j.LastError, CreatedAt: t, UpdatedAt: t}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create job", err)
	}
	j.ID, j.CreatedAt, j.UpdatedAt, j.Version = row.ID, t, t, 0
	j.NextRunAt, j.ExpiresAt = row.NextRunAt, row.ExpiresAt
	return nil
}

// GetJob returns the job with the public reference ref.
func (r *repo) GetJob(ctx context.Context, ref string) (*keyport.Job, error) {
	var row jobRow
	if err := r.r.WithContext(ctx).Where("ref = ?", ref).Take(&row).Error; err != nil {
		return nil, wrap("get job", err)
	}
	j, err := row.model()
	if err != nil {
		return nil, err
	}
	return &j, nil
}

// ListJobs returns the jobs f selects, in ID order (a module's jobs in the
// order they were submitted); f.Newest reads the last ones from the end.
func (r *repo) ListJobs(ctx context.Context, f keyport.JobFilter) ([]keyport.Job, error) {
	q := r.r.WithContext(ctx).Model(&jobRow{})
	if f.Kind != "" {
		q = q.Where("kind = ?", string(f.Kind))
	} else if len(f.Kinds) > 0 {
		kinds := make([]string, len(f.Kinds))
		for i, k := range f.Kinds {
			kinds[i] = string(k)
		}
		q = q.Where("kind IN ?", kinds)
	}
	if len(f.States) > 0 {
		states := make([]string, len(f.States))
		for i, s := range f.States {
			states[i] = string(s)
		}
		q = q.Where("state IN ?", states)
	}
	if f.ModuleID != 0 {
		q = q.Where("module_id = ?", f.ModuleID)
	}
	if f.DomainID != 0 {
		q = q.Where("domain_id = ?", f.DomainID)
	}
	if f.ProviderID != "" {
		q = q.Where("provider_id = ?", f.ProviderID)
	}
	if len(f.ExcludeProviders) > 0 {
		q = q.Where("provider_id NOT IN ?", f.ExcludeProviders)
	}
	if !f.DueBefore.IsZero() {
		q = q.Where("next_run_at <= ?", dbTime(f.DueBefore))
	}
	if !f.ExpiresBefore.IsZero() {
		q = q.Where("expires_at < ?", dbTime(f.ExpiresBefore))
	}
	if f.AfterID > 0 {
		q = q.Where("id > ?", f.AfterID)
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	order := "id"
	if f.Newest {
		order = "id DESC"
	}
	var rows []jobRow
	if err := q.Order(order).Limit(limit).Find(&rows).Error; err != nil {
		return nil, wrap("list jobs", err)
	}
	if f.Newest {
		slices.Reverse(rows)
	}
	out := make([]keyport.Job, len(rows))
	for i, row := range rows {
		var err error
		if out[i], err = row.model(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// PendingModuleJobs returns the module's QUEUED and SENT card jobs,
// oldest first, joined with their domain's state and their provider's
// webhook URL (jobs_module index): one read where an admin session would
// otherwise queue three times for a connection.
func (r *repo) PendingModuleJobs(ctx context.Context, moduleID int64, limit int) ([]keyport.PendingJob, error) {
	// Past gorm (direct.go): every admin session starts with this read.
	kinds, kindArgs := in(keyport.CardJobKinds)
	rows, err := r.query(ctx, `SELECT `+prefixed("j.", jobColumns)+`, d.state AS domain_state, p.webhook_url AS webhook_url
		FROM jobs j LEFT JOIN domains d ON d.id = j.domain_id LEFT JOIN providers p ON p.id = j.provider_id
		WHERE j.module_id = ? AND j.state IN (?, ?) AND j.kind IN `+kinds+` ORDER BY j.id LIMIT ?`,
		append(append([]any{moduleID, string(keyport.JobQueued), string(keyport.JobSent)}, kindArgs...), limit)...)
	if err != nil {
		return nil, wrap("pending module jobs", err)
	}
	out, err := scanPendingJobs(rows)
	if err != nil {
		return nil, wrap("pending module jobs", err)
	}
	return out, nil
}

// scanPendingJobs reads rows of jobColumns, domain_state and webhook_url.
func scanPendingJobs(rows *sql.Rows) ([]keyport.PendingJob, error) {
	defer rows.Close()
	var out []keyport.PendingJob
	for rows.Next() {
		var row jobRow
		var domainState, webhookURL sql.NullString
		if err := rows.Scan(append(row.dest(), &domainState, &webhookURL)...); err != nil {
			return nil, err
		}
		j, err := row.model()
		if err != nil {
			return nil, err
		}
		out = append(out, keyport.PendingJob{Job: j, DomainState: keyport.DomainState(domainState.String),
			WebhookURL: webhookURL.String})
	}
	return out, rows.Err()
}

// UpdateJob writes j's mutable fields if the row is still in state from
// with fromAttempts attempts and at version j.Version: one conditional
// UPDATE, so that of two sessions, replicas or receipts writing the same
// job exactly one wins and the other reads it again.
func (r *repo) UpdateJob(ctx context.Context, j *keyport.Job, from keyport.JobState, fromAttempts int) error {
	result, err := jobResult(j)
	if err != nil {
		return err
	}
	t := now()
	n, err := affected(r.exec(ctx, `UPDATE jobs SET state = ?, attempts = ?, next_run_at = ?, result = ?, last_error = ?,
		updated_at = ?, version = version + 1 WHERE id = ? AND state = ? AND attempts = ? AND version = ?`,
		string(j.State), j.Attempts, dbTime(j.NextRunAt), result, j.LastError, t, j.ID, string(from), fromAttempts, j.Version))
	if err != nil {
		return wrap("update job", err)
	}
	if n != 1 {
		return fmt.Errorf("store: update job %s: changed since it was read (%s with %d attempts, write %d): %w", j.Ref, from, fromAttempts, j.Version, keyport.ErrConflict)
	}
	j.UpdatedAt = t
	j.Version++
	j.NextRunAt = dbTime(j.NextRunAt)
	return nil
}

// WebhookHealth sums up the webhook jobs of each provider: the count of
// QUEUED ones, and the newest DONE and the newest failure (QUEUED with an
// error, or FAILED), picked per provider with a window function.
func (r *repo) WebhookHealth(ctx context.Context) ([]keyport.WebhookHealth, error) {
	var counts []struct {
		ProviderID string `gorm:"column:provider_id"`
		N          int    `gorm:"column:n"`
	}
	if err := r.r.WithContext(ctx).Raw(`SELECT provider_id, COUNT(*) AS n FROM jobs
		WHERE kind = ? AND state = ? AND provider_id IS NOT NULL GROUP BY provider_id`,
		string(keyport.JobWebhook), string(keyport.JobQueued)).Scan(&counts).Error; err != nil {
		return nil, wrap("webhook health", err)
	}
	var newest []struct {
		ProviderID string    `gorm:"column:provider_id"`
		OK         bool      `gorm:"column:ok"`
		UpdatedAt  time.Time `gorm:"column:updated_at"`
		LastError  string    `gorm:"column:last_error"`
	}
	if err := r.r.WithContext(ctx).Raw(`SELECT provider_id, ok, updated_at, last_error FROM (
		SELECT provider_id, state = ? AS ok, updated_at, last_error,
			ROW_NUMBER() OVER (PARTITION BY provider_id, state = ? ORDER BY updated_at DESC, id DESC) AS rn
		FROM jobs WHERE kind = ? AND provider_id IS NOT NULL
			AND (state = ? OR (state IN ? AND last_error <> ''))) newest WHERE rn = 1`,
		string(keyport.JobDone), string(keyport.JobDone), string(keyport.JobWebhook), string(keyport.JobDone),
		[]string{string(keyport.JobQueued), string(keyport.JobFailed)}).Scan(&newest).Error; err != nil {
		return nil, wrap("webhook health", err)
	}
	var out []keyport.WebhookHealth
	idx := map[string]int{}
	row := func(id string) *keyport.WebhookHealth {
		i, ok := idx[id]
		if !ok {
			i = len(out)
			idx[id] = i
			out = append(out, keyport.WebhookHealth{ProviderID: id})
		}
		return &out[i]
	}
	for _, c := range counts {
		row(c.ProviderID).Queued = c.N
	}
	for _, n := range newest {
		h, at := row(n.ProviderID), n.UpdatedAt.UTC()
		if n.OK {
			h.LastOK = &at
		} else {
			h.LastFailed, h.LastError = &at, n.LastError
		}
	}
	slices.SortFunc(out, func(a, b keyport.WebhookHealth) int { return strings.Compare(a.ProviderID, b.ProviderID) })
	return out, nil
}

// AcquireLease takes or renews the module's admin-session lease in one
// upsert: the row is written only when it is new, already holder's, or
// expired, so exactly one of two racing sessions gets it. The session that
// gets it records the module's visit (last_seen) in the same go: on
// PostgreSQL in the same statement, one round trip.
func (r *repo) AcquireLease(ctx context.Context, moduleID int64, holder string, at, until time.Time) error {
	const upsert = `INSERT INTO admin_leases (module_id, holder, expires_at) VALUES (?, ?, ?)
		ON CONFLICT (module_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE admin_leases.holder = excluded.holder OR admin_leases.expires_at < ?`
	var n int64
	var err error
	if r.dialect == dialectPostgres {
		// A data-modifying WITH runs once, whether or not its rows are read.
		err = r.scanRow(ctx, `WITH l AS (`+upsert+` RETURNING module_id),
			t AS (UPDATE modules SET last_seen = ? WHERE id IN (SELECT module_id FROM l) RETURNING id)
			SELECT COUNT(*) FROM l`, []any{moduleID, holder, dbTime(until), dbTime(at), dbTime(at)}, &n)
	} else if n, err = affected(r.exec(ctx, upsert, moduleID, holder, dbTime(until), dbTime(at))); err == nil && n == 1 {
		_, err = r.exec(ctx, `UPDATE modules SET last_seen = ? WHERE id = ?`, dbTime(at), moduleID)
	}
	if err != nil {
		return wrap("acquire lease", err)
	}
	if n == 0 {
		return fmt.Errorf("store: acquire lease of module %d: another admin session holds it: %w", moduleID, keyport.ErrConflict)
	}
	return nil
}

// ReleaseLease deletes holder's lease of the module, if it still holds it;
// holder "" breaks the lease whoever holds it.
func (r *repo) ReleaseLease(ctx context.Context, moduleID int64, holder string) error {
	_, err := r.exec(ctx, `DELETE FROM admin_leases WHERE module_id = ? AND (holder = ? OR ? = '')`, moduleID, holder, holder)
	return wrap("release lease", err)
}

// ReleaseIdleLease deletes holder's lease of the module if the module has
// no pending card job (second-key or issuer), in one statement (jobs_module index).
func (r *repo) ReleaseIdleLease(ctx context.Context, moduleID int64, holder string) (bool, error) {
	kinds, kindArgs := in(keyport.CardJobKinds)
	n, err := affected(r.exec(ctx, `DELETE FROM admin_leases WHERE module_id = ? AND holder = ? AND NOT EXISTS
		(SELECT 1 FROM jobs WHERE jobs.module_id = ? AND jobs.state IN (?, ?) AND jobs.kind IN `+kinds+`)`,
		append([]any{moduleID, holder, moduleID, string(keyport.JobQueued), string(keyport.JobSent)}, kindArgs...)...))
	if err != nil {
		return false, wrap("release idle lease", err)
	}
	return n == 1, nil
}

// SetDomainKeys records the key set the card confirmed; the counter it
// records is known again (seq_unverified cleared).
func (r *repo) SetDomainKeys(ctx context.Context, domainID int64, kvn int, kcv map[keyport.KeyUsage]string, seq int) error {
	// Past gorm (direct.go): every counter a card reports writes it.
	set, args, err := keysSet(kvn, kcv, seq)
	if err != nil {
		return err
	}
	n, err := affected(r.exec(ctx, `UPDATE domains SET updated_at = ?`+set+` WHERE id = ?`, append(append([]any{now()}, args...), domainID)...))
	if err != nil {
		return wrap("set domain keys", err)
	}
	if n != 1 {
		return fmt.Errorf("store: set domain keys %d: %w", domainID, keyport.ErrNotFound)
	}
	return nil
}

// keysSet is the assignments, with their arguments, that record a key set
// the card confirmed (SetDomainKeys, MoveDomainKeys): KVN, counter (known
// again), and the KCVs unless kcv is nil.
func keysSet(kvn int, kcv map[keyport.KeyUsage]string, seq int) (string, []any, error) {
	set, args := `, kvn = ?, seq_counter = ?, seq_unverified = ?`, []any{kvn, seq, false}
	if kcv != nil {
		b, err := json.Marshal(kcv)
		if err != nil {
			return "", nil, err
		}
		set += `, kcv = ?`
		args = append(args, string(b))
	}
	return set, args, nil
}

// SetCounterUnverified sets or clears the domain's unverified-counter mark.
func (r *repo) SetCounterUnverified(ctx context.Context, domainID int64, unverified bool) error {
	return r.updateRow(ctx, "set counter unverified", "domains", domainID, map[string]any{"seq_unverified": unverified, "updated_at": now()})
}

// kindStrings is ks for an IN clause.
func kindStrings(ks []keyport.JobKind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}
