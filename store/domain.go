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

type batchRow struct {
	ID        int64     `gorm:"column:id;primaryKey"`
	Name      string    `gorm:"column:name"`
	KeySource string    `gorm:"column:key_source"`
	AIDPrefix string    `gorm:"column:aid_prefix"`
	CreatedAt time.Time `gorm:"column:created_at"`
}

func (batchRow) TableName() string { return "batches" }

func (b batchRow) model() *keyport.Batch {
	return &keyport.Batch{ID: b.ID, Name: b.Name, KeySource: keyport.KeySource(b.KeySource),
		AIDPrefix: keyport.AID(b.AIDPrefix), CreatedAt: b.CreatedAt.UTC()}
}

// CreateBatch inserts b and sets its ID and CreatedAt; ErrConflict on a taken name.
func (r *repo) CreateBatch(ctx context.Context, b *keyport.Batch) error {
	row := batchRow{Name: b.Name, KeySource: string(b.KeySource), AIDPrefix: string(b.AIDPrefix),
		CreatedAt: dbTime(b.CreatedAt)}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return wrap("create batch", err)
	}
	b.ID, b.CreatedAt = row.ID, row.CreatedAt
	return nil
}

// GetBatch returns the batch named name; ErrNotFound if there is none.
func (r *repo) GetBatch(ctx context.Context, name string) (*keyport.Batch, error) {
	var row batchRow
	if err := r.r.WithContext(ctx).Where("name = ?", name).Take(&row).Error; err != nil {
		return nil, wrap("get batch", err)
	}
	return row.model(), nil
}

// GetBatchByID returns the batch with id; ErrNotFound if there is none.
func (r *repo) GetBatchByID(ctx context.Context, id int64) (*keyport.Batch, error) {
	var row batchRow
	if err := r.r.WithContext(ctx).Where("id = ?", id).Take(&row).Error; err != nil {
		return nil, wrap("get batch", err)
	}
	return row.model(), nil
}

type moduleRow struct {
	ID        int64          `gorm:"column:id;primaryKey"`
	EID       string         `gorm:"column:eid"`
	BatchID   int64          `gorm:"column:batch_id"`
	ISDAID    string         `gorm:"column:isd_aid"`
	LastSeen  *time.Time     `gorm:"column:last_seen"`
	CreatedAt time.Time      `gorm:"column:created_at"`
	ISDKeys   sql.NullString `gorm:"column:isd_keys"`
	PSK       []byte         `gorm:"column:psk_sealed"`
}

func (moduleRow) TableName() string { return "modules" }

type domainRow struct {
	ID            int64          `gorm:"column:id;primaryKey"`
	ModuleID      int64          `gorm:"column:module_id"`
	EID           string         `gorm:"column:eid"`
	AID           string         `gorm:"column:aid"`
	KVN           int            `gorm:"column:kvn"`
	State         string         `gorm:"column:state"`
	PriorState    string         `gorm:"column:prior_state"`
	OwnerID       sql.NullString `gorm:"column:owner_id"`
	KeySource     string         `gorm:"column:key_source"`
	Wrapped       sql.NullString `gorm:"column:wrapped"`
	KCV           sql.NullString `gorm:"column:kcv"`
	SeqCounter    int            `gorm:"column:seq_counter"`
	SeqUnverified bool           `gorm:"column:seq_unverified"`
	UpdatedAt     time.Time      `gorm:"column:updated_at"`
}

func (domainRow) TableName() string { return "domains" }

func (d domainRow) model() (keyport.Domain, error) {
	m := keyport.Domain{ID: d.ID, ModuleID: d.ModuleID, EID: keyport.EID(d.EID), AID: keyport.AID(d.AID),
		KVN: d.KVN, State: keyport.DomainState(d.State), PriorState: keyport.DomainState(d.PriorState),
		OwnerID: d.OwnerID.String, KeySource: keyport.KeySource(d.KeySource), SeqCounter: d.SeqCounter,
		SeqUnverified: d.SeqUnverified, UpdatedAt: d.UpdatedAt.UTC()}
	if d.Wrapped.Valid && d.Wrapped.String != "" {
		if err := json.Unmarshal([]byte(d.Wrapped.String), &m.Wrapped); err != nil {
			// The text may be wrapped key material: name the domain, not the value.
			return m, fmt.Errorf("domain %d: wrapped keys are not valid JSON", d.ID)
		}
	}
	if d.KCV.Valid && d.KCV.String != "" {
		if err := json.Unmarshal([]byte(d.KCV.String), &m.KCV); err != nil {
			return m, fmt.Errorf("domain %d: KCVs are not valid JSON", d.ID)
		}
	}
	return m, nil
}

const domainColumns = `id, module_id, eid, aid, kvn, state, prior_state, owner_id, key_source, wrapped, kcv, seq_counter, seq_unverified, updated_at`

