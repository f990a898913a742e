// Package storetest gives tests real databases: a fresh SQLite file, and a
// fresh database in a throwaway PostgreSQL cluster that this package starts
// once per test process (initdb into a temp directory, fsync off, 127.0.0.1
// on a free port) and stops when the process ends.
//
// A package using PostgreSQL calls Main from its TestMain so that the cluster
// is stopped after the tests:
//
//	func TestMain(m *testing.M) { storetest.Main(m) }
//
// Without it, a watchdog still stops the cluster about a second after the test
// process exits. Set KEYPORT_TEST_POSTGRES_URL (a URL of a role that may
// CREATE DATABASE) to use an existing server instead.
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx" for CREATE/DROP DATABASE

	"github.com/keyport/keyport/store"
)

// InstallHint is the command that installs the PostgreSQL binaries.
const InstallHint = "apt-get update && apt-get install -y postgresql"

// Each runs fn as two subtests, "sqlite" and "postgres", each on a fresh,
// migrated store that is closed when the subtest ends.
func Each(t *testing.T, fn func(t *testing.T, s *store.Store)) {
	t.Helper()
	EachDSN(t, func(t *testing.T, dsn string) { fn(t, Open(t, dsn)) })
}

// EachDSN runs fn as the subtests "sqlite" and "postgres", each given the DSN
// of a fresh, empty database (for tests of opening and migrating).
func EachDSN(t *testing.T, fn func(t *testing.T, dsn string)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) { fn(t, SQLitePath(t)) })
	t.Run("postgres", func(t *testing.T) { fn(t, PostgresURL(t)) })
}

// Open opens dsn with migrations applied and closes it when t ends.
func Open(t testing.TB, dsn string) *store.Store {
	t.Helper()
	s, err := store.OpenOptions{Migrate: true}.Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("storetest: open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// SQLitePath returns the path of a new SQLite file in t's temp directory.
func SQLitePath(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "keyport.db")
}

// PostgresURL returns the URL of a new, empty database, dropped when t ends.
// It skips t, naming the install command, when PostgreSQL is not installed.
func PostgresURL(t testing.TB) string {
	t.Helper()
	base, err := server()
	if err != nil {
		if err == errNotInstalled {
			t.Skipf("storetest: PostgreSQL is not installed: %s", InstallHint)
		}
		t.Fatalf("storetest: %v", err)
	}
	name := "kp_" + randomHex(8)
	admin, err := sql.Open("pgx", withDB(base, "postgres"))
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("storetest: create database: %v", err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", withDB(base, "postgres"))
		if err != nil {
			return
		}
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// FORCE: a test that failed may have left connections open.
		if _, err := admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("storetest: drop database %s: %v", name, err)
		}
	})
	return withDB(base, name)
}

// Main runs the tests and stops the PostgreSQL cluster, if one was started.
func Main(m *testing.M) {
	code := m.Run()
	stop()
	os.Exit(code)
}

var errNotInstalled = fmt.Errorf("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin")

var (
	once    sync.Once
	baseURL string
	onceErr error

	mu      sync.Mutex
	cluster *pgCluster
)

type pgCluster struct {
	bin, dir string
	asUser   []string // runuser prefix when running as root
}

// server returns the URL (without database) of the shared server, starting
// the cluster on first use.
func server() (string, error) {
	once.Do(func() {
		if u := os.Getenv("KEYPORT_TEST_POSTGRES_URL"); u != "" {
			baseURL = u
			return
		}
		baseURL, onceErr = start()
	})
	return baseURL, onceErr
}

// pgBin returns the newest /usr/lib/postgresql/<version>/bin with initdb.
func pgBin() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	var ok []string
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			ok = append(ok, d)
		}
	}
	if len(ok) == 0 {
		return "", errNotInstalled
	}
	version := func(d string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(d)))
		return v
	}
	sort.Slice(ok, func(i, j int) bool { return version(ok[i]) > version(ok[j]) })
	return ok[0], nil
}

