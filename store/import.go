package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/keyport/keyport"
)

// Import sizes. A million modules must load at ten thousand a second on
// SQLite, so rows go in hundreds per INSERT. Only one chunk of modules is
// held in memory at a time.
const importModulesPerChunk = 500

// rowsPerStatement is how many modules and domains one INSERT carries. On
// SQLite the rows travel as one JSON array read by json_each: the pure-Go
// driver re-parses a statement on every execution and finds each bound value
// by a linear search over the arguments, so a statement with thousands of
// placeholders costs more to bind and parse than to run. On PostgreSQL each
// statement is a network round trip and pgx binds in linear time, so rows go
// as plain parameters, up to PostgreSQL's limit of 65,535 per statement.
var rowsPerStatement = map[dialect]struct{ modules, domains int }{
	dialectSQLite:   {modules: 500, domains: 1000},
	dialectPostgres: {modules: 500, domains: 1000},
}

// ImportModules inserts the modules next yields into the batch in one
// transaction, streaming them in chunks. A module whose EID is already
// stored, or appeared earlier in the file, fails the whole import with a
// *keyport.LineError naming its line and wrapping keyport.ErrConflict; so does
// a module listing one AID twice. Errors from next abort the import as they are.
func (r *repo) ImportModules(ctx context.Context, batchID int64,
	next func() (*keyport.ModuleImport, error)) (int, error) {
	var total int
	err := r.writeTx(ctx, "import modules", func(db *gorm.DB) error {
		total = 0
		var n int64
		if err := db.Raw(`SELECT COUNT(*) FROM batches WHERE id = ?`, batchID).Scan(&n).Error; err != nil {
			return wrap("import modules", err)
		}
		if n == 0 {
			return fmt.Errorf("store: import modules: batch %d: %w", batchID, keyport.ErrNotFound)
		}
		im := &importer{ctx: ctx, dialect: r.dialect, conn: db.Statement.ConnPool, batchID: batchID, at: now()}
		chunk := make([]keyport.ModuleImport, 0, importModulesPerChunk)
		for {
			m, err := next()
			if err != nil {
				return fmt.Errorf("store: import modules: %w", err)
			}
			if m == nil {
				break
			}
			// A copy: next may reuse its value for the following line.
			chunk = append(chunk, *m)
			if len(chunk) == importModulesPerChunk {
				if err := im.flush(chunk); err != nil {
					return err
				}
				total += len(chunk)
				chunk = chunk[:0]
			}
		}
		if len(chunk) > 0 {
			if err := im.flush(chunk); err != nil {
				return err
			}
			total += len(chunk)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}

// importer writes chunks of modules and their domains through one
// transaction's connection, below gorm: building a statement of thousands of
// arguments through gorm's reflection would cost more than executing it.
type importer struct {
	ctx     context.Context
	dialect dialect
	conn    gorm.ConnPool
	batchID int64
	at      time.Time
	ids     map[string]int64 // the chunk's module IDs by EID
	rows    rowSet
	consts  domainConsts // of the domain rows in rows
}

func (im *importer) flush(chunk []keyport.ModuleImport) error {
	if err := checkChunk(chunk); err != nil {
		return err
	}
	if im.ids == nil {
		im.ids = make(map[string]int64, importModulesPerChunk)
	}
	clear(im.ids)
	per := rowsPerStatement[im.dialect]
	for start := 0; start < len(chunk); start += per.modules {
		if err := im.insertModules(chunk[start:min(start+per.modules, len(chunk))]); err != nil {
			return err
		}
	}
	if len(im.ids) != len(chunk) {
		for i := range chunk {
			if _, ok := im.ids[string(chunk[i].EID)]; !ok {
				return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: chunk[i].Line,
					Err: fmt.Errorf("EID %s is already stored or earlier in the file: %w",
						chunk[i].EID, keyport.ErrConflict)})
			}
		}
	}

	im.rows.reset(im.dialect)
	for i := range chunk {
		m := &chunk[i]
		id := im.ids[string(m.EID)]
		for j := range m.Domains {
			d := &m.Domains[j]
			c := domainConsts{kvn: int64(d.KVN), state: d.State, owner: d.OwnerID, keySource: d.KeySource,
				seq: int64(d.SeqCounter)}
			if c.state == "" {
				c.state = keyport.Unassigned
			}
			if im.rows.n > 0 && (c != im.consts || im.rows.n == per.domains) {
				if err := im.insertDomains(); err != nil {
					return err
				}
			}
			im.consts = c
			imported, kcv := domainJSON(d)
			if im.dialect == dialectSQLite {
				im.rows.row(id, string(d.AID), imported, kcv)
			} else {
				im.rows.row(id, string(m.EID), string(d.AID), imported, kcv)
			}
		}
	}
	if im.rows.n > 0 {
		return im.insertDomains()
	}
	return nil
}

// domainConsts are the domain columns that are the same for every domain of
// a typical import file. They go into the INSERT once, as constants, rather
// than in every row: on SQLite each column of a row costs a JSON extraction.
// A row that differs starts a new statement.
type domainConsts struct {
	kvn, seq  int64
	state     keyport.DomainState
	owner     string
	keySource keyport.KeySource
}

// insertModules inserts ms and records their IDs in im.ids. ON CONFLICT DO
// NOTHING leaves out an EID that is already stored (earlier chunks of this
// import are stored too) instead of aborting the transaction, so the missing
// rows name the offending lines.
func (im *importer) insertModules(ms []keyport.ModuleImport) error {
	im.rows.reset(im.dialect)
	for i := range ms {
		im.rows.row(string(ms[i].EID), string(ms[i].ISDAID))
	}
	// "WHERE true": SQLite's parser needs a WHERE before an upsert's ON
	// CONFLICT in INSERT … SELECT.
	query, args := im.rows.statement(`INSERT INTO modules (eid, isd_aid, batch_id, created_at)`,
		[]any{im.batchID, im.at}, ` WHERE true ON CONFLICT (eid) DO NOTHING RETURNING id, eid`)
	rows, err := im.conn.QueryContext(im.ctx, query, args...)
	if err != nil {
		return wrap("import modules", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var eid string
		if err := rows.Scan(&id, &eid); err != nil {
			return wrap("import modules", err)
		}
		im.ids[eid] = id
	}
	if err := rows.Err(); err != nil {
		return wrap("import modules", err)
	}
	return nil
}

// insertDomains inserts the domain rows collected in im.rows, with im.consts.
func (im *importer) insertDomains() error {
	c := im.consts
	owner := sql.NullString{String: c.owner, Valid: c.owner != ""}
	consts := []any{c.kvn, string(c.state), owner, string(c.keySource), c.seq, "", im.at}
	var query string
	var args []any
	if im.dialect == dialectSQLite {
		// The EID comes from the module row just written (a primary-key
		// lookup on a page in cache) rather than from the JSON: each
		// extracted column re-parses the row's JSON. CROSS JOIN keeps the
		// JSON rows as the outer loop, in file order.
		query = `INSERT INTO domains (module_id, eid, aid, imported, kcv,
			kvn, state, owner_id, key_source, seq_counter, prior_state, updated_at)
			WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?))
			SELECT m.id, m.eid, v ->> 1, v ->> 2, v ->> 3, ?, ?, ?, ?, ?, ?, ?
			FROM r CROSS JOIN modules m ON m.id = v ->> 0`
		args = append([]any{string(append(im.rows.json, ']'))}, consts...)
	} else {
		query, args = im.rows.statement(`INSERT INTO domains (module_id, eid, aid, imported, kcv,
			kvn, state, owner_id, key_source, seq_counter, prior_state, updated_at)`, consts, ``)
	}
	if _, err := im.conn.ExecContext(im.ctx, query, args...); err != nil {
		// EIDs and AIDs were checked; what is left is rare (an owner that
		// is not a provider, a lost connection).
		return wrap("import modules: domains", err)
	}
	im.rows.reset(im.dialect)
	return nil
}

// rowSet collects the rows of one multi-row INSERT: on SQLite as a JSON array
// of arrays, on PostgreSQL as bound parameters.
type rowSet struct {
	dialect dialect
	n, cols int
	json    []byte
	args    []any
}

func (rs *rowSet) reset(d dialect) {
	rs.dialect, rs.n, rs.cols = d, 0, 0
	rs.json = append(rs.json[:0], '[')
	rs.args = rs.args[:0]
}

// row adds one row; values are string, *string (nil for NULL), int64 or
// sql.NullString.
func (rs *rowSet) row(values ...any) {
	rs.n++
	rs.cols = len(values)
	if rs.dialect == dialectPostgres {
		for _, v := range values {
			if p, ok := v.(*string); ok {
				if p == nil {
					v = nil
				} else {
					v = *p
				}
			}
			rs.args = append(rs.args, v)
		}
		return
	}
	if rs.n > 1 {
		rs.json = append(rs.json, ',')
	}
	rs.json = append(rs.json, '[')
	for i, v := range values {
		if i > 0 {
			rs.json = append(rs.json, ',')
		}
		switch v := v.(type) {
		case int64:
			rs.json = strconv.AppendInt(rs.json, v, 10)
		case string:
			rs.json = appendJSONString(rs.json, v)
		case *string:
			if v == nil {
				rs.json = append(rs.json, "null"...)
			} else {
				rs.json = appendJSONString(rs.json, *v)
			}
		case sql.NullString:
			if !v.Valid {
				rs.json = append(rs.json, "null"...)
			} else {
				rs.json = appendJSONString(rs.json, v.String)
			}
		default:
			panic(fmt.Sprintf("store: rowSet: unsupported %T", v))
		}
	}
	rs.json = append(rs.json, ']')
}

// statement returns insert followed by the collected rows, each row followed
// by the values consts (the same for every row, bound once), then suffix.
func (rs *rowSet) statement(insert string, consts []any, suffix string) (string, []any) {
	var b strings.Builder
	b.WriteString(insert)
	if rs.dialect == dialectSQLite {
		// One JSON parameter; ->> N takes element N of each row's array.
		// MATERIALIZED: json_each renders a row's text once, not once per
		// column, and the ten extractions from it hit SQLite's parse cache.
		args := make([]any, 0, len(consts)+1)
		args = append(args, string(append(rs.json, ']')))
		b.WriteString(` WITH r(v) AS MATERIALIZED (SELECT value FROM json_each(?)) SELECT `)
		for i := 0; i < rs.cols; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("v ->> ")
			b.WriteString(strconv.Itoa(i))
		}
		for range consts {
			b.WriteString(", ?")
		}
		args = append(args, consts...)
		b.WriteString(` FROM r`)
		b.WriteString(suffix)
		return b.String(), args
	}
	// PostgreSQL: VALUES ($1, …), (…); the constants are bound once, after
	// the rows, and referenced by number from every row.
	b.WriteString(` VALUES `)
	p := 1
	constBase := rs.n*rs.cols + 1
	for r := 0; r < rs.n; r++ {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := 0; c < rs.cols; c++ {
			if c > 0 {
				b.WriteString(", ")
			}
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(p))
			p++
		}
		for c := range consts {
			b.WriteString(", $")
			b.WriteString(strconv.Itoa(constBase + c))
		}
		b.WriteByte(')')
	}
	// PostgreSQL's INSERT … VALUES takes no WHERE: drop it from the suffix.
	b.WriteString(strings.TrimPrefix(suffix, " WHERE true"))
	args := append(rs.args[:len(rs.args):len(rs.args)], consts...)
	return b.String(), args
}

