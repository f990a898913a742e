package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// keyport's PostgreSQL backup format. pg_dump's archives are SQL that
// pg_restore runs, whatever it is (a trigger, a function, COPY FROM
// PROGRAM); this file holds data only, and restoring it runs keyport's own
// statements. All integers are big-endian.
//
//	header    "KEYPORT-PG-BACKUP", u16 format version (1),
//	          u32 schema version, u8 n + n bytes dialect ("postgres")
//	table     'T', u8 n + name, u16 count + count × (u8 n + column name),
//	          then its COPY ... (FORMAT binary) stream in chunks:
//	          u32 length (1..pgChunkMax) + bytes, ended by a u32 0
//	sequence  'S', u8 n + table, u8 n + column, u8 called (0 or 1),
//	          i64 last value: an identity column's sequence
//	end       'E', then the SHA-256 of every byte before it, 'E'
//	          included; nothing may follow
//
// The tables come in the order pgTables gives (a table after those it
// refers to), each once and all of them; the sequences follow, sorted by
// table and column. COPY's binary format, rather than its text format,
// keeps each value as PostgreSQL stores it: timestamps do not pass through
// DateStyle or TimeZone, nor bytea through bytea_output or the client
// encoding, so a backup restores the same on a server set up otherwise, and
// PostgreSQL parses it strictly against the column types the migrations
// made.
const (
	pgBackupMagic   = "KEYPORT-PG-BACKUP"
	pgBackupFormat  = 1
	pgBackupDialect = "postgres"
	// pgChunkMax bounds one chunk of a COPY stream: the parser never
	// holds more than one, nor allocates from a length it has not
	// checked against this bound.
	pgChunkMax = 1 << 20
	// pgNameMax is PostgreSQL's identifier length (NAMEDATALEN - 1).
	pgNameMax = 63
	// pgWriteChunk is the chunk size Backup writes.
	pgWriteChunk = 64 << 10
)

// pgDumpMagic starts the archives pg_dump --format=custom writes, which
// earlier versions of keyport backup made on PostgreSQL.
const pgDumpMagic = "PGDMP"

// sqliteMagic starts every SQLite database file (a backup of SQLite).
const sqliteMagic = "SQLite format 3\x00"

// ErrBackupDamaged: a PostgreSQL backup file is truncated, corrupted (its
// SHA-256 does not match) or not laid out as Backup writes it. Nothing of
// it is restored.
var ErrBackupDamaged = errors.New("the backup file is damaged or truncated")

// ErrPGDumpArchive: the file is a pg_dump archive (as keyport backup wrote
// on PostgreSQL before its own format). Restoring one means running the SQL
// it holds, which keyport does not do; the error says how to do it by hand.
var ErrPGDumpArchive = errors.New("a pg_dump archive, not a keyport backup")

// errPGDumpRefused refuses a pg_dump archive, saying how to restore one
// by hand for an operator who trusts it.
func errPGDumpRefused() error {
	return fmt.Errorf("%w: keyport restore does not run pg_restore, which executes whatever SQL an archive holds. "+
		"If you made this archive and no one else could have written it, restore it by hand into an empty PostgreSQL database "+
		"(pg_restore --no-owner --no-privileges --single-transaction --exit-on-error --dbname=URL FILE), "+
		"run keyport migrate, and take a new backup with keyport backup", ErrPGDumpArchive)
}

// errNotPGBackup: the file starts with no header keyport knows.
var errNotPGBackup = errors.New("not a keyport PostgreSQL backup (no KEYPORT-PG-BACKUP header)")

// pgTable is one table keyport's migrations create and its columns, in
// the order they were made.
type pgTable struct {
	name string
	cols []string
}

// quoted returns the table's name as a quoted identifier.
func (t pgTable) quoted() string { return pgx.Identifier{t.name}.Sanitize() }

