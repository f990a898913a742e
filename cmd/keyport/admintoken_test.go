package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/store/storetest"
)

// openTestApp opens the app the common flags describe (migrated).
func openTestApp(t *testing.T, common []string) *app {
	t.Helper()
	var cfg config
	fs, _ := newFlags("test", &cfg)
	if err := parse(fs, &cfg, common); err != nil {
		t.Fatal(err)
	}
	a, err := open(context.Background(), cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func auditActions(t *testing.T, a *app) map[string]string {
	t.Helper()
	evs, err := a.store.RecentAudit(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range evs {
		if _, seen := out[e.Action]; !seen {
			out[e.Action] = e.Actor
		}
	}
	return out
}

func TestAdminTokenCommandsListRevokeAndRecordTheOperator(t *testing.T) {
	o := capture(t)
	dir := t.TempDir()
	common := []string{"--data-dir", filepath.Join(dir, "data"), "--db", storetest.SQLitePath(t), "--hsm", hsmtest.New(t)}
	kp(t, o, common, "hsm", "init")
	token := strings.TrimSpace(kp(t, o, common, "admin", "token", "--name", "nightly", "--ttl", "48h", "--operator", "alice"))
	if !strings.HasPrefix(token, keyport.TokenPrefix) {
		t.Fatalf("admin token printed %q", token)
	}
	list := kp(t, o, common, "admin", "token", "list")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "nightly") || !strings.Contains(lines[1], "operator:alice") ||
		!strings.Contains(lines[1], "active") || strings.Contains(list, token) {
		t.Fatalf("token list:\n%s", list)
	}
	id := strings.Fields(lines[1])[0]
	kp(t, o, common, "admin", "token", "revoke", id, "--operator", "bob")
	if list = kp(t, o, common, "admin", "token", "list"); !strings.Contains(list, "revoked") {
		t.Fatalf("after revoke:\n%s", list)
	}
	out := kp(t, o, common, "admin", "user", "add", "root@issuer.example", "--operator", "carol")
	pw := strings.TrimSpace(out[strings.LastIndex(out, ":")+1:])
	kp(t, o, common, "admin", "user", "disable", "root@issuer.example", "--operator", "dave")
	a := openTestApp(t, common)
	if _, err := a.svc.Login(context.Background(), "root@issuer.example", pw, ""); err == nil {
		t.Fatal("a disabled admin signed in")
	}
	if _, err := a.svc.Authenticate(context.Background(), token); err == nil {
		t.Fatal("the revoked token works")
	}
	kp(t, o, common, "admin", "user", "enable", "root@issuer.example", "--operator", "erin")
	if _, err := a.svc.Login(context.Background(), "root@issuer.example", pw, ""); err != nil {
		t.Fatalf("enabled admin: %v", err)
	}
	got := auditActions(t, a)
	for action, actor := range map[string]string{"admin-token.create": "operator:alice", "admin-token.revoke": "operator:bob",
		"admin-user.add": "operator:carol", "admin-user.disable": "operator:dave", "admin-user.enable": "operator:erin"} {
		if got[action] != actor {
			t.Errorf("%s by %q, want %q", action, got[action], actor)
		}
	}
	for _, actor := range got {
		if actor == "admin:cli" {
			t.Errorf("an event names admin:cli: %v", got)
		}
	}
	// Without --operator, the OS user is recorded.
	kp(t, o, common, "admin", "token", "--name", "default-op")
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if got := auditActions(t, a); got["admin-token.create"] != "operator:"+u.Username {
		t.Fatalf("default operator: %q, want operator:%s", got["admin-token.create"], u.Username)
	}
	if err := run(context.Background(), append([]string{"admin", "token", "--operator", "two words"}, common...)); err == nil {
		t.Fatal("an operator name with a space was taken")
	}
}

func TestFirstRunAdminTokenGoesToAPrivateFileAndOnlyItsPathIsPrinted(t *testing.T) {
	o := capture(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	common := []string{"--data-dir", data, "--db", storetest.SQLitePath(t), "--hsm", hsmtest.New(t)}
	kp(t, o, common, "hsm", "init")
	a := openTestApp(t, common)
	if err := firstRunAdminToken(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(data, firstRunTokenFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	token := strings.TrimSpace(string(b))
	if p, err := a.svc.Authenticate(context.Background(), token); err != nil || !p.Admin {
		t.Fatalf("the file's token: %+v %v", p, err)
	}
	printed := o.out.String() + o.err.String()
	if strings.Contains(printed, token) || !strings.Contains(printed, path) {
		t.Fatalf("printed:\n%s", printed)
	}
	// A second serve of the same directory makes no new token.
	if err := firstRunAdminToken(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if ts, _ := a.svc.ListAdminTokens(context.Background(), cli); len(ts) != 1 {
		t.Fatalf("%d admin tokens after a second start", len(ts))
	}
}

func TestDevelopmentModePrintsEachMailedLinkToStderrOnceAndStoresItNowhere(t *testing.T) {
	o := capture(t)
	dir := t.TempDir()
	dsn := storetest.SQLitePath(t)
	common := []string{"--data-dir", filepath.Join(dir, "data"), "--db", dsn, "--hsm", hsmtest.New(t), "--addr", "127.0.0.1:8080"}
	kp(t, o, common, "hsm", "init")
	a := openTestApp(t, common)
	if _, err := (&portalFlags{}).webOptions(a); err != nil || a.svc.Mailer != nil {
		t.Fatalf("without development mode or SMTP: mailer %T, %v", a.svc.Mailer, err)
	}
	if _, err := (&portalFlags{insecureCookies: true}).webOptions(a); err != nil {
		t.Fatal(err)
	}
	if _, ok := a.svc.Mailer.(*devMailer); !ok {
		t.Fatalf("development mailer is %T", a.svc.Mailer)
	}
	o.err.Reset()
	if _, err := a.svc.SignUpProvider(context.Background(), keyport.SignUp{Organisation: "Dev Bank", Kind: keyport.KindBank,
		Contact: "Dev", Email: "dev@bank.example", Password: "a long enough password"}, "http://127.0.0.1:8080"); err != nil {
		t.Fatal(err)
	}
	printed := o.err.String()
	i := strings.Index(printed, "/verify?token=")
	if i < 0 || strings.Count(printed, "/verify?token=") != 1 || !strings.Contains(printed, "To: dev@bank.example") {
		t.Fatalf("stderr:\n%s", printed)
	}
	token := strings.Fields(printed[i+len("/verify?token="):])[0]
	for _, v := range storetest.DumpText(t, dsn) {
		if strings.Contains(v, token) {
			t.Fatalf("the printed token is in the database: %s", v)
		}
	}
	if _, err := a.svc.VerifyEmail(context.Background(), token); err != nil {
		t.Fatalf("the printed link does not verify: %v", err)
	}
}

// The first run's "Add a provider" line, run as printed (with the store
// settings its note asks for when serve was given them), reaches serve's
// deployment under serve's dual control: with KEYPORT_DUAL_CONTROL=1, as
// make run serves, the provider is approved at once; under the default it
// waits for a second admin.
func TestFirstRunAddAProviderLineRunsUnderServesOwnDualControl(t *testing.T) {
	for _, dual := range []int{1, 2} {
		t.Run(fmt.Sprintf("dual-control-%d", dual), func(t *testing.T) {
			o := capture(t)
			data := filepath.Join(t.TempDir(), "data")
			dsn, token := storetest.SQLitePath(t), hsmtest.New(t)
			common := []string{"--data-dir", data, "--db", dsn, "--hsm", token}
			kp(t, o, common, "hsm", "init")
			a := openTestApp(t, append(common, "--dual-control", strconv.Itoa(dual)))
			if err := firstRunAdminToken(context.Background(), a); err != nil {
				t.Fatal(err)
			}
			printed := o.err.String()
			if !strings.Contains(printed, "KEYPORT_DB and KEYPORT_HSM") {
				t.Fatalf("serve was given --db and --hsm, and the hints do not say the commands need them:\n%s", printed)
			}
			var line string
			for _, l := range strings.Split(printed, "\n") {
				if rest, ok := strings.CutPrefix(l, "Add a provider:"); ok {
					line = strings.TrimSpace(rest)
				}
			}
			// The line runs in a shell without the KEYPORT_DUAL_CONTROL=1
			// that TestMain sets for the other tests.
			t.Setenv("KEYPORT_DUAL_CONTROL", "")
			os.Unsetenv("KEYPORT_DUAL_CONTROL")
			words := shellWords(t, line)
			for len(words) > 0 && strings.Contains(words[0], "=") {
				k, v, _ := strings.Cut(words[0], "=")
				t.Setenv(k, v)
				words = words[1:]
			}
			if len(words) < 2 || words[0] != os.Args[0] {
				t.Fatalf("the printed line does not run this binary: %q", line)
			}
			t.Setenv("KEYPORT_DB", dsn)
			t.Setenv("KEYPORT_HSM", token)
			// Under dual control the command files the approval and says
			// it waits for another admin.
			if err := run(context.Background(), words[1:]); (err != nil) != (dual > 1) {
				t.Fatalf("%s: %v\n%s", line, err, o.err.String())
			}
			ps, err := a.svc.ListProviders(context.Background(), cli)
			if err != nil || len(ps) != 1 {
				t.Fatalf("providers after the printed line: %+v %v", ps, err)
			}
			want := keyport.ProviderApproved
			if dual > 1 {
				want = keyport.ProviderPending
			}
			if ps[0].Status != want {
				t.Fatalf("the printed line's provider is %s under --dual-control %d, want %s (line: %s)", ps[0].Status, dual, want, line)
			}
		})
	}
}

// shellWords splits a printed command line as sh would one of plain words
// and double-quoted strings without escapes.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var out []string
	for line = strings.TrimSpace(line); line != ""; line = strings.TrimSpace(line) {
		if line[0] == '"' {
			end := strings.IndexByte(line[1:], '"')
			if end < 0 {
				t.Fatalf("unbalanced quote in %q", line)
			}
			out, line = append(out, line[1:end+1]), line[end+2:]
			continue
		}
		w, rest, _ := strings.Cut(line, " ")
		out, line = append(out, w), rest
	}
	return out
}
