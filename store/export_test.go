package store

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/keyport/keyport"
)

// ExecForTest runs a raw statement on the writer, for tests that need a
// database in a state the API cannot produce.
func ExecForTest(s *Store, query string, args ...any) error {
	return s.w.WithContext(context.Background()).Exec(query, args...).Error
}

// QueryStringsForTest returns the first column of query's rows as strings.
func QueryStringsForTest(s *Store, query string, args ...any) ([]string, error) {
	var out []string
	err := s.w.WithContext(context.Background()).Raw(query, args...).Scan(&out).Error
	return out, err
}

// ColumnsForTest returns every table's columns in declaration order.
func ColumnsForTest(s *Store) (map[string][]string, error) {
	db := s.w.WithContext(context.Background())
	out := map[string][]string{}
	if s.dialect == dialectPostgres {
		var rows []struct{ TableName, ColumnName string }
		err := db.Raw(`SELECT table_name, column_name FROM information_schema.columns
			WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position`).Scan(&rows).Error
		for _, r := range rows {
			out[r.TableName] = append(out[r.TableName], r.ColumnName)
		}
		return out, err
	}
	var tables []string
	if err := db.Raw(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).
		Scan(&tables).Error; err != nil {
		return nil, err
	}
	for _, t := range tables {
		var cols []struct{ Name string }
		if err := db.Raw(`SELECT name FROM pragma_table_info(?) ORDER BY cid`, t).Scan(&cols).Error; err != nil {
			return nil, err
		}
		for _, c := range cols {
			out[t] = append(out[t], c.Name)
		}
	}
	return out, nil
}

// CheckpointedFramesForTest is how many WAL frames the SQLite checkpointer
// copied into the database file so far (-1 without one).
func CheckpointedFramesForTest(s *Store) int64 {
	if s.checkpoints == nil {
		return -1
	}
	return s.checkpoints.frames.Load()
}

// ClaimGuessesForTest returns how many claim batches were committed on a
// guessed audit head, and how many guesses were wrong (PostgreSQL).
func ClaimGuessesForTest(s *Store) (hits, misses uint64) {
	return s.guessHits.Load(), s.guessMisses.Load()
}

// GuessSkip is how many batches read the head after a wrong guess.
const GuessSkip = guessSkip

// ForeignKeyForTest is one single-column FOREIGN KEY: table.column
// refers to parent.
type ForeignKeyForTest struct{ Table, Column, Parent string }

// ForeignKeysForTest lists the schema's foreign keys.
func ForeignKeysForTest(s *Store) ([]ForeignKeyForTest, error) {
	db := s.w.WithContext(context.Background())
	var out []ForeignKeyForTest
	if s.dialect == dialectPostgres {
		err := db.Raw(`SELECT cl.relname AS "table", a.attname AS "column", p.relname AS parent
			FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_class p ON p.oid = c.confrelid
			JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
			WHERE c.contype = 'f' AND cl.relnamespace = current_schema()::regnamespace`).Scan(&out).Error
		return out, err
	}
	err := db.Raw(`SELECT m.name AS "table", f."from" AS "column", f."table" AS parent
		FROM sqlite_master m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table'`).Scan(&out).Error
	return out, err
}

// IndexLeadForTest is the first column of an index of table, with the
// index's WHERE clause ("" for a full index).
type IndexLeadForTest struct{ Table, Column, Where string }

// IndexLeadsForTest lists every index's first column, primary keys and
// unique constraints included.
func IndexLeadsForTest(s *Store) ([]IndexLeadForTest, error) {
	db := s.w.WithContext(context.Background())
	var out []IndexLeadForTest
	if s.dialect == dialectPostgres {
		err := db.Raw(`SELECT t.relname AS "table", a.attname AS "column", COALESCE(pg_get_expr(i.indpred, i.indrelid), '') AS "where"
			FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
			JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]
			WHERE t.relnamespace = current_schema()::regnamespace`).Scan(&out).Error
		return out, err
	}
	var rows []struct{ Table, Column, SQL string }
	err := db.Raw(`SELECT m.name AS "table", ii.name AS "column", COALESCE(x.sql, '') AS sql
		FROM sqlite_master m, pragma_index_list(m.name) il, pragma_index_info(il.name) ii
		LEFT JOIN sqlite_master x ON x.type = 'index' AND x.name = il.name
		WHERE m.type = 'table' AND ii.seqno = 0`).Scan(&rows).Error
	for _, r := range rows {
		where := ""
		if _, after, ok := strings.Cut(r.SQL, " WHERE "); ok {
			where = after
		}
		out = append(out, IndexLeadForTest{Table: r.Table, Column: r.Column, Where: where})
	}
	// An INTEGER PRIMARY KEY is the rowid itself, in no index list.
	var pks []struct{ Table, Column string }
	if err == nil {
		err = db.Raw(`SELECT m.name AS "table", c.name AS "column" FROM sqlite_master m, pragma_table_info(m.name) c
			WHERE m.type = 'table' AND c.pk = 1 AND upper(c.type) = 'INTEGER'`).Scan(&pks).Error
	}
	for _, p := range pks {
		out = append(out, IndexLeadForTest{Table: p.Table, Column: p.Column})
	}
	return out, err
}