// quotedCols returns the table's column list, each a quoted identifier.
func (t pgTable) quotedCols() string {
	q := make([]string, len(t.cols))
	for i, c := range t.cols {
		q[i] = pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(q, ", ")
}

var pgTablesCache struct {
	sync.Mutex
	byVersion map[int][]pgTable
}

// pgTables returns the tables this code's migrations create at version v
// (schema_migrations among them), each with its columns, a table after
// every table it refers to, so that copying them in this order satisfies
// their foreign keys. The migrations are written once for both dialects,
// so it reads them from a new SQLite database migrated to v (as Restore's
// check of an SQLite backup does), never from the database or file at hand.
func pgTables(ctx context.Context, v int) ([]pgTable, error) {
	if v < 1 || v > LatestVersion() {
		return nil, fmt.Errorf("no schema version %d", v)
	}
	pgTablesCache.Lock()
	defer pgTablesCache.Unlock()
	if t, ok := pgTablesCache.byVersion[v]; ok {
		return t, nil
	}
	var tables []pgTable
	err := withMigratedSQLite(ctx, v, func(db *sql.DB) (err error) {
		tables, err = sqliteTables(ctx, db)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("the tables of version %d: %w", v, err)
	}
	if pgTablesCache.byVersion == nil {
		pgTablesCache.byVersion = map[int][]pgTable{}
	}
	pgTablesCache.byVersion[v] = tables
	return tables, nil
}

// sqliteTables reads db's tables (not SQLite's own), their columns and the
// tables each refers to, and orders them parents first (names breaking
// ties, so the order is always the same).
func sqliteTables(ctx context.Context, db *sql.DB) ([]pgTable, error) {
	names, err := queryStrings(ctx, db, `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`)
	if err != nil {
		return nil, err
	}
	cols := map[string][]string{}
	refs := map[string][]string{}
	for _, n := range names {
		if cols[n], err = queryStrings(ctx, db, `SELECT name FROM pragma_table_info(?) ORDER BY cid`, n); err != nil {
			return nil, err
		}
		if refs[n], err = queryStrings(ctx, db, `SELECT DISTINCT "table" FROM pragma_foreign_key_list(?)`, n); err != nil {
			return nil, err
		}
	}
	var out []pgTable
	state := map[string]int{} // 1: being visited, 2: done
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("the foreign keys of table %q go round in a cycle", n)
		case 2:
			return nil
		}
		state[n] = 1
		for _, r := range slices.Sorted(slices.Values(refs[n])) {
			if _, ok := cols[r]; !ok {
				return fmt.Errorf("table %q refers to %q, which does not exist", n, r)
			}
			if r != n {
				if err := visit(r); err != nil {
					return err
				}
			}
		}
		state[n] = 2
		out = append(out, pgTable{name: n, cols: cols[n]})
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func queryStrings(ctx context.Context, db *sql.DB, q string, args ...any) ([]string, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// pgSequence is the state of an identity column's sequence.
type pgSequence struct {
	table, column string
	called        bool  // false: nextval gives the start value
	last          int64 // the last value given (meaningful when called)
}

// identityQuery lists the identity columns of the tables in the current
// schema; its caller keeps those of keyport's tables.
const identityQuery = `SELECT table_name::text, column_name::text FROM information_schema.columns
	WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY 1, 2`

// pgIdentities returns the identity columns of tables, sorted by table and
// column, as the code names them.
func pgIdentities(ctx context.Context, q pgQuerier, tables []pgTable) ([][2]string, error) {
	rows, err := q.Query(ctx, identityQuery)
	if err != nil {
		return nil, err
	}
	found := map[[2]string]bool{}
	for rows.Next() {
		var t, c string
		if err := rows.Scan(&t, &c); err != nil {
			rows.Close()
			return nil, err
		}
		found[[2]string{t, c}] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out [][2]string
	for _, t := range tables {
		for _, c := range t.cols {
			if found[[2]string{t.name, c}] {
				out = append(out, [2]string{t.name, c})
			}
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	})
	return out, nil
}

// pgQuerier is a pgx connection or transaction.
type pgQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// pgBackupWriter writes the format, hashing every byte it writes.
type pgBackupWriter struct {
	w   *bufio.Writer
	h   hash.Hash
	err error
}

func newPGBackupWriter(w io.Writer) *pgBackupWriter {
	return &pgBackupWriter{w: bufio.NewWriterSize(w, 256<<10), h: sha256.New()}
}

func (b *pgBackupWriter) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	b.h.Write(p)
	n, err := b.w.Write(p)
	b.err = err
	return n, err
}

func (b *pgBackupWriter) u8(v uint8)   { b.Write([]byte{v}) }
func (b *pgBackupWriter) u16(v uint16) { b.Write(binary.BigEndian.AppendUint16(nil, v)) }
func (b *pgBackupWriter) u32(v uint32) { b.Write(binary.BigEndian.AppendUint32(nil, v)) }

func (b *pgBackupWriter) name(s string) {
	if len(s) == 0 || len(s) > pgNameMax {
		b.err = fmt.Errorf("the name %q cannot be written", s)
		return
	}
	b.u8(uint8(len(s)))
	b.Write([]byte(s))
}

func (b *pgBackupWriter) header(v int) {
	b.Write([]byte(pgBackupMagic))
	b.u16(pgBackupFormat)
	b.u32(uint32(v))
	b.name(pgBackupDialect)
}

func (b *pgBackupWriter) tableHeader(t pgTable) {
	b.u8('T')
	b.name(t.name)
	b.u16(uint16(len(t.cols)))
	for _, c := range t.cols {
		b.name(c)
	}
}

func (b *pgBackupWriter) sequence(s pgSequence) {
	b.u8('S')
	b.name(s.table)
	b.name(s.column)
	called := uint8(0)
	if s.called {
		called = 1
	}
	b.u8(called)
	b.Write(binary.BigEndian.AppendUint64(nil, uint64(s.last)))
}

// end writes the end mark and the hash, and flushes.
func (b *pgBackupWriter) end() error {
	b.u8('E')
	if b.err == nil {
		_, b.err = b.w.Write(b.h.Sum(nil))
	}
	if b.err == nil {
		b.err = b.w.Flush()
	}
	return b.err
}

// chunker cuts a COPY stream into the format's chunks.
type chunker struct {
	b   *pgBackupWriter
	buf []byte
}

func (c *chunker) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), pgWriteChunk-len(c.buf))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == pgWriteChunk {
			c.flush()
		}
	}
	return n, c.b.err
}

