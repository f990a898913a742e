package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseArgsAcceptsFlagsBeforeAndAfterPositionalArguments(t *testing.T) {
	for _, args := range [][]string{
		{"--batch", "b1", "file.jsonl"},
		{"file.jsonl", "--batch", "b1"},
		{"--batch=b1", "file.jsonl"},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		batch := fs.String("batch", "", "")
		if err := parseArgs(fs, args); err != nil || *batch != "b1" || fs.NArg() != 1 || fs.Arg(0) != "file.jsonl" {
			t.Errorf("%v: batch %q args %v err %v", args, *batch, fs.Args(), err)
		}
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.String("batch", "", "")
	if err := parseArgs(fs, []string{"--batch", "b", "--", "--not-a-flag"}); err != nil || fs.Arg(0) != "--not-a-flag" {
		t.Errorf("-- did not end the flags: %v %v", fs.Args(), err)
	}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	if err := parseArgs(fs, []string{"--unknown"}); err == nil {
		t.Error("unknown flag accepted")
	}
}

func TestConfigReadsSecretsFromFilesAndRefusesBothForms(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "db")
	os.WriteFile(secret, []byte("postgres://u:p@127.0.0.1/k\n"), 0o600)
	t.Setenv("KEYPORT_DB_FILE", secret)
	var c config
	if err := c.bind(flag.NewFlagSet("t", flag.ContinueOnError)); err != nil || c.DB != "postgres://u:p@127.0.0.1/k" {
		t.Errorf("KEYPORT_DB_FILE: %q %v", c.DB, err)
	}
	t.Setenv("KEYPORT_DB", "x.db")
	if err := (&config{}).bind(flag.NewFlagSet("t", flag.ContinueOnError)); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both forms: %v", err)
	}
}

func TestConfigDefaultsPutEverythingUnderTheDataDirectory(t *testing.T) {
	t.Setenv("KEYPORT_DATA_DIR", t.TempDir())
	var c config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	if err := c.bind(fs); err != nil {
		t.Fatal(err)
	}
	if err := parse(fs, &c, nil); err != nil {
		t.Fatal(err)
	}
	if c.DB != filepath.Join(c.DataDir, "keyport.db") || c.Addr != "127.0.0.1:8080" || c.OAEPHash != "sha1" {
		t.Errorf("defaults: %+v", c)
	}
	c.OAEPHash = "md5"
	if err := c.finish(); err == nil {
		t.Error("oaep-hash md5 accepted")
	}
}

func TestRedactDSNHidesThePostgresPassword(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://keyport:s3cret@db:5432/k": "postgres://keyport:***@db:5432/k",
		"postgres://db/k":                     "postgres://db/k",
		"/var/lib/keyport/keyport.db":         "/var/lib/keyport/keyport.db",
	} {
		if got := redactDSN(in); got != want {
			t.Errorf("redactDSN(%q) = %q", in, got)
		}
	}
}

func TestTheDefaultPublicURLNamesALoopbackAddressLocalhost(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8080":  "http://localhost:8080",
		"[::1]:9000":      "http://localhost:9000",
		"0.0.0.0:8080":    "http://0.0.0.0:8080",
		"10.1.2.3:80":     "http://10.1.2.3:80",
		"portal.test:443": "http://portal.test:443",
	} {
		if got := defaultPublicURL(addr); got != want {
			t.Errorf("%s: %s, want %s", addr, got, want)
		}
	}
}

