package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"gorm.io/gorm"

	"github.com/keyport/keyport"
)

// Staged imports (keyport.Import, migration 17). An import's modules carry
// its id in modules.import_id while it loads: every read of modules that a
// provider, a claim, a campaign or the statistics reach leaves such rows
// out. Publishing clears the column; dropping deletes the rows.

// importPublishChunk is how many modules one transaction of PublishImport
// shows, and importDropChunk how many DropImport deletes with their domains.
const (
	importPublishChunk = 2000
	importDropChunk    = 500
)

type importRow struct {
	ID        int64     `gorm:"column:id;primaryKey"`
	BatchID   int64     `gorm:"column:batch_id"`
	State     string    `gorm:"column:state"`
	Modules   int       `gorm:"column:modules"`
	StartedAt time.Time `gorm:"column:started_at"`
	UpdatedAt time.Time `gorm:"column:updated_at"`
}

func (importRow) TableName() string { return "imports" }

func (row importRow) model() keyport.Import {
	return keyport.Import{ID: row.ID, BatchID: row.BatchID, State: keyport.ImportState(row.State), Modules: row.Modules,
		StartedAt: row.StartedAt.UTC(), UpdatedAt: row.UpdatedAt.UTC()}
}

// BeginImport records a LOADING import into the batch.
func (r *repo) BeginImport(ctx context.Context, batchID int64) (*keyport.Import, error) {
	if err := batchExists(r.r.WithContext(ctx), "begin import", batchID); err != nil {
		return nil, err
	}
	at := now()
	row := importRow{BatchID: batchID, State: string(keyport.ImportLoading), StartedAt: at, UpdatedAt: at}
	if err := r.w.WithContext(ctx).Create(&row).Error; err != nil {
		return nil, wrap("begin import", err)
	}
	imp := row.model()
	return &imp, nil
}

// StageModules stores the modules a chunk a transaction, each with the
// import's id, and touches the import in the same transaction; a chunk
// finding the import no longer LOADING fails with ErrConflict and stores
// nothing.
func (r *repo) StageModules(ctx context.Context, imp *keyport.Import, next func() (*keyport.ModuleImport, error)) (int, error) {
	im := &importer{ctx: ctx, dialect: r.dialect, batchID: imp.BatchID, importID: sql.NullInt64{Int64: imp.ID, Valid: true}, at: now()}
	return inChunks(next, func(chunk []keyport.ModuleImport) error {
		return r.writeTx(ctx, "stage modules", func(db *gorm.DB) error {
			res := db.Exec(`UPDATE imports SET modules = modules + ?, updated_at = ? WHERE id = ? AND state = ?`,
				len(chunk), now(), imp.ID, string(keyport.ImportLoading))
			if res.Error != nil {
				return wrap("stage modules", res.Error)
			}
			if res.RowsAffected != 1 {
				return fmt.Errorf("store: stage modules: import %d is no longer loading (taken for abandoned): %w",
					imp.ID, keyport.ErrConflict)
			}
			im.conn = connOf(db)
			return im.flush(chunk)
		})
	})
}

// CommitImport moves the import LOADING → PUBLISHING.
func (r *repo) CommitImport(ctx context.Context, id int64, modules int) error {
	res := r.w.WithContext(ctx).Exec(`UPDATE imports SET state = ?, modules = ?, updated_at = ? WHERE id = ? AND state = ?`,
		string(keyport.ImportPublishing), modules, now(), id, string(keyport.ImportLoading))
	if res.Error != nil {
		return wrap("commit import", res.Error)
	}
	if res.RowsAffected != 1 {
		return fmt.Errorf("store: commit import %d: no longer loading (taken for abandoned): %w", id, keyport.ErrConflict)
	}
	return nil
}

