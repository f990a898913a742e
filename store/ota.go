package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// SMS reach (migration 11): one module_ota row per module, made by the
// first write that needs it.

const ensureOTARow = `INSERT INTO module_ota (module_id) VALUES (?) ON CONFLICT (module_id) DO NOTHING`

// GetModuleOTA returns the module's MSISDN, OTA key set and counter, and
// whether the MSISDN is still shared: marked msisdn_shared (migration 20)
// and some other module still has it. A mark alone does not say so: it
// stays on the one module left with the number once an admin has cleared
// it on the others, until it is set there again, and by then
// ModuleByMSISDN attributes the number's PoRs to that module and
// SharedMSISDNs no longer lists it.
func (r *repo) GetModuleOTA(ctx context.Context, moduleID int64) (*keyport.ModuleOTA, error) {
	var row struct {
		MSISDN  string         `gorm:"column:msisdn"`
		KVN     int            `gorm:"column:ota_kvn"`
		Keys    sql.NullString `gorm:"column:ota_keys"`
		Counter int64          `gorm:"column:ota_counter"`
		Shared  bool           `gorm:"column:shared"`
	}
	res := r.r.WithContext(ctx).Raw(`SELECT o.msisdn, o.ota_kvn, o.ota_keys, o.ota_counter,
		o.msisdn_shared AND EXISTS (SELECT 1 FROM module_ota s WHERE s.msisdn = o.msisdn AND s.msisdn <> '' AND s.module_id <> o.module_id) AS shared
		FROM module_ota o WHERE o.module_id = ?`, moduleID).Scan(&row)
	if res.Error != nil {
		return nil, wrap("get module OTA", res.Error)
	}
	o := &keyport.ModuleOTA{ModuleID: moduleID, MSISDN: row.MSISDN, KVN: row.KVN, Counter: uint64(row.Counter), Shared: row.Shared}
	if row.Keys.Valid && row.Keys.String != "" {
		if err := json.Unmarshal([]byte(row.Keys.String), &o.Keys); err != nil {
			// The text is wrapped key material: name the module, not the value.
			return nil, fmt.Errorf("store: module %d: OTA keys are not valid JSON", moduleID)
		}
	}
	return o, nil
}

// One number, one module (migration 20). The unique index refuses a
// second module any MSISDN set since it was made, whatever the race: on
// PostgreSQL the second of two transactions writing a number waits for the
// first and then fails; on SQLite writers take turns anyway. The numbers
// several modules had before it are marked msisdn_shared and left out of
// the index, so every writer also looks, in its own transaction, for any
// module that has the number, marked or not: a marked number is only ever
// cleared or set again (which unmarks it), so no writer can give it to a
// further module. The look also names the module: only admins write
// MSISDNs (Service.SetMSISDN, an import, perso's RegisterModule) and an
// admin sees every module, so the error may say which one has the number.

// msisdnHolder is a module that has an MSISDN.
type msisdnHolder struct {
	eid string
	// importID is the import still loading that stored the module; NULL
	// for a module shown.
	importID sql.NullInt64
}