func (c *chunker) flush() {
	if len(c.buf) > 0 {
		c.b.u32(uint32(len(c.buf)))
		c.b.Write(c.buf)
		c.buf = c.buf[:0]
	}
}

// close writes what is left and the stream's end.
func (c *chunker) close() error {
	c.flush()
	c.b.u32(0)
	return c.b.err
}

// pgBackup writes the backup of a PostgreSQL store into the new file out:
// one REPEATABLE READ, READ ONLY transaction, so that every table is read
// from the same snapshot (an import or claims committing meanwhile are in
// it whole or not at all), the schema version read from it too, and for
// each table the migrations create at that version its columns as
// COPY (FORMAT binary) gives them. Nothing but keyport's own tables and
// columns is read; before any is, the snapshot's tables and columns must
// be exactly those the migrations create at its version (pgBeginSnapshot,
// ErrSchemaDrift), so that no column or table is silently left out. A
// refused or failed backup leaves neither out nor its temporary file.
func (s *Store) pgBackup(ctx context.Context, out string) (*BackupInfo, error) {
	f, err := createBeside(out)
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	defer f.Close()
	conn, err := s.pools[0].Conn(ctx)
	if err != nil {
		return nil, wrap("backup", err)
	}
	defer conn.Close()
	var v int
	err = conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		var err error
		v, err = pgWriteBackup(ctx, pc, f)
		if ierr := idle(context.WithoutCancel(ctx), pc); ierr != nil {
			return errors.Join(err, driver.ErrBadConn)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	if err := linkNew(tmp, out, "backup"); err != nil {
		return nil, err
	}
	return &BackupInfo{Dialect: pgBackupDialect, SchemaVersion: v, Bytes: st.Size()}, nil
}

// pgWriteBackup writes the backup of the database pc is connected to into
// w and returns its schema version; it leaves pc's transaction open, if
// one is, for the caller to end.
func pgWriteBackup(ctx context.Context, pc *pgx.Conn, w io.Writer) (int, error) {
	tx, v, tables, err := pgBeginSnapshot(ctx, pc)
	if err != nil {
		return v, err
	}
	b := newPGBackupWriter(w)
	b.header(v)
	for _, t := range tables {
		b.tableHeader(t)
		c := &chunker{b: b}
		q := fmt.Sprintf(`COPY %s (%s) TO STDOUT (FORMAT binary)`, t.quoted(), t.quotedCols())
		if _, err := tx.Conn().PgConn().CopyTo(ctx, c, q); err != nil {
			return v, fmt.Errorf("copy table %s: %w", t.name, err)
		}
		if err := c.close(); err != nil {
			return v, err
		}
	}
	ids, err := pgIdentities(ctx, tx, tables)
	if err != nil {
		return v, fmt.Errorf("the identity columns: %w", err)
	}
	for _, id := range ids {
		// A sequence is outside the snapshot: read after it began, its
		// value is at least every id the snapshot holds.
		var last *int64
		err := tx.QueryRow(ctx, `SELECT pg_sequence_last_value(pg_get_serial_sequence($1, $2)::regclass)`,
			pgx.Identifier{id[0]}.Sanitize(), id[1]).Scan(&last)
		if err != nil {
			return v, fmt.Errorf("the sequence of %s.%s: %w", id[0], id[1], err)
		}
		seq := pgSequence{table: id[0], column: id[1]}
		if last != nil {
			seq.called, seq.last = true, *last
		}
		b.sequence(seq)
	}
	return v, b.end()
}

// pgBackupSink receives a backup's contents as readPGBackup checks them.
// The names it is given are the code's, never bytes of the file.
type pgBackupSink interface {
	// table takes the COPY stream of table t, which it must read to its
	// end (io.EOF) or fail.
	table(ctx context.Context, t pgTable, data io.Reader) error
	// sequence takes the state of an identity column's sequence.
	sequence(ctx context.Context, s pgSequence) error
}

// pgBackupReader reads the format, hashing every byte before the hash.
type pgBackupReader struct {
	r   *bufio.Reader
	h   hash.Hash
	off int64 // bytes read so far
}

// damaged reports a file that is not as Backup writes it.
func (b *pgBackupReader) damaged(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d: %s", ErrBackupDamaged, b.off, fmt.Sprintf(format, args...))
}

// full reads len(p) bytes, or fails saying what it was reading.
func (b *pgBackupReader) full(p []byte, what string) error {
	n, err := io.ReadFull(b.r, p)
	b.h.Write(p[:n])
	b.off += int64(n)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return b.damaged("the file ends inside %s", what)
	}
	return err
}