// OpenAtVersionForTest opens the SQLite or PostgreSQL database dsn names
// and migrates it to version v and no further, for tests that need a
// database an older keyport made.
func OpenAtVersionForTest(ctx context.Context, dsn string, v int) (*Store, error) {
	s, err := open(ctx, dsn)
	if err != nil {
		return nil, err
	}
	if err := s.migrate(ctx, v); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// SetUseLockCheckEveryForTest sets how often serve's use lock on
// PostgreSQL is checked, for locks taken from now on; the returned
// function restores it.
func SetUseLockCheckEveryForTest(d time.Duration) func() {
	old := useLockCheckEvery
	useLockCheckEvery = d
	return func() { useLockCheckEvery = old }
}

// CheckUseLockForTest runs one check of serve's use lock on PostgreSQL,
// as its keeper does every useLockCheckEvery.
func CheckUseLockForTest(ctx context.Context, l *UseLock) error { return l.check(ctx) }

// UseLockPIDForTest is the PostgreSQL backend holding the use lock l (0
// while its session is lost).
func UseLockPIDForTest(l *UseLock) uint32 {
	if l.pg == nil {
		return 0
	}
	l.pg.mu.Lock()
	defer l.pg.mu.Unlock()
	if l.pg.conn == nil {
		return 0
	}
	return l.pg.conn.PgConn().PID()
}

// UseLockFileForTest is the use lock file of the SQLite database dsn names
// ("" for none).
func UseLockFileForTest(dsn string) (string, error) {
	t, err := useTargetOf(dsn)
	return t.file, err
}

// PGBackupPart is one record of a PostgreSQL backup file, for tests that
// edit a backup as someone who can write the file would.
type PGBackupPart struct {
	Sequence bool     // a sequence's state, not a table
	Table    string   // the table (of the sequence)
	Cols     []string // a table's columns; a sequence's column alone
	Data     []byte   // a table's COPY stream
	Called   bool     // a sequence's is_called
	Last     int64    // a sequence's last value
}

// SplitPGBackupForTest reads a PostgreSQL backup's schema version and
// records, checking its layout but not its schema nor its hash.
func SplitPGBackupForTest(file []byte) (int, []PGBackupPart, error) {
	b := &pgBackupReader{r: bufio.NewReader(bytes.NewReader(file)), h: sha256.New()}
	if _, err := b.r.Discard(len(pgBackupMagic) + 2); err != nil {
		return 0, nil, err
	}
	v, err := b.u32("version")
	if err != nil {
		return 0, nil, err
	}
	if _, err := b.name("dialect"); err != nil {
		return 0, nil, err
	}
	var parts []PGBackupPart
	for {
		tag, err := b.u8("tag")
		if err != nil {
			return 0, nil, err
		}
		var p PGBackupPart
		switch tag {
		case 'T':
			if p.Table, err = b.name("table"); err != nil {
				return 0, nil, err
			}
			n, err := b.u16("count")
			if err != nil {
				return 0, nil, err
			}
			for range n {
				c, err := b.name("column")
				if err != nil {
					return 0, nil, err
				}
				p.Cols = append(p.Cols, c)
			}
			if p.Data, err = io.ReadAll(&chunks{b: b, what: p.Table}); err != nil {
				return 0, nil, err
			}
		case 'S':
			p.Sequence = true
			if p.Table, err = b.name("table"); err != nil {
				return 0, nil, err
			}
			c, err := b.name("column")
			if err != nil {
				return 0, nil, err
			}
			p.Cols = []string{c}
			called, err := b.u8("called")
			if err != nil {
				return 0, nil, err
			}
			var last [8]byte
			if err := b.full(last[:], "last"); err != nil {
				return 0, nil, err
			}
			p.Called, p.Last = called == 1, int64(binary.BigEndian.Uint64(last[:]))
		case 'E':
			return int(v), parts, nil
		default:
			return 0, nil, fmt.Errorf("tag %q", tag)
		}
		parts = append(parts, p)
	}
}

// JoinPGBackupForTest writes a PostgreSQL backup of schema version v
// holding parts, with its hash: a file Backup could have written, whatever
// parts hold.
func JoinPGBackupForTest(v int, parts []PGBackupPart) []byte {
	var out bytes.Buffer
	b := newPGBackupWriter(&out)
	b.header(v)
	for _, p := range parts {
		if p.Sequence {
			b.sequence(pgSequence{table: p.Table, column: p.Cols[0], called: p.Called, last: p.Last})
			continue
		}
		b.tableHeader(pgTable{name: p.Table, cols: p.Cols})
		c := &chunker{b: b}
		c.Write(p.Data)
		c.close()
	}
	if err := b.end(); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// UseLockKey is the PostgreSQL advisory key of the use lock.
const UseLockKey = useLockKey

// AdminModulesOfForTest is the coalesced handshake read of several EIDs.
func AdminModulesOfForTest(s *Store, eids []keyport.EID) (map[keyport.EID]*keyport.AdminModule, error) {
	return s.adminModulesOf(context.Background(), eids)
}

// OldestPendingOfForTest is the coalesced first read of several sessions.
func OldestPendingOfForTest(s *Store, moduleIDs []int64) (map[int64][]keyport.PendingJob, error) {
	return s.oldestPendingOf(context.Background(), moduleIDs)
}