// msisdnHolders returns, by number, the module with the lowest id, other
// than module except (0: any), that has one of the numbers, read on conn
// (a transaction's, below gorm).
func msisdnHolders(ctx context.Context, conn gorm.ConnPool, d dialect, numbers []string, except int64) (map[string]msisdnHolder, error) {
	list, args := in(numbers)
	q := `SELECT o.msisdn, m.eid, m.import_id FROM module_ota o JOIN modules m ON m.id = o.module_id
		WHERE o.msisdn IN ` + list + ` AND o.module_id <> ? ORDER BY m.id`
	if d == dialectPostgres {
		q = numbered(q)
	}
	rows, err := conn.QueryContext(ctx, q, append(args, except)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	held := map[string]msisdnHolder{}
	for rows.Next() {
		var n string
		var h msisdnHolder
		if err := rows.Scan(&n, &h.eid, &h.importID); err != nil {
			return nil, err
		}
		if _, ok := held[n]; !ok {
			held[n] = h
		}
	}
	return held, rows.Err()
}

// taken is the error of a writer giving msisdn, which h has, to another
// module; importID is the import the writer stores for (NULL: none). It
// names the number masked (keyport.MaskedMSISDN), as every error here
// does: the admin who wrote it knows it, and the text may be logged.
func (h msisdnHolder) taken(msisdn string, importID sql.NullInt64) error {
	switch {
	case h.importID.Valid && h.importID == importID:
		return fmt.Errorf("MSISDN %s is module %s's already, earlier in this file (a number reaches one module): %w",
			keyport.MaskedMSISDN(msisdn), h.eid, keyport.ErrConflict)
	case h.importID.Valid:
		return fmt.Errorf("MSISDN %s is module %s's already, of an import still loading (a number reaches one module): %w",
			keyport.MaskedMSISDN(msisdn), h.eid, keyport.ErrConflict)
	}
	return fmt.Errorf("MSISDN %s is module %s's already (a number reaches one module): clear it there first: %w",
		keyport.MaskedMSISDN(msisdn), h.eid, keyport.ErrConflict)
}

// takenMeanwhile is the error of a writer whose number the unique index
// refused: another transaction gave it to a module after the writer
// looked.
func takenMeanwhile(msisdn string) error {
	return fmt.Errorf("MSISDN %s was given to another module at the same time (a number reaches one module): %w",
		keyport.MaskedMSISDN(msisdn), keyport.ErrConflict)
}

// SetModuleMSISDN sets or clears the module's MSISDN; ErrConflict when
// another module has it.
func (r *repo) SetModuleMSISDN(ctx context.Context, moduleID int64, msisdn string) error {
	const op = "set module MSISDN"
	return r.writeTx(ctx, op, func(db *gorm.DB) error {
		if msisdn != "" {
			held, err := msisdnHolders(ctx, connOf(db), r.dialect, []string{msisdn}, moduleID)
			if err != nil {
				return wrap(op, err)
			}
			if h, ok := held[msisdn]; ok {
				return fmt.Errorf("store: %s: %w", op, h.taken(msisdn, sql.NullInt64{}))
			}
		}
		if err := db.Exec(ensureOTARow, moduleID).Error; err != nil {
			return wrap(op, err)
		}
		err := db.Exec(`UPDATE module_ota SET msisdn = ?, msisdn_shared = FALSE WHERE module_id = ?`, msisdn, moduleID).Error
		if msisdn != "" && errors.Is(mapErr(err), keyport.ErrConflict) {
			return fmt.Errorf("store: %s: %w", op, takenMeanwhile(msisdn))
		}
		return wrap(op, err)
	})
}

// SetModuleOTAKeys stores the module's OTA key set.
func (r *repo) SetModuleOTAKeys(ctx context.Context, moduleID int64, kvn int, keys keyport.KeyBlobs) error {
	return r.writeTx(ctx, "set module OTA keys", func(db *gorm.DB) error {
		if err := db.Exec(ensureOTARow, moduleID).Error; err != nil {
			return wrap("set module OTA keys", err)
		}
		return wrap("set module OTA keys", db.Exec(`UPDATE module_ota SET ota_kvn = ?, ota_keys = ? WHERE module_id = ?`,
			kvn, string(appendWrapped(nil, keys)), moduleID).Error)
	})
}

// NextOTACounter increments the counter in one UPDATE … RETURNING: two
// callers never get the same value, on any replica.
func (r *repo) NextOTACounter(ctx context.Context, moduleID int64) (uint64, error) {
	var next []int64
	err := r.writeTx(ctx, "next OTA counter", func(db *gorm.DB) error {
		if err := db.Exec(ensureOTARow, moduleID).Error; err != nil {
			return wrap("next OTA counter", err)
		}
		return wrap("next OTA counter", db.Raw(`UPDATE module_ota SET ota_counter = ota_counter + 1
			WHERE module_id = ? AND ota_counter < ? RETURNING ota_counter`, moduleID, int64(gp.MaxCounter)).Scan(&next).Error)
	})
	if err != nil {
		return 0, err
	}
	if len(next) != 1 {
		return 0, fmt.Errorf("store: module %d: the SCP80 counter is exhausted: %w", moduleID, keyport.ErrConflict)
	}
	return uint64(next[0]), nil
}

// RaiseOTACounter moves the module's SCP80 counter from `from` to `to`,
// only if it is still `from`.
func (r *repo) RaiseOTACounter(ctx context.Context, moduleID int64, from, to uint64) (bool, error) {
	if to <= from || to > gp.MaxCounter {
		return false, nil
	}
	res := r.w.WithContext(ctx).Exec(`UPDATE module_ota SET ota_counter = ? WHERE module_id = ? AND ota_counter = ?`,
		int64(to), moduleID, int64(from))
	if res.Error != nil {
		return false, wrap("raise OTA counter", res.Error)
	}
	return res.RowsAffected == 1, nil
}

// ModuleByMSISDN returns the EID of the module shown with the MSISDN;
// ErrConflict when several have it (a database from before migration 20).
func (r *repo) ModuleByMSISDN(ctx context.Context, msisdn string) (keyport.EID, error) {
	var eids []string
	if err := r.r.WithContext(ctx).Raw(`SELECT m.eid FROM module_ota o JOIN modules m ON m.id = o.module_id
		WHERE o.msisdn = ? AND o.msisdn <> '' AND m.import_id IS NULL ORDER BY m.id LIMIT ?`, msisdn, maxSharedListed).
		Scan(&eids).Error; err != nil {
		return "", wrap("module by MSISDN", err)
	}
	switch len(eids) {
	case 0:
		return "", fmt.Errorf("store: module by MSISDN: %w", keyport.ErrNotFound)
	case 1:
		return keyport.EID(eids[0]), nil
	}
	return "", fmt.Errorf("store: module by MSISDN: %s is the MSISDN of several modules (%s), from before keyport refused a shared number: %w",
		keyport.MaskedMSISDN(msisdn), strings.Join(eids, ", "), keyport.ErrConflict)
}

// maxSharedListed bounds the modules an error or SharedMSISDNs names for
// one number.
const maxSharedListed = 10

// SharedMSISDNs returns the numbers that several modules have, in order,
// each with its modules (up to maxSharedListed) by id.
func (r *repo) SharedMSISDNs(ctx context.Context) ([]keyport.SharedMSISDN, error) {
	var rows []struct {
		MSISDN string `gorm:"column:msisdn"`
		EID    string `gorm:"column:eid"`
	}
	if err := r.r.WithContext(ctx).Raw(`SELECT o.msisdn, m.eid FROM module_ota o JOIN modules m ON m.id = o.module_id
		WHERE o.msisdn IN (SELECT msisdn FROM module_ota WHERE msisdn <> '' GROUP BY msisdn HAVING COUNT(*) > 1)
		ORDER BY o.msisdn, m.id`).Scan(&rows).Error; err != nil {
		return nil, wrap("shared MSISDNs", err)
	}
	var out []keyport.SharedMSISDN
	for _, row := range rows {
		if len(out) == 0 || out[len(out)-1].MSISDN != row.MSISDN {
			out = append(out, keyport.SharedMSISDN{MSISDN: row.MSISDN})
		}
		if sh := &out[len(out)-1]; len(sh.EIDs) < maxSharedListed {
			sh.EIDs = append(sh.EIDs, keyport.EID(row.EID))
		} else {
			sh.More++
		}
	}
	return out, nil
}

// oneEID runs query for the EID in its first row; ErrNotFound for none.
func (r *repo) oneEID(ctx context.Context, op, query string, args ...any) (keyport.EID, error) {
	var eids []string
	if err := r.r.WithContext(ctx).Raw(query, args...).Scan(&eids).Error; err != nil {
		return "", wrap(op, err)
	}
	if len(eids) == 0 {
		return "", fmt.Errorf("store: %s: %w", op, keyport.ErrNotFound)
	}
	return keyport.EID(eids[0]), nil
}

// RecordSMS notes the SMSC's message ids of a trigger SMS to module eid,
// sent at `at`, and deletes the notes older than `keep` before that. An id
// the SMSC gives again names the newer message. The module is found by
// its EID in the same statement; ErrNotFound if there is none.
func (r *repo) RecordSMS(ctx context.Context, eid keyport.EID, ids []string, at time.Time, keep time.Duration) error {
	if len(ids) == 0 {
		return nil
	}
	return r.writeTx(ctx, "record SMS", func(db *gorm.DB) error {
		if err := db.Exec(`DELETE FROM sms_messages WHERE sent_at < ?`, dbTime(at.Add(-keep))).Error; err != nil {
			return wrap("record SMS", err)
		}
		for _, id := range ids {
			res := db.Exec(`INSERT INTO sms_messages (message_id, module_id, sent_at) SELECT ?, m.id, ? FROM modules m WHERE m.eid = ?
				ON CONFLICT (message_id) DO UPDATE SET module_id = excluded.module_id, sent_at = excluded.sent_at`,
				id, dbTime(at), string(eid))
			if res.Error != nil {
				return wrap("record SMS", res.Error)
			}
			if res.RowsAffected == 0 {
				return fmt.Errorf("store: record SMS: module %s: %w", eid, keyport.ErrNotFound)
			}
		}
		return nil
	})
}

// ModuleBySMS returns the EID of the module a trigger SMS with the SMSC's
// message id went to; ErrNotFound for an id not recorded (or no longer).
func (r *repo) ModuleBySMS(ctx context.Context, messageID string) (keyport.EID, error) {
	return r.oneEID(ctx, "module by SMS", `SELECT m.eid FROM sms_messages s JOIN modules m ON m.id = s.module_id
		WHERE s.message_id = ?`, messageID)
}