func start() (string, error) {
	bin, err := pgBin()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "keyport-pg-")
	if err != nil {
		return "", fmt.Errorf("start postgres: %w", err)
	}
	c := &pgCluster{bin: bin, dir: dir}
	// PostgreSQL refuses to run as root: run it as the postgres user in a
	// directory that user owns.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("start postgres: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("start postgres: %w", err)
		}
		c.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	if out, err := c.run(filepath.Join(bin, "initdb"), "-D", c.data(), "-U", "keyport", "--auth=trust",
		"--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C"); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("start postgres: initdb: %w\n%s", err, out)
	}
	if out, err := c.run("mkdir", "-p", c.sock()); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("start postgres: %w\n%s", err, out)
	}
	var port int
	for attempt := 0; ; attempt++ {
		port, err = freePort()
		if err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("start postgres: %w", err)
		}
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "+
			"-c full_page_writes=off -c max_connections=200", port, c.sock())
		out, err := c.run(filepath.Join(bin, "pg_ctl"), "-D", c.data(), "-l", filepath.Join(dir, "log"), "-w",
			"-o", opts, "start")
		if err == nil {
			break
		}
		if attempt == 2 {
			log, _ := os.ReadFile(filepath.Join(dir, "log"))
			os.RemoveAll(dir)
			return "", fmt.Errorf("start postgres: pg_ctl start: %w\n%s\n%s", err, out, log)
		}
	}
	mu.Lock()
	cluster = c
	mu.Unlock()
	c.watchdog()
	return fmt.Sprintf("postgres://keyport@127.0.0.1:%d/?sslmode=disable", port), nil
}

func (c *pgCluster) data() string { return filepath.Join(c.dir, "data") }
func (c *pgCluster) sock() string { return filepath.Join(c.dir, "sock") }

func (c *pgCluster) run(name string, args ...string) ([]byte, error) {
	argv := append(append(append([]string(nil), c.asUser...), name), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/" // the postgres user may not read the caller's directory
	return cmd.CombinedOutput()
}

// watchdog starts a detached shell that stops the cluster and removes its
// directory once this process is gone: a test binary that panics or times
// out never reaches Main's cleanup.
func (c *pgCluster) watchdog() {
	stopCmd := strings.Join(append(append([]string(nil), c.asUser...),
		filepath.Join(c.bin, "pg_ctl"), "-D", c.data(), "stop", "-m", "immediate"), " ")
	script := fmt.Sprintf(`while [ -d /proc/%d ]; do sleep 1; done; %s >/dev/null 2>&1; rm -rf %s`,
		os.Getpid(), stopCmd, c.dir)
	cmd := exec.Command("setsid", "sh", "-c", script)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, nil, nil
	if err := cmd.Start(); err == nil {
		go cmd.Wait() // reap it should it end first
	}
}

// stop stops the cluster started by this process and removes its files.
func stop() {
	mu.Lock()
	c := cluster
	cluster = nil
	mu.Unlock()
	if c == nil {
		return
	}
	c.run(filepath.Join(c.bin, "pg_ctl"), "-D", c.data(), "stop", "-m", "fast")
	os.RemoveAll(c.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func withDB(base, db string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	u.Path = "/" + db
	return u.String()
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ExecSQL runs q with args on the database dsn directly, past the store, as
// someone with write access to the database but not to the HSM would (tests
// of tampering use it). "?" placeholders are rewritten to $n for
// PostgreSQL. It returns the rows affected.
func ExecSQL(t testing.TB, dsn, q string, args ...any) int64 {
	t.Helper()
	driver := "sqlite3"
	if strings.HasPrefix(dsn, "postgres") {
		driver = "pgx"
		for i := 1; strings.Contains(q, "?"); i++ {
			q = strings.Replace(q, "?", fmt.Sprintf("$%d", i), 1)
		}
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.Exec(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// DumpText returns every value of every text and blob column of every
// table of the database dsn, read directly past the store, each as
// "table.column: value" (blobs as their raw bytes): for tests that a secret
// is stored nowhere in the clear.
func DumpText(t testing.TB, dsn string) []string {
	t.Helper()
	driver, tablesQ := "sqlite3", `SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`
	if strings.HasPrefix(dsn, "postgres") {
		driver, tablesQ = "pgx", `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'`
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tables []string
	rows, err := db.Query(tablesQ)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	if len(tables) == 0 {
		t.Fatal("DumpText: no tables")
	}
	var out []string
	for _, table := range tables {
		rows, err := db.Query(`SELECT * FROM ` + table)
		if err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		cols, _ := rows.Columns()
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("%s: %v", table, err)
			}
			for i, v := range vals {
				switch v := v.(type) {
				case string:
					out = append(out, table+"."+cols[i]+": "+v)
				case []byte:
					out = append(out, table+"."+cols[i]+": "+string(v))
				}
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		rows.Close()
	}
	return out
}