func (b *pgBackupReader) u8(what string) (uint8, error) {
	var p [1]byte
	err := b.full(p[:], what)
	return p[0], err
}

func (b *pgBackupReader) u16(what string) (uint16, error) {
	var p [2]byte
	err := b.full(p[:], what)
	return binary.BigEndian.Uint16(p[:]), err
}

func (b *pgBackupReader) u32(what string) (uint32, error) {
	var p [4]byte
	err := b.full(p[:], what)
	return binary.BigEndian.Uint32(p[:]), err
}

// name reads a length-prefixed name of 1..pgNameMax bytes.
func (b *pgBackupReader) name(what string) (string, error) {
	n, err := b.u8(what)
	if err != nil {
		return "", err
	}
	if n == 0 || n > pgNameMax {
		return "", b.damaged("%s is %d bytes long (1 to %d allowed)", what, n, pgNameMax)
	}
	p := make([]byte, n)
	if err := b.full(p, what); err != nil {
		return "", err
	}
	return string(p), nil
}

// chunks reads one table's COPY stream, chunk by chunk, straight from the
// file: no chunk is held whole.
type chunks struct {
	b    *pgBackupReader
	what string
	left uint32 // bytes left in the current chunk
	done bool   // the end of the stream was read
}

func (c *chunks) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		n, err := c.b.u32("a chunk length of " + c.what)
		if err != nil {
			return 0, err
		}
		if n > pgChunkMax {
			return 0, c.b.damaged("a chunk of %s is %d bytes long (%d at most)", c.what, n, pgChunkMax)
		}
		if n == 0 {
			c.done = true
			return 0, io.EOF
		}
		c.left = n
	}
	if len(p) > int(c.left) {
		p = p[:c.left]
	}
	n, err := c.b.r.Read(p)
	c.b.h.Write(p[:n])
	c.b.off += int64(n)
	c.left -= uint32(n)
	if err == io.EOF {
		if c.left > 0 {
			return n, c.b.damaged("the file ends inside a chunk of %s", c.what)
		}
		err = nil
	}
	return n, err
}