// appendJSONString appends s as a JSON string. The common case (EIDs, AIDs,
// states, the JSON of wrapped keys) is plain ASCII and needs no escaping.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			b, _ := json.Marshal(s) // cannot fail for a string
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}

// checkChunk fails on an EID given twice within the chunk and on a module
// that lists an AID twice, naming the later line.
func checkChunk(chunk []keyport.ModuleImport) error {
	seen := make(map[keyport.EID]int, len(chunk))
	for i := range chunk {
		m := &chunk[i]
		if first, ok := seen[m.EID]; ok {
			return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: m.Line,
				Err: fmt.Errorf("EID %s already on line %d: %w", m.EID, first, keyport.ErrConflict)})
		}
		seen[m.EID] = m.Line
		for j := range m.Domains {
			for k := 0; k < j; k++ {
				if m.Domains[k].AID == m.Domains[j].AID {
					return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: m.Line,
						Err: fmt.Errorf("AID %s listed twice: %w", m.Domains[j].AID, keyport.ErrConflict)})
				}
			}
		}
	}
	return nil
}

// domainJSON encodes a domain's wrapped keys (base64) and KCVs as JSON
// objects in key order, as encoding/json would, or NULL when it has none.
// Written out by hand: encoding/json's reflection was a tenth of an import.
func domainJSON(d *keyport.Domain) (imported, kcv sql.NullString) {
	if len(d.Imported) > 0 {
		imported = sql.NullString{String: string(appendUsageMap(nil, d.Imported, func(dst []byte, v []byte) []byte {
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, v)
			return append(dst, '"')
		})), Valid: true}
	}
	if len(d.KCV) > 0 {
		kcv = sql.NullString{String: string(appendUsageMap(nil, d.KCV, appendJSONString)), Valid: true}
	}
	return imported, kcv
}

func appendUsageMap[V any](dst []byte, m map[keyport.KeyUsage]V, value func([]byte, V) []byte) []byte {
	var keys [8]keyport.KeyUsage
	usages := keys[:0]
	for u := range m {
		usages = append(usages, u)
	}
	slices.Sort(usages)
	dst = append(dst, '{')
	for i, u := range usages {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, string(u))
		dst = append(dst, ':')
		dst = value(dst, m[u])
	}
	return append(dst, '}')
}
