package store

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"
)

// Statements past gorm. The statements every claim makes (its token and
// domain reads, its writes), the admin sessions' job and lease writes and
// the audit seal go to the connection directly: gorm's statement building
// (clauses, reflection over the row, callbacks) cost more than SQLite's own
// work for them (BenchmarkClaimWrite in bench_test.go).
//
// A statement here is written with ? parameters, numbered for PostgreSQL
// ($1, $2, …) by direct, so it has no other question mark.

// conn is where r's statements go: inside Store.tx the transaction (its
// stmtTx, which runs them prepared), otherwise the pool.
func (r *repo) conn() gorm.ConnPool { return connOf(r.w) }

// connOf is the connection db's statements go to, below gorm.
func connOf(db *gorm.DB) gorm.ConnPool {
	conn := db.Statement.ConnPool
	if p, ok := conn.(*gorm.PreparedStmtTX); ok {
		// A gorm transaction (writeTx) prepares a statement anew on every
		// execution there: run it on the transaction itself.
		conn = p.Tx
	}
	return conn
}

// exec runs the write q on r's connection.
func (r *repo) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	defer r.timed(q, "raw")()
	return r.conn().ExecContext(ctx, r.direct(q), args...)
}

// affected is the count of rows exec's statement changed.
func affected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// query runs the read q on r's reader (the transaction, inside one).
func (r *repo) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	defer r.timed(q, "query")()
	return connOf(r.r).QueryContext(ctx, r.direct(q), args...)
}

// scanRow runs q, which returns at most one row, on r's connection and
// scans that row into dest: sql.ErrNoRows when there is none.
func (r *repo) scanRow(ctx context.Context, q string, args []any, dest ...any) error {
	defer r.timed(q, "row")()
	return r.conn().QueryRowContext(ctx, r.direct(q), args...).Scan(dest...)
}

// timed starts timing q under the operation gorm's processor for its verb
// has (metrics.go): create, update or delete, or else op. It returns what
// ends the timing.
func (r *repo) timed(q, op string) func() {
	if r.timing == nil {
		return func() {}
	}
	h := r.timing.Load()
	if h == nil {
		return func() {}
	}
	verb, _, _ := strings.Cut(strings.TrimLeft(q, " \t\r\n"), " ")
	switch strings.ToUpper(verb) {
	case "INSERT":
		op = "create"
	case "UPDATE":
		op = "update"
	case "DELETE":
		op = "delete"
	}
	start := time.Now()
	return func() { h.WithLabelValues(op).Observe(time.Since(start).Seconds()) }
}

// direct is q in r's dialect.
func (r *repo) direct(q string) string {
	if r.dialect != dialectPostgres {
		return q
	}
	return pgStatements.of(q)
}

// in is an IN list of one parameter per value, and the values as
// arguments: "(?, ?)", {a, b}.
func in[T ~string](vals []T) (string, []any) {
	args := make([]any, len(vals))
	for i, v := range vals {
		args[i] = string(v)
	}
	return "(?" + strings.Repeat(", ?", max(len(vals)-1, 0)) + ")", args
}

// maxNumbered bounds the statements kept numbered: the audit seal's text
// varies with the number of events, which has no fixed bound.
const maxNumbered = 512

// numberedCache keeps the PostgreSQL text of the statements met so far.
type numberedCache struct {
	mu sync.RWMutex
	m  map[string]string
}

var pgStatements = &numberedCache{m: map[string]string{}}

func (c *numberedCache) of(q string) string {
	c.mu.RLock()
	n, ok := c.m[q]
	c.mu.RUnlock()
	if ok {
		return n
	}
	n = numbered(q)
	c.mu.Lock()
	if len(c.m) < maxNumbered {
		c.m[q] = n
	}
	c.mu.Unlock()
	return n
}

// numbered turns the ? parameters of a statement into $1, $2, …; the
// statements it is given have no other question mark.
func numbered(q string) string {
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