// readPGBackupHeader reads and checks the header and returns the schema
// version; it recognises, and refuses, pg_dump archives and SQLite files.
func readPGBackupHeader(b *pgBackupReader) (int, error) {
	p := make([]byte, len(pgBackupMagic))
	n, err := io.ReadFull(b.r, p)
	b.h.Write(p[:n])
	b.off += int64(n)
	switch {
	case bytes.HasPrefix(p[:n], []byte(pgDumpMagic)):
		return 0, errPGDumpRefused()
	case n >= len(sqliteMagic) && string(p[:len(sqliteMagic)]) == sqliteMagic:
		return 0, errors.New("an SQLite backup: restore it into an SQLite database (--db PATH or the data directory's keyport.db)")
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		return 0, err
	case n < len(pgBackupMagic) || string(p) != pgBackupMagic:
		return 0, errNotPGBackup
	}
	format, err := b.u16("the format version")
	if err != nil {
		return 0, err
	}
	if format != pgBackupFormat {
		return 0, fmt.Errorf("backup format %d; this keyport reads format %d: %w", format, pgBackupFormat, ErrSchemaTooNew)
	}
	v, err := b.u32("the schema version")
	if err != nil {
		return 0, err
	}
	d, err := b.name("the dialect")
	if err != nil {
		return 0, err
	}
	if d != pgBackupDialect {
		return 0, b.damaged("the dialect is %q, not %q", d, pgBackupDialect)
	}
	switch {
	case v == 0:
		return 0, b.damaged("schema version 0")
	case v > uint32(LatestVersion()):
		return int(min(v, 1<<30)), fmt.Errorf("version %d, code knows %d: %w", v, LatestVersion(), ErrSchemaTooNew)
	}
	return int(v), nil
}

// readPGBackup reads a PostgreSQL backup from r with a strict, bounded
// parser and hands its contents to sink: it refuses a schema version newer
// than the code (ErrSchemaTooNew), a table or column this code's
// migrations do not create at the backup's version, or one missing
// (ErrSchemaMismatch), and a file truncated, corrupted or laid out
// otherwise (ErrBackupDamaged). The hash is checked last, so a caller that
// writes what sink gets must do so where it can be undone (Restore: one
// transaction). It returns the schema version and the tables.
func readPGBackup(ctx context.Context, r io.Reader, sink pgBackupSink) (int, []pgTable, error) {
	b := &pgBackupReader{r: bufio.NewReaderSize(r, 64<<10), h: sha256.New()}
	v, err := readPGBackupHeader(b)
	if err != nil {
		return v, nil, err
	}
	tables, err := pgTables(ctx, v)
	if err != nil {
		return v, nil, fmt.Errorf("the schema of version %d: %w", v, err)
	}
	byName := map[string]int{}
	for i, t := range tables {
		byName[t.name] = i
	}
	next := 0               // the index of the table expected next
	var lastSeq *pgSequence // the previous sequence, for their order
	for {
		tag, err := b.u8("a record's tag")
		if err != nil {
			return v, nil, err
		}
		switch tag {
		case 'T':
			name, err := b.name("a table name")
			if err != nil {
				return v, nil, err
			}
			i, known := byName[name]
			switch {
			case !known:
				return v, nil, fmt.Errorf("%w: table %q is not part of it (version %d)", ErrSchemaMismatch, name, v)
			case lastSeq == nil && i > next:
				return v, nil, fmt.Errorf("%w: table %q is missing", ErrSchemaMismatch, tables[next].name)
			case lastSeq != nil || i != next:
				return v, nil, b.damaged("table %q comes twice or out of place", name)
			}
			t := tables[i]
			n, err := b.u16("the column count of " + name)
			if err != nil {
				return v, nil, err
			}
			cols := make([]string, 0, min(int(n), len(t.cols)+1))
			for range n {
				c, err := b.name("a column name of " + name)
				if err != nil {
					return v, nil, err
				}
				if !slices.Contains(t.cols, c) {
					return v, nil, fmt.Errorf("%w: table %q has a column %q that is not part of it (version %d)", ErrSchemaMismatch, name, c, v)
				}
				cols = append(cols, c)
				if len(cols) > len(t.cols) {
					return v, nil, fmt.Errorf("%w: table %q has more columns than it (version %d)", ErrSchemaMismatch, name, v)
				}
			}
			if !slices.Equal(cols, t.cols) {
				return v, nil, fmt.Errorf("%w: table %q has the columns (%s), not (%s) (version %d)",
					ErrSchemaMismatch, name, strings.Join(cols, ", "), strings.Join(t.cols, ", "), v)
			}
			data := &chunks{b: b, what: "table " + name}
			if err := sink.table(ctx, t, data); err != nil {
				return v, nil, err
			}
			// The sink may stop early on an error it did not return.
			if _, err := io.Copy(io.Discard, data); err != nil {
				return v, nil, err
			}
			next++
		case 'S':
			if next != len(tables) {
				return v, nil, fmt.Errorf("%w: table %q is missing", ErrSchemaMismatch, tables[next].name)
			}
			tn, err := b.name("a sequence's table")
			if err != nil {
				return v, nil, err
			}
			cn, err := b.name("a sequence's column")
			if err != nil {
				return v, nil, err
			}
			i, known := byName[tn]
			var col string
			if known {
				if j := slices.Index(tables[i].cols, cn); j >= 0 {
					col = tables[i].cols[j]
				}
			}
			if col == "" {
				return v, nil, fmt.Errorf("%w: a sequence for %s.%s, which is not part of it (version %d)", ErrSchemaMismatch, tn, cn, v)
			}
			called, err := b.u8("a sequence's state")
			if err != nil {
				return v, nil, err
			}
			if called > 1 {
				return v, nil, b.damaged("a sequence's state is %d", called)
			}
			var p [8]byte
			if err := b.full(p[:], "a sequence's value"); err != nil {
				return v, nil, err
			}
			seq := pgSequence{table: tables[i].name, column: col, called: called == 1, last: int64(binary.BigEndian.Uint64(p[:]))}
			if lastSeq != nil && (lastSeq.table > seq.table || lastSeq.table == seq.table && lastSeq.column >= seq.column) {
				return v, nil, b.damaged("the sequence of %s.%s is out of place", tn, cn)
			}
			lastSeq = &seq
			if err := sink.sequence(ctx, seq); err != nil {
				return v, nil, err
			}
		case 'E':
			if next != len(tables) {
				return v, nil, fmt.Errorf("%w: table %q is missing", ErrSchemaMismatch, tables[next].name)
			}
			sum := b.h.Sum(nil)
			var got [sha256.Size]byte
			if n, err := io.ReadFull(b.r, got[:]); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return v, nil, fmt.Errorf("%w: the file ends inside its SHA-256 (%d of %d bytes)", ErrBackupDamaged, n, sha256.Size)
				}
				return v, nil, err
			}
			if subtle.ConstantTimeCompare(sum, got[:]) != 1 {
				return v, nil, fmt.Errorf("%w: its SHA-256 does not match its contents", ErrBackupDamaged)
			}
			if _, err := b.r.ReadByte(); err != io.EOF {
				if err != nil {
					return v, nil, err
				}
				return v, nil, fmt.Errorf("%w: bytes follow its SHA-256", ErrBackupDamaged)
			}
			return v, tables, nil
		default:
			return v, nil, b.damaged("a record of unknown kind 0x%02x", tag)
		}
	}
}

