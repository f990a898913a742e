package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
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
// SQLite the rows travel as one BLOB parameter (see rowSet): a statement is
// parsed anew on every execution, so rows go in hundreds per statement; more
// than a thousand domains saved nothing measurable (with the pure-Go driver
// the store used before). On PostgreSQL each statement is a network round trip
// and pgx binds in linear time, so rows go as plain parameters, up to
// PostgreSQL's limit of 65,535 per statement.
var rowsPerStatement = map[dialect]struct{ modules, domains int }{
	dialectSQLite:   {modules: 500, domains: 1000},
	dialectPostgres: {modules: 500, domains: 1000},
}

// ImportModules inserts the modules next yields into the batch in one
// transaction, streaming them in chunks. A module whose EID is already
// stored, or appeared earlier in the file, fails the whole import with a
// *keyport.LineError naming its line and wrapping keyport.ErrConflict; so do
// an MSISDN another module has (insertOTA) and a module listing one AID
// twice. Errors from next abort the import as they are.
func (r *repo) ImportModules(ctx context.Context, batchID int64,
	next func() (*keyport.ModuleImport, error)) (int, error) {
	var total int
	err := r.writeTx(ctx, "import modules", func(db *gorm.DB) error {
		if err := batchExists(db, "import modules", batchID); err != nil {
			return err
		}
		// The statements go to the transaction itself, not through gorm's
		// statement cache: a statement first prepared inside a transaction
		// is prepared anew on every execution there, and each one lives
		// until the commit with its bound rows (on SQLite ~1.6 KB of memory
		// per module imported: 160 MB more for 100,000 modules).
		im := &importer{ctx: ctx, dialect: r.dialect, conn: connOf(db), batchID: batchID, at: now()}
		var err error
		total, err = inChunks(next, im.flush)
		return err
	})
	if err != nil {
		return 0, err
	}
	return total, nil
}

// batchExists is nil when the batch is stored, ErrNotFound otherwise.
func batchExists(db *gorm.DB, op string, batchID int64) error {
	var n int64
	if err := db.Raw(`SELECT COUNT(*) FROM batches WHERE id = ?`, batchID).Scan(&n).Error; err != nil {
		return wrap(op, err)
	}
	if n == 0 {
		return fmt.Errorf("store: %s: batch %d: %w", op, batchID, keyport.ErrNotFound)
	}
	return nil
}

// inChunks reads next until it yields nil and hands its modules to flush
// importModulesPerChunk at a time (the last chunk shorter); it returns how
// many were flushed.
func inChunks(next func() (*keyport.ModuleImport, error), flush func([]keyport.ModuleImport) error) (int, error) {
	total := 0
	chunk := make([]keyport.ModuleImport, 0, importModulesPerChunk)
	for {
		m, err := next()
		if err != nil {
			return total, fmt.Errorf("store: import modules: %w", err)
		}
		if m != nil {
			// A copy: next may reuse its value for the following line.
			chunk = append(chunk, *m)
		}
		if len(chunk) == importModulesPerChunk || m == nil && len(chunk) > 0 {
			if err := flush(chunk); err != nil {
				return total, err
			}
			total += len(chunk)
			chunk = chunk[:0]
		}
		if m == nil {
			return total, nil
		}
	}
}