// scanDomains reads rows of domainColumns, prefixed by the values in pre for
// the first row only (GetModule's module columns), without gorm's reflection:
// lookups are the hot read path.
func scanDomains(rows *sql.Rows, pre ...any) ([]keyport.Domain, error) {
	defer rows.Close()
	var out []keyport.Domain
	for rows.Next() {
		var d domainRow
		var id, moduleID sql.NullInt64
		var eid, aid, state, prior, keySource sql.NullString
		var kvn, seq sql.NullInt64
		var updated sql.NullTime
		dest := append(pre[:len(pre):len(pre)], &id, &moduleID, &eid, &aid, &kvn, &state, &prior, &d.OwnerID,
			&keySource, &d.Wrapped, &d.KCV, &seq, &d.SeqUnverified, &updated)
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		if !id.Valid { // GetModule's LEFT JOIN: a module without domains
			continue
		}
		d.ID, d.ModuleID, d.EID, d.AID, d.KVN = id.Int64, moduleID.Int64, eid.String, aid.String, int(kvn.Int64)
		d.State, d.PriorState, d.KeySource, d.SeqCounter = state.String, prior.String, keySource.String, int(seq.Int64)
		d.UpdatedAt = updated.Time
		m, err := d.model()
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// GetModule returns the module with its domains in AID order, in one query.
func (r *repo) GetModule(ctx context.Context, eid keyport.EID) (*keyport.Module, error) {
	rows, err := r.r.WithContext(ctx).Raw(`SELECT m.id, m.batch_id, m.isd_aid, m.last_seen, m.created_at, m.isd_keys, m.psk_sealed, `+
		prefixed("d.", domainColumns)+` FROM modules m LEFT JOIN domains d ON d.eid = m.eid
		WHERE m.eid = ? AND m.import_id IS NULL ORDER BY d.aid`, string(eid)).Rows()
	if err != nil {
		return nil, wrap("get module", err)
	}
	var mod moduleRow
	var lastSeen sql.NullTime
	mod.ID = -1
	domains, err := scanDomains(rows, &mod.ID, &mod.BatchID, &mod.ISDAID, &lastSeen, &mod.CreatedAt, &mod.ISDKeys, &mod.PSK)
	if err != nil {
		return nil, wrap("get module", err)
	}
	if mod.ID == -1 {
		return nil, wrap("get module", keyport.ErrNotFound)
	}
	for i := range domains {
		domains[i].BatchID = mod.BatchID
	}
	m, err := mod.model(eid, domains)
	if err != nil {
		return nil, wrap("get module", err)
	}
	if lastSeen.Valid {
		t := lastSeen.Time.UTC()
		m.LastSeen = &t
	}
	return m, nil
}

// GetAdminModule reads the three columns a handshake needs: every admin
// session starts with it, for a module the admin server has not cached, so
// it reads neither the domains nor the ISD key blobs GetModule does.
func (r *repo) GetAdminModule(ctx context.Context, eid keyport.EID) (*keyport.AdminModule, error) {
	// Past gorm (direct.go): a handshake whose module is not cached waits
	// for this read.
	rows, err := r.query(ctx, `SELECT id, isd_aid, psk_sealed FROM modules WHERE eid = ? AND import_id IS NULL`, string(eid))
	if err != nil {
		return nil, wrap("get admin module", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, wrap("get admin module", err)
		}
		return nil, wrap("get admin module", keyport.ErrNotFound)
	}
	m := &keyport.AdminModule{EID: eid}
	if err := rows.Scan(&m.ID, &m.ISDAID, &m.PSK); err != nil {
		return nil, wrap("get admin module", err)
	}
	return m, nil
}

func (mod moduleRow) model(eid keyport.EID, domains []keyport.Domain) (*keyport.Module, error) {
	m := &keyport.Module{ID: mod.ID, EID: eid, BatchID: mod.BatchID, ISDAID: keyport.AID(mod.ISDAID),
		CreatedAt: mod.CreatedAt.UTC(), Domains: domains, PSK: mod.PSK}
	if mod.ISDKeys.Valid && mod.ISDKeys.String != "" {
		if err := json.Unmarshal([]byte(mod.ISDKeys.String), &m.ISDKeys); err != nil {
			// The text is wrapped key material: name the module, not the value.
			return nil, fmt.Errorf("module %d: ISD keys are not valid JSON", mod.ID)
		}
	}
	return m, nil
}

func prefixed(prefix, columns string) string {
	parts := strings.Split(columns, ", ")
	for i := range parts {
		parts[i] = prefix + parts[i]
	}
	return strings.Join(parts, ", ")
}

// GetDomain returns one domain; ErrNotFound if unknown.
func (r *repo) GetDomain(ctx context.Context, eid keyport.EID, aid keyport.AID) (*keyport.Domain, error) {
	return r.oneDomain(ctx, "get domain",
		`SELECT `+domainBatch+domainColumns+` FROM domains WHERE eid = ? AND aid = ?`, string(eid), string(aid))
}

// FirstUnassigned returns the module's UNASSIGNED domain with the lowest AID;
// ErrNotFound if the module is unknown or has none left.
func (r *repo) FirstUnassigned(ctx context.Context, eid keyport.EID) (*keyport.Domain, error) {
	return r.oneDomain(ctx, "first unassigned domain",
		`SELECT `+domainBatch+domainColumns+` FROM domains WHERE eid = ? AND state = ? ORDER BY aid LIMIT 1`,
		string(eid), string(keyport.Unassigned))
}

// domainBatch selects a domain's batch ID ahead of domainColumns, so that a
// claim needs no second query for its module. It is NULL for a domain of a
// module an unpublished import stored: such a domain is not found.
const domainBatch = `(SELECT m.batch_id FROM modules m WHERE m.id = domains.module_id AND m.import_id IS NULL), `

// oneDomain runs a query of domainBatch + domainColumns for one domain.
func (r *repo) oneDomain(ctx context.Context, op, query string, args ...any) (*keyport.Domain, error) {
	rows, err := r.query(ctx, query, args...)
	if err != nil {
		return nil, wrap(op, err)
	}
	var batchID sql.NullInt64
	domains, err := scanDomains(rows, &batchID)
	if err != nil {
		return nil, wrap(op, err)
	}
	if len(domains) == 0 || !batchID.Valid {
		return nil, wrap(op, keyport.ErrNotFound)
	}
	domains[0].BatchID = batchID.Int64
	return &domains[0], nil
}

// ListDomains returns the provider's domains, most recently changed first.
func (r *repo) ListDomains(ctx context.Context, providerID string) ([]keyport.Domain, error) {
	rows, err := r.r.WithContext(ctx).Raw(`SELECT `+domainColumns+` FROM domains WHERE owner_id = ?
		ORDER BY updated_at DESC, id DESC`, providerID).Rows()
	if err != nil {
		return nil, wrap("list domains", err)
	}
	out, err := scanDomains(rows)
	if err != nil {
		return nil, wrap("list domains", err)
	}
	return out, nil
}

// TransitionDomain moves the domain from one of `from` to `to` in one
// conditional UPDATE. Under concurrency the database decides: on PostgreSQL
// (READ COMMITTED) a second UPDATE waits for the first's row lock and then
// re-checks the WHERE clause against the committed row; on SQLite the writer
// runs one transaction at a time. Either way exactly one caller wins and the
// others get ErrConflict. Moving to LOCKED records the state left in
// prior_state, for unlock. An empty *owner clears the owner.
func (r *repo) TransitionDomain(ctx context.Context, domainID int64, from []keyport.DomainState,
	to keyport.DomainState, owner *string) error {
	return r.transition(ctx, "transition domain", domainID, from, to, owner, "")
}

// MoveDomainKeys is TransitionDomain and SetDomainKeys in one conditional
// UPDATE: a confirmed key change's domain write, one statement (and on
// PostgreSQL one round trip) where it was two.
func (r *repo) MoveDomainKeys(ctx context.Context, domainID int64, from []keyport.DomainState, to keyport.DomainState,
	owner *string, kvn int, kcv map[keyport.KeyUsage]string, seq int) error {
	set, args, err := keysSet(kvn, kcv, seq)
	if err != nil {
		return err
	}
	return r.transition(ctx, "move domain keys", domainID, from, to, owner, set, args...)
}

// transition is TransitionDomain, with more assignments (set, with their
// args) in the same UPDATE.
func (r *repo) transition(ctx context.Context, op string, domainID int64, from []keyport.DomainState,
	to keyport.DomainState, owner *string, more string, moreArgs ...any) error {
	if len(from) == 0 {
		return fmt.Errorf("store: %s: no source state: %w", op, keyport.ErrConflict)
	}
	set := `state = ?, updated_at = ?`
	args := []any{string(to), now()}
	if to == keyport.Locked {
		set += `, prior_state = state`
	}
	if owner != nil {
		set += `, owner_id = ?`
		args = append(args, sql.NullString{String: *owner, Valid: *owner != ""})
	}
	set += more
	args = append(args, moreArgs...)
	list, states := in(from)
	args = append(append(args, domainID), states...)
	if n, err := affected(r.exec(ctx, `UPDATE domains SET `+set+` WHERE id = ? AND state IN `+list, args...)); err != nil || n == 1 {
		return wrap(op, err)
	}
	var n int64
	if err := r.w.WithContext(ctx).Raw(`SELECT COUNT(*) FROM domains WHERE id = ?`, domainID).Scan(&n).Error; err != nil {
		return wrap(op, err)
	}
	if n == 0 {
		return fmt.Errorf("store: %s %d: %w", op, domainID, keyport.ErrNotFound)
	}
	return fmt.Errorf("store: %s %d to %s: not in %v: %w", op, domainID, to, from, keyport.ErrConflict)
}