// discardSink reads a backup and keeps nothing: Restore's first pass,
// which checks the whole file before it touches a database.
type discardSink struct{}

func (discardSink) table(_ context.Context, _ pgTable, data io.Reader) error {
	_, err := io.Copy(io.Discard, data)
	return err
}

func (discardSink) sequence(context.Context, pgSequence) error { return nil }

// copySink writes a backup into a transaction: each table with COPY FROM
// STDIN, on exactly the code's table and column names, and each sequence
// with setval. No statement text comes from the file.
type copySink struct {
	tx   pgx.Tx
	seqs []pgSequence
}

func (c *copySink) table(ctx context.Context, t pgTable, data io.Reader) error {
	q := fmt.Sprintf(`COPY %s (%s) FROM STDIN (FORMAT binary)`, t.quoted(), t.quotedCols())
	if _, err := c.tx.Conn().PgConn().CopyFrom(ctx, data, q); err != nil {
		// The file's own error (truncation, a bad chunk) says more.
		if errors.Is(err, ErrBackupDamaged) {
			return err
		}
		return fmt.Errorf("%w: table %s: %v", ErrBackupDamaged, t.name, err)
	}
	return nil
}

func (c *copySink) sequence(ctx context.Context, s pgSequence) error {
	c.seqs = append(c.seqs, s)
	return nil
}