// importer writes chunks of modules and their domains through one
// transaction's connection, below gorm: building a statement of thousands of
// arguments through gorm's reflection would cost more than executing it.
type importer struct {
	ctx     context.Context
	dialect dialect
	conn    gorm.ConnPool
	batchID int64
	// importID is the staged import the modules belong to (hidden until
	// it is published); NULL for modules visible at once.
	importID sql.NullInt64
	at       time.Time
	ids      map[string]int64 // the chunk's module IDs by EID
	rows     rowSet
	consts   domainConsts // of the domain rows in rows
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

	if im.dialect == dialectSQLite {
		im.rows.reset(im.dialect, colInt, colText, colNullText, colNullText)
	} else {
		im.rows.reset(im.dialect, colInt, colText, colText, colNullText, colNullText)
	}
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
			rs := &im.rows
			rs.int(id)
			if im.dialect == dialectSQLite {
				// The JSON goes straight into the record, unescaped. An
				// empty field reads back as NULL, what a domain without
				// keys or KCVs always stored; a non-empty map never encodes
				// as empty.
				rs.text(string(d.AID))
				if len(d.Wrapped) > 0 {
					rs.data = appendWrapped(rs.data, d.Wrapped)
				}
				rs.field()
				if len(d.KCV) > 0 {
					rs.data = appendKCVs(rs.data, d.KCV)
				}
				rs.field()
			} else {
				wrapped, kcv := domainJSON(d)
				rs.text(string(m.EID))
				rs.text(string(d.AID))
				rs.nullText(wrapped)
				rs.nullText(kcv)
			}
			rs.n++
		}
	}
	if im.rows.n > 0 {
		if err := im.insertDomains(); err != nil {
			return err
		}
	}
	return im.insertOTA(chunk)
}

// insertOTA writes the module_ota rows (migration 11) of the modules that
// come with an MSISDN or an OTA key set: few, so one statement each. An
// MSISDN another module has (stored, or earlier in the file: migration 20,
// store/ota.go) fails the import with a *keyport.LineError naming the
// first such line and wrapping keyport.ErrConflict, as a stored EID does.
func (im *importer) insertOTA(chunk []keyport.ModuleImport) error {
	var numbers []string
	for i := range chunk {
		if chunk[i].MSISDN != "" {
			numbers = append(numbers, chunk[i].MSISDN)
		}
	}
	if len(numbers) > 0 {
		held, err := msisdnHolders(im.ctx, im.conn, im.dialect, numbers, 0)
		if err != nil {
			return wrap("import modules: MSISDNs", err)
		}
		for i := range chunk {
			if h, ok := held[chunk[i].MSISDN]; ok && chunk[i].MSISDN != "" {
				return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: chunk[i].Line,
					Err: h.taken(chunk[i].MSISDN, im.importID)})
			}
		}
	}
	query := `INSERT INTO module_ota (module_id, msisdn, ota_kvn, ota_keys) VALUES (?, ?, ?, ?)`
	if im.dialect != dialectSQLite {
		query = `INSERT INTO module_ota (module_id, msisdn, ota_kvn, ota_keys) VALUES ($1, $2, $3, $4)`
	}
	for i := range chunk {
		m := &chunk[i]
		if m.MSISDN == "" && len(m.OTAKeys) == 0 {
			continue
		}
		var keys sql.NullString
		if len(m.OTAKeys) > 0 {
			keys = sql.NullString{String: string(appendWrapped(nil, m.OTAKeys)), Valid: true}
		}
		if _, err := im.conn.ExecContext(im.ctx, query, im.ids[string(m.EID)], m.MSISDN, m.OTAKVN, keys); err != nil {
			if m.MSISDN != "" && errors.Is(mapErr(err), keyport.ErrConflict) {
				// The module's row is new: what the index refused is
				// the number, given to another module since the look.
				return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: m.Line, Err: takenMeanwhile(m.MSISDN)})
			}
			return wrap("import modules: MSISDN and OTA keys", err)
		}
	}
	return nil
}