// PublishImport clears import_id of up to importPublishChunk modules a
// transaction, touching the import in each, and deletes the import once
// none is left. Publishers racing each other (a slow one and the sweep)
// only share the work.
func (r *repo) PublishImport(ctx context.Context, id int64) error {
	for {
		done := false
		err := r.writeTx(ctx, "publish import", func(db *gorm.DB) error {
			res := db.Exec(`UPDATE imports SET updated_at = ? WHERE id = ? AND state = ?`, now(), id, string(keyport.ImportPublishing))
			if res.Error != nil {
				return wrap("publish import", res.Error)
			}
			if res.RowsAffected != 1 {
				done = true // published meanwhile, or unknown
				return nil
			}
			res = db.Exec(`UPDATE modules SET import_id = NULL WHERE id IN
				(SELECT id FROM modules WHERE import_id = ? ORDER BY id LIMIT ?)`, id, importPublishChunk)
			if res.Error != nil {
				return wrap("publish import", res.Error)
			}
			if res.RowsAffected < importPublishChunk {
				done = true
				return wrap("publish import", db.Exec(`DELETE FROM imports WHERE id = ?`, id).Error)
			}
			return nil
		})
		if err != nil || done {
			return err
		}
	}
}

// DropImport marks the import DROPPING (so that its loader's next chunk
// fails), then deletes its modules with their domains and OTA rows, a chunk
// a transaction, then the import.
func (r *repo) DropImport(ctx context.Context, id int64) error {
	// One conditional UPDATE decides against a CommitImport racing it: on
	// PostgreSQL it waits for the commit's row lock and then re-checks
	// the state (a read first, then a plain UPDATE, would have dropped an
	// import committed in between, audit event and all).
	dropping := false
	err := r.writeTx(ctx, "drop import", func(db *gorm.DB) error {
		res := db.Exec(`UPDATE imports SET state = ?, updated_at = ? WHERE id = ? AND state IN (?, ?)`,
			string(keyport.ImportDropping), now(), id, string(keyport.ImportLoading), string(keyport.ImportDropping))
		if res.Error != nil {
			return wrap("drop import", res.Error)
		}
		if dropping = res.RowsAffected == 1; dropping {
			return nil
		}
		var rows []string
		if err := db.Raw(`SELECT state FROM imports WHERE id = ?`, id).Scan(&rows).Error; err != nil {
			return wrap("drop import", err)
		}
		if len(rows) == 0 {
			return nil // dropped or published already
		}
		return fmt.Errorf("store: drop import %d: it is committed and being published: %w", id, keyport.ErrConflict)
	})
	if err != nil || !dropping {
		return err
	}
	const some = `(SELECT id FROM modules WHERE import_id = ? ORDER BY id LIMIT ?)`
	for {
		var n int64
		err := r.writeTx(ctx, "drop import", func(db *gorm.DB) error {
			// The domains by EID: their (eid, aid) index is the one they have.
			stmts := []string{
				`DELETE FROM domains WHERE eid IN (SELECT eid FROM modules WHERE id IN ` + some + `)`,
				`DELETE FROM module_ota WHERE module_id IN ` + some,
				`DELETE FROM modules WHERE id IN ` + some,
			}
			for _, q := range stmts {
				res := db.Exec(q, id, importDropChunk)
				if res.Error != nil {
					return wrap("drop import", res.Error)
				}
				n = res.RowsAffected
			}
			return wrap("drop import", db.Exec(`UPDATE imports SET updated_at = ? WHERE id = ?`, now(), id).Error)
		})
		if err != nil {
			return err
		}
		if n < importDropChunk {
			break
		}
	}
	return wrap("drop import", r.w.WithContext(ctx).Exec(`DELETE FROM imports WHERE id = ?`, id).Error)
}

// StaleImports returns imports untouched since before (any, for the zero
// time), oldest first.
func (r *repo) StaleImports(ctx context.Context, before time.Time, limit int) ([]keyport.Import, error) {
	var rows []importRow
	q := r.r.WithContext(ctx)
	if !before.IsZero() {
		q = q.Where("updated_at < ?", dbTime(before))
	}
	if err := q.Order("updated_at, id").Limit(limit).Find(&rows).Error; err != nil {
		return nil, wrap("stale imports", err)
	}
	out := make([]keyport.Import, len(rows))
	for i, row := range rows {
		out[i] = row.model()
	}
	return out, nil
}