// pgRestore restores the PostgreSQL backup in from into the database dsn
// names; see Restore.
func (o RestoreOptions) pgRestore(ctx context.Context, from, dsn string, size int64) (*BackupInfo, error) {
	f, err := os.Open(from)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer f.Close()
	// The whole file first, before the database is touched.
	v, _, err := readPGBackup(ctx, f, discardSink{})
	if err != nil {
		return nil, fmt.Errorf("store: restore: %s: %w", from, err)
	}
	l, err := lockForRestore(ctx, useTarget{pgURL: dsn})
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	defer l.Close()
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", redactURL(mapUnavailable(err), dsn))
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := o.pgRestoreTx(ctx, conn, f, v, from); err != nil {
		return nil, err
	}
	return o.finish(ctx, l, &BackupInfo{Dialect: pgBackupDialect, SchemaVersion: v, Bytes: size})
}

// pgRestoreTx restores the backup in f, of schema version v, in one
// transaction on conn: keyport's tables dropped (when forced and there),
// made anew by the migrations up to v, filled from the file, the sequences
// set, and the file's hash and schema_migrations checked before the
// commit. On any error nothing of it stays.
func (o RestoreOptions) pgRestoreTx(ctx context.Context, conn *pgx.Conn, f io.Reader, v int, from string) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLockKey)); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	if exists && !o.Force {
		return fmt.Errorf("store: restore: the database %w (it holds keyport's tables); to replace it, pass --force", ErrBackupExists)
	}
	if exists {
		if err := dropKeyportTables(ctx, tx, v); err != nil {
			return fmt.Errorf("store: restore: drop the tables there: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, typeMacros[dialectPostgres].Replace(createMigrationsTable)); err != nil {
		return fmt.Errorf("store: restore: create schema_migrations: %w", err)
	}
	for _, m := range migrations {
		if m.version > v {
			break
		}
		for i, stmt := range m.sql(dialectPostgres) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("store: restore: migrate: step %d (%s) statement %d: %w", m.version, m.description, i+1, err)
			}
		}
	}
	want, err := pgTables(ctx, v)
	if err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	if err := pgCheckRestoredTables(ctx, tx, v, want); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	sink := &copySink{tx: tx}
	got, tables, err := readPGBackup(ctx, f, sink)
	if err != nil {
		return fmt.Errorf("store: restore: %s: %w", from, err)
	}
	if got != v {
		return fmt.Errorf("store: restore: %s: %w: it changed while it was restored", from, ErrBackupDamaged)
	}
	ids, err := pgIdentities(ctx, tx, tables)
	if err != nil {
		return fmt.Errorf("store: restore: the identity columns: %w", err)
	}
	var have [][2]string
	for _, s := range sink.seqs {
		have = append(have, [2]string{s.table, s.column})
	}
	if !slices.Equal(have, ids) {
		return fmt.Errorf("store: restore: %s: %w: the backup holds the sequences of %v, not of the identity columns %v (version %d)",
			from, ErrSchemaMismatch, have, ids, v)
	}
	for _, s := range sink.seqs {
		if !s.called {
			continue // as the migrations left it
		}
		if _, err := tx.Exec(ctx, `SELECT setval(pg_get_serial_sequence($1, $2), $3, true)`,
			pgx.Identifier{s.table}.Sanitize(), s.column, s.last); err != nil {
			return fmt.Errorf("store: restore: the sequence of %s.%s: %w", s.table, s.column, err)
		}
	}
	var maxV, n int
	if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0), COUNT(*) FROM schema_migrations`).Scan(&maxV, &n); err != nil {
		return fmt.Errorf("store: restore: %w", err)
	}
	if maxV != v || n != v {
		return fmt.Errorf("store: restore: %s: %w: its schema_migrations holds %d steps up to version %d, its header says version %d",
			from, ErrSchemaMismatch, n, maxV, v)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("store: restore: commit: %w", err)
	}
	return nil
}

// dropKeyportTables drops, in tx, the tables keyport's migrations create
// (at version v and at this code's latest), schema_migrations among them,
// in one statement: the database's other objects stay, and an object of
// someone else's that depends on one of them (a view, a foreign key) makes
// it fail rather than go too.
func dropKeyportTables(ctx context.Context, tx pgx.Tx, v int) error {
	names := map[string]bool{}
	for _, version := range []int{v, LatestVersion()} {
		tables, err := pgTables(ctx, version)
		if err != nil {
			return err
		}
		for _, t := range tables {
			names[t.name] = true
		}
	}
	var q []string
	for _, n := range slices.Sorted(maps.Keys(names)) {
		q = append(q, pgx.Identifier{n}.Sanitize())
	}
	_, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+strings.Join(q, ", "))
	return err
}