// domainConsts are the domain columns that are the same for every domain of
// a typical import file. They go into the INSERT once, as constants, rather
// than in every row. A row that differs starts a new statement.
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
	im.rows.reset(im.dialect, colText, colText, colNullText, colNullBytes)
	for i := range ms {
		im.rows.text(string(ms[i].EID))
		im.rows.text(string(ms[i].ISDAID))
		var isd sql.NullString
		if len(ms[i].ISDKeys) > 0 {
			isd = sql.NullString{String: string(appendWrapped(nil, ms[i].ISDKeys)), Valid: true}
		}
		im.rows.nullText(isd)
		im.rows.nullBytes(ms[i].PSK)
		im.rows.n++
	}
	consts := []any{im.batchID, im.at, im.importID}
	var query string
	var args []any
	if im.dialect == dialectSQLite {
		// "WHERE true": SQLite's parser needs a WHERE before an upsert's ON
		// CONFLICT in INSERT … SELECT.
		from, cols, rowArgs := im.rows.sqliteRows()
		query = `INSERT INTO modules (eid, isd_aid, isd_keys, psk_sealed, batch_id, created_at, import_id) ` + from +
			` SELECT ` + strings.Join(cols, ", ") + `, ?3, ?4, ?5 FROM r WHERE true
			ON CONFLICT (eid) DO NOTHING RETURNING id, eid`
		args = append(rowArgs, consts...)
	} else {
		query, args = im.rows.values(`INSERT INTO modules (eid, isd_aid, isd_keys, psk_sealed, batch_id, created_at, import_id)`, consts,
			` ON CONFLICT (eid) DO NOTHING RETURNING id, eid`)
	}
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
		// lookup on a page in cache), so that it cannot differ from the
		// module's; a fifth field in every record was no faster. CROSS JOIN
		// keeps the records as the outer loop, in file order.
		from, cols, rowArgs := im.rows.sqliteRows()
		query = `INSERT INTO domains (module_id, eid, aid, wrapped, kcv,
			kvn, state, owner_id, key_source, seq_counter, prior_state, updated_at) ` + from +
			` SELECT m.id, m.eid, ` + cols[1] + `, ` + cols[2] + `, ` + cols[3] + `, ?3, ?4, ?5, ?6, ?7, ?8, ?9
			FROM r CROSS JOIN modules m ON m.id = ` + cols[0]
		args = append(rowArgs, consts...)
	} else {
		query, args = im.rows.values(`INSERT INTO domains (module_id, eid, aid, wrapped, kcv,
			kvn, state, owner_id, key_source, seq_counter, prior_state, updated_at)`, consts, ``)
	}
	if _, err := im.conn.ExecContext(im.ctx, query, args...); err != nil {
		// EIDs and AIDs were checked; what is left is rare (an owner that
		// is not a provider, a lost connection).
		return wrap("import modules: domains", err)
	}
	im.rows.clear()
	return nil
}

// colKind is the type of a rowSet column.
type colKind uint8

const (
	colInt       colKind = iota // int64
	colText                     // string
	colNullText                 // sql.NullString; on SQLite an empty string is NULL
	colNullBytes                // []byte; nil or empty is NULL
)

// rowSet collects the rows of one multi-row INSERT. Each row gives its fields
// in column order (int, text, nullText, or on SQLite bytes appended to data
// and closed by field), then counts itself in n.
//
// On PostgreSQL the fields are bound parameters of a VALUES list. On SQLite
// they travel as one BLOB parameter of fixed-width records, which the
// statement cuts up with substr(). Measured with the pure-Go driver the store
// used before, which re-parsed a statement on every execution and found each
// bound value by a linear search over the arguments: thousands of placeholders
// cost more to bind and parse than the rows cost to insert; and rows as JSON
// (an array of arrays read by json_each and ->>) cost a parse of each row's
// text, a comparison of it with SQLite's parse cache per column, and an
// unescape of every string, which for imported domains was half of the insert.
// substr() of a BLOB starts at a byte offset in constant time and copies only
// the field.
type rowSet struct {
	dialect dialect
	n       int
	kinds   []colKind
	args    []any // PostgreSQL

	// SQLite: the fields of every row, end to end; ends[i] is where field i
	// (row-major) ends.
	data []byte
	ends []int
	// SQLite: the statement's parameters, reused.
	blob, keys []byte
}

func (rs *rowSet) reset(d dialect, kinds ...colKind) {
	rs.dialect, rs.kinds = d, append(rs.kinds[:0], kinds...)
	rs.clear()
}

// clear drops the rows, keeping the columns.
func (rs *rowSet) clear() {
	rs.n = 0
	rs.args = rs.args[:0]
	rs.data, rs.ends = rs.data[:0], rs.ends[:0]
}

// field ends a field whose bytes were appended to data (SQLite).
func (rs *rowSet) field() { rs.ends = append(rs.ends, len(rs.data)) }

func (rs *rowSet) int(v int64) {
	if rs.dialect == dialectPostgres {
		rs.args = append(rs.args, v)
		return
	}
	rs.data = strconv.AppendInt(rs.data, v, 10)
	rs.field()
}