func TestConfigReadsTheSMPPURLFromAFileAndNeverShowsItsPassword(t *testing.T) {
	t.Setenv("KEYPORT_DATA_DIR", t.TempDir())
	f := filepath.Join(t.TempDir(), "smpp")
	os.WriteFile(f, []byte("smpp://ota:Pw9zzq@127.0.0.1:2775?source=1234\n"), 0o600)
	t.Setenv("KEYPORT_SMPP_URL_FILE", f)
	var c config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	if err := c.bind(fs); err != nil {
		t.Fatal(err)
	}
	if err := parse(fs, &c, nil); err != nil {
		t.Fatal(err)
	}
	if c.SMPP == nil || c.SMPP.SystemID != "ota" || c.SMPP.Password != "Pw9zzq" || c.SMPP.Source != "1234" {
		t.Fatalf("SMPP config %v", c.SMPP)
	}
	if s := c.SMPP.String(); strings.Contains(s, "Pw9zzq") {
		t.Errorf("String shows the password: %s", s)
	}
	os.WriteFile(f, []byte("smpp://ota:Pw9zzq@127.0.0.1:99999"), 0o600)
	c = config{}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	if err := c.bind(fs); err != nil {
		t.Fatal(err)
	}
	err := parse(fs, &c, nil)
	if err == nil || !strings.Contains(err.Error(), "KEYPORT_SMPP_URL") || strings.Contains(err.Error(), "Pw9zzq") {
		t.Fatalf("bad port: %v", err)
	}
	t.Setenv("KEYPORT_SMPP_URL", "smpp://ota:x@h")
	if err := (&config{}).bind(flag.NewFlagSet("t", flag.ContinueOnError)); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both forms: %v", err)
	}
}

// TestHSMSessionsComesFromTheEnvironmentOrTheFlagWithinBounds: 0 is the
// pool's own default; a number outside 0–1024, or not a number, is refused.
func TestHSMSessionsComesFromTheEnvironmentOrTheFlagWithinBounds(t *testing.T) {
	t.Setenv("KEYPORT_DATA_DIR", t.TempDir())
	t.Setenv("KEYPORT_HSM_SESSIONS", "2")
	var c config
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	if err := c.bind(fs); err != nil {
		t.Fatal(err)
	}
	if err := parse(fs, &c, nil); err != nil || c.HSMSessions != 2 {
		t.Fatalf("KEYPORT_HSM_SESSIONS=2: %d, %v", c.HSMSessions, err)
	}
	var f config
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	if err := f.bind(fs); err != nil {
		t.Fatal(err)
	}
	if err := parse(fs, &f, []string{"--hsm-sessions", "1025"}); err == nil || !strings.Contains(err.Error(), "--hsm-sessions") {
		t.Errorf("--hsm-sessions 1025: %v", err)
	}
	t.Setenv("KEYPORT_HSM_SESSIONS", "many")
	if err := (&config{}).bind(flag.NewFlagSet("t", flag.ContinueOnError)); err == nil || !strings.Contains(err.Error(), "KEYPORT_HSM_SESSIONS") {
		t.Errorf("KEYPORT_HSM_SESSIONS=many: %v", err)
	}
}

// --help shows the flags' defaults, which come from the environment: a
// database password or an HSM PIN there is shown redacted, and the values
// themselves are kept (and a flag still sets them).
func TestHelpShowsNoPasswordOrPINFromTheEnvironment(t *testing.T) {
	t.Setenv("KEYPORT_DATA_DIR", t.TempDir())
	f := filepath.Join(t.TempDir(), "db")
	os.WriteFile(f, []byte("postgres://kp:Sup3rS3cret@db.internal/keyport\n"), 0o600)
	t.Setenv("KEYPORT_DB_FILE", f)
	t.Setenv("KEYPORT_HSM", "pkcs11:token=kp?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=98765")
	var c config
	fs, err := newFlags("serve", &c)
	if err != nil {
		t.Fatal(err)
	}
	var help strings.Builder
	fs.SetOutput(&help)
	fs.PrintDefaults()
	for _, secret := range []string{"Sup3rS3cret", "98765"} {
		if strings.Contains(help.String(), secret) {
			t.Errorf("--help shows %q:\n%s", secret, help.String())
		}
	}
	if !strings.Contains(help.String(), "postgres://kp:***@db.internal/keyport") || !strings.Contains(help.String(), "pkcs11:token=kp") {
		t.Errorf("--help no longer shows the defaults at all:\n%s", help.String())
	}
	if err := parse(fs, &c, nil); err != nil {
		t.Fatal(err)
	}
	if c.DB != "postgres://kp:Sup3rS3cret@db.internal/keyport" || !strings.HasSuffix(c.HSM, "pin-value=98765") {
		t.Fatalf("the values: db %q hsm %q", redactDSN(c.DB), redactHSM(c.HSM))
	}
	if err := parse(fs, &c, []string{"--db", "/tmp/x.db"}); err != nil || c.DB != "/tmp/x.db" {
		t.Fatalf("--db: %q %v", c.DB, err)
	}
}