func (rs *rowSet) text(v string) {
	if rs.dialect == dialectPostgres {
		rs.args = append(rs.args, v)
		return
	}
	rs.data = append(rs.data, v...)
	rs.field()
}

func (rs *rowSet) nullBytes(v []byte) {
	if rs.dialect == dialectPostgres {
		if len(v) == 0 {
			v = nil
		}
		rs.args = append(rs.args, v)
		return
	}
	rs.data = append(rs.data, v...)
	rs.field()
}

func (rs *rowSet) nullText(v sql.NullString) {
	if rs.dialect == dialectPostgres {
		rs.args = append(rs.args, v)
		return
	}
	rs.text(v.String)
}

// sqliteRows lays the collected rows out for SQLite and returns the WITH
// clause of a CTE r that yields one row per record, the SQL expression of
// each column over r, and the arguments ?1 and ?2 that they read.
//
// Each record is as wide as the widest row; each column is as wide as its
// widest field, padded. A column whose fields all have the same length (the
// usual case: EIDs, AIDs, the JSON of three wrapped keys) is read at a fixed
// offset; any other one is preceded in each record by its length in decimal.
// The rows come from json_each over an array of n zeros (?2), whose key is
// the record's number: SQLite has no cheaper row generator built in.
func (rs *rowSet) sqliteRows() (with string, cols []string, args []any) {
	ncol := len(rs.kinds)
	type layout struct{ off, digits, width, same int }
	lay := make([]layout, ncol)
	for c := range lay {
		lay[c].same = -1
	}
	start := 0
	for i, end := range rs.ends {
		l := &lay[i%ncol]
		n := end - start
		start = end
		l.width = max(l.width, n)
		if l.same == -1 || l.same == n {
			l.same = n
		} else {
			l.same = -2
		}
	}
	w := 0
	for c := range lay {
		l := &lay[c]
		l.off = w
		if l.same < 0 {
			l.digits = len(strconv.Itoa(l.width))
		}
		w += l.digits + l.width
	}

	rs.blob = slices.Grow(rs.blob[:0], w*rs.n)
	rs.keys = append(rs.keys[:0], '[')
	start = 0
	for i, end := range rs.ends {
		l := &lay[i%ncol]
		n := end - start
		if l.digits > 0 {
			for p := l.digits - 1; p >= 0; p-- {
				rs.blob = append(rs.blob, '0'+byte(n/pow10(p)%10))
			}
		}
		rs.blob = append(rs.blob, rs.data[start:end]...)
		for ; n < l.width; n++ {
			rs.blob = append(rs.blob, ' ')
		}
		start = end
		if i%ncol == 0 {
			if i > 0 {
				rs.keys = append(rs.keys, ',')
			}
			rs.keys = append(rs.keys, '0')
		}
	}
	rs.keys = append(rs.keys, ']')

	cols = make([]string, ncol)
	for c, l := range lay {
		var v string
		switch {
		case l.width == 0 && (rs.kinds[c] == colNullText || rs.kinds[c] == colNullBytes):
			cols[c] = "NULL"
			continue
		case l.width == 0:
			cols[c] = "''"
			continue
		case l.digits == 0:
			v = fmt.Sprintf("substr(?1, o + %d, %d)", l.off, l.width)
		default:
			v = fmt.Sprintf("substr(?1, o + %d, CAST(substr(?1, o + %d, %d) AS INTEGER))",
				l.off+l.digits, l.off, l.digits)
		}
		// substr() of a BLOB is a BLOB: CAST makes it the TEXT (or
		// INTEGER) the column holds, byte for byte.
		switch rs.kinds[c] {
		case colInt:
			cols[c] = "CAST(" + v + " AS INTEGER)"
		case colText:
			cols[c] = "CAST(" + v + " AS TEXT)"
		case colNullBytes:
			cols[c] = "NULLIF(" + v + ", x'')"
		default:
			cols[c] = "NULLIF(CAST(" + v + " AS TEXT), '')"
		}
	}
	// ?1 and ?2 are numbered: the caller's constants follow as ?3, ?4, …
	with = fmt.Sprintf("WITH r(o) AS (SELECT key * %d + 1 FROM json_each(?2))", w)
	return with, cols, []any{rs.blob, string(rs.keys)}
}

func pow10(p int) int {
	n := 1
	for ; p > 0; p-- {
		n *= 10
	}
	return n
}

// values returns insert followed by a VALUES list of the collected rows
// (PostgreSQL), each row followed by the values consts (the same for every
// row, bound once, after the rows, and referenced by number from every row),
// then suffix.
func (rs *rowSet) values(insert string, consts []any, suffix string) (string, []any) {
	var b strings.Builder
	b.WriteString(insert)
	b.WriteString(` VALUES `)
	cols := len(rs.kinds)
	p := 1
	constBase := rs.n*cols + 1
	for r := 0; r < rs.n; r++ {
		if r > 0 {
			b.WriteString(", ")
		}
		b.WriteByte('(')
		for c := 0; c < cols; c++ {
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
	b.WriteString(suffix)
	args := append(rs.args[:len(rs.args):len(rs.args)], consts...)
	return b.String(), args
}

// appendJSONString appends s as a JSON string. The common case (key usages,
// KCVs) is plain ASCII and needs no escaping.
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

// checkChunk fails on an EID or an MSISDN given twice within the chunk and
// on a module that lists an AID twice, naming the later line.
func checkChunk(chunk []keyport.ModuleImport) error {
	seen := make(map[keyport.EID]int, len(chunk))
	var numbers map[string]int
	for i := range chunk {
		m := &chunk[i]
		if first, ok := seen[m.EID]; ok {
			return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: m.Line,
				Err: fmt.Errorf("EID %s already on line %d: %w", m.EID, first, keyport.ErrConflict)})
		}
		seen[m.EID] = m.Line
		if m.MSISDN != "" {
			if first, ok := numbers[m.MSISDN]; ok {
				return fmt.Errorf("store: import modules: %w", &keyport.LineError{Line: m.Line,
					Err: fmt.Errorf("MSISDN %s already on line %d (a number reaches one module): %w", keyport.MaskedMSISDN(m.MSISDN), first, keyport.ErrConflict)})
			}
			if numbers == nil {
				numbers = map[string]int{}
			}
			numbers[m.MSISDN] = m.Line
		}
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
func domainJSON(d *keyport.Domain) (wrapped, kcv sql.NullString) {
	if len(d.Wrapped) > 0 {
		wrapped = sql.NullString{String: string(appendWrapped(nil, d.Wrapped)), Valid: true}
	}
	if len(d.KCV) > 0 {
		kcv = sql.NullString{String: string(appendKCVs(nil, d.KCV)), Valid: true}
	}
	return wrapped, kcv
}

func appendWrapped(dst []byte, m map[keyport.KeyUsage][]byte) []byte {
	return appendUsageMap(dst, m, func(dst []byte, v []byte) []byte {
		dst = append(dst, '"')
		dst = base64.StdEncoding.AppendEncode(dst, v)
		return append(dst, '"')
	})
}

func appendKCVs(dst []byte, m map[keyport.KeyUsage]string) []byte {
	return appendUsageMap(dst, m, appendJSONString)
}

// sortedUsages is the SCP03 key set in JSON key order, what nearly every
// domain holds: such a map needs neither iterating nor sorting.
var sortedUsages = [...]keyport.KeyUsage{keyport.UsageDEK, keyport.UsageENC, keyport.UsageMAC}

func appendUsageMap[V any](dst []byte, m map[keyport.KeyUsage]V, value func([]byte, V) []byte) []byte {
	var keys [8]keyport.KeyUsage
	usages := keys[:0]
	if len(m) == len(sortedUsages) {
		for _, u := range sortedUsages {
			if _, ok := m[u]; ok {
				usages = append(usages, u)
			}
		}
	}
	if len(usages) != len(m) {
		usages = usages[:0]
		for u := range m {
			usages = append(usages, u)
		}
		slices.Sort(usages)
	}
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
