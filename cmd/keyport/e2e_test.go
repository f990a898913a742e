package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/store/storetest"
	"github.com/keyport/keyport/web"
)

// TestMain also lets the test binary run as a virtual module's process
// (pcsctest.StartCardProcess re-executes it).
func TestMain(m *testing.M) {
	pcsctest.MaybeRunCard()
	// One operator runs these commands; the dual-control tests ask for two
	// admins with --dual-control 2.
	os.Setenv("KEYPORT_DUAL_CONTROL", "1")
	storetest.Main(m)
}

// capture makes the commands write to buffers for the rest of the test.
var captureMu sync.Mutex

type output struct{ out, err bytes.Buffer }

func capture(t *testing.T) *output {
	captureMu.Lock()
	o := &output{}
	oldOut, oldErr := stdout, stderr
	stdout, stderr = &o.out, &o.err
	t.Cleanup(func() { stdout, stderr = oldOut, oldErr; captureMu.Unlock() })
	return o
}

// keyport runs a command in-process with the test's common flags.
func kp(t *testing.T, o *output, common []string, args ...string) string {
	t.Helper()
	o.out.Reset()
	// Common flags go after the subcommand's own positional words.
	if err := run(context.Background(), append(args, common...)); err != nil {
		t.Fatalf("keyport %s: %v\nstderr: %s", strings.Join(args, " "), err, o.err.String())
	}
	return o.out.String()
}

func sh(t *testing.T, dir string, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v %s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

func needOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed: apt-get install -y openssl")
	}
}

// opensslUnwrapRSAAES unwraps an RSA-AES blob (RSA-OAEP-SHA1 ‖ KWP) with the
// openssl command line only, as a provider or manufacturer without keyport would.
func opensslUnwrapRSAAES(t *testing.T, dir, privPEM string, blob []byte) []byte {
	t.Helper()
	const rsaLen = 384 // RSA-3072
	os.WriteFile(filepath.Join(dir, "rsa.bin"), blob[:rsaLen], 0o600)
	os.WriteFile(filepath.Join(dir, "kwp.bin"), blob[rsaLen:], 0o600)
	eph := sh(t, dir, nil, "openssl", "pkeyutl", "-decrypt", "-inkey", privPEM, "-pkeyopt", "rsa_padding_mode:oaep",
		"-pkeyopt", "rsa_oaep_md:sha1", "-in", "rsa.bin")
	return sh(t, dir, nil, "openssl", "enc", "-d", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(eph), "-iv", "A65959A6", "-in", "kwp.bin")
}

// opensslKCV is the GP KCV computed with openssl: AES-ECB(key, 01×16)[:3].
func opensslKCV(t *testing.T, dir string, key []byte) string {
	cipher := fmt.Sprintf("-aes-%d-ecb", len(key)*8)
	out := sh(t, dir, bytes.Repeat([]byte{1}, 16), "openssl", "enc", cipher, "-nopad", "-K", hex.EncodeToString(key))
	return strings.ToUpper(hex.EncodeToString(out[:3]))
}

func eid(n int) string {
	base := fmt.Sprintf("89049032%022d", n)
	r := 0
	for _, c := range base + "00" {
		r = (r*10 + int(c-'0')) % 97
	}
	return base + fmt.Sprintf("%02d", 98-r)
}

func TestManufacturerAndProviderWithTheirOwnToolsRoundTripTheFirstKeys(t *testing.T) {
	needOpenSSL(t)
	storetest.EachDSN(t, func(t *testing.T, dsn string) {
		o := capture(t)
		dir := t.TempDir()
		tok := hsmtest.NewToken(t)
		common := []string{"--data-dir", filepath.Join(dir, "data"), "--db", dsn, "--hsm", tok.URI, "--log-format", "json"}

		// The manufacturer makes its key pair with OpenSSL.
		sh(t, dir, nil, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", "maker.pem")
		sh(t, dir, nil, "openssl", "pkey", "-in", "maker.pem", "-pubout", "-out", "maker.pub.pem")

		kp(t, o, common, "batch", "create", "b1", "--export-to", filepath.Join(dir, "maker.pub.pem"), "--out", filepath.Join(dir, "transport.json"))
		var export struct {
			Batch   string `json:"batch"`
			Wrapped []byte `json:"wrapped"`
			KCV     string `json:"kcv"`
		}
		b, _ := os.ReadFile(filepath.Join(dir, "transport.json"))
		if err := json.Unmarshal(b, &export); err != nil || export.Batch != "b1" {
			t.Fatalf("transport.json: %s %v", b, err)
		}
		transport := opensslUnwrapRSAAES(t, dir, "maker.pem", export.Wrapped)
		if len(transport) != 32 || opensslKCV(t, dir, transport) != export.KCV {
			t.Fatalf("transport key: %d bytes, KCV %s vs %s", len(transport), opensslKCV(t, dir, transport), export.KCV)
		}

		// The manufacturer wraps random first keys with openssl enc -id-aes256-wrap-pad.
		secrets := map[string][]byte{"transport": transport}
		var lines []string
		for m := 0; m < 2; m++ {
			var doms []string
			for d := 1; d <= 2; d++ {
				keys, kcvs := map[string]string{}, map[string]string{}
				for _, u := range []string{"enc", "mac", "dek"} {
					k := make([]byte, 16)
					rand.Read(k)
					secrets[fmt.Sprintf("%s/%d/%s", eid(m), d, u)] = k
					w := sh(t, dir, k, "openssl", "enc", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(transport), "-iv", "A65959A6")
					keys[u] = base64.StdEncoding.EncodeToString(w)
					kcvs[u] = opensslKCV(t, dir, k)
				}
				kj, _ := json.Marshal(keys)
				cj, _ := json.Marshal(kcvs)
				doms = append(doms, fmt.Sprintf(`{"aid":"A0000001515350410%d","kvn":48,"keys":%s,"kcv":%s}`, d, kj, cj))
			}
			lines = append(lines, fmt.Sprintf(`{"eid":"%s","isd_aid":"A000000151000000","domains":[%s]}`, eid(m), strings.Join(doms, ",")))
		}
		os.WriteFile(filepath.Join(dir, "modules.jsonl"), []byte(strings.Join(lines, "\n")+"\n"), 0o600)
		if out := kp(t, o, common, "import", "--batch", "b1", "--verify", "all", filepath.Join(dir, "modules.jsonl")); !strings.Contains(out, "imported 2 modules") {
			t.Fatalf("import: %s", out)
		}
		out := kp(t, o, common, "provider", "add", "Example Bank", "--email", "ops@bank.example", "--kind", "bank")
		token := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
		if !strings.HasPrefix(token, "kp_") {
			t.Fatalf("provider add printed %q", out)
		}
		kp(t, o, nil, "sp", "keygen", "--out", filepath.Join(dir, "sp"))

		// The provider talks to the running portal.
		var cfg config
		fs, _ := newFlags("test", &cfg)
		if err := parse(fs, &cfg, common); err != nil {
			t.Fatal(err)
		}
		a, err := open(context.Background(), cfg, false)
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(web.New(a.svc, web.Options{Log: a.log}))
		call := func(method, path, ctype string, body []byte, hdr ...string) (int, []byte) {
			req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+token)
			if ctype != "" {
				req.Header.Set("Content-Type", ctype)
			}
			for i := 0; i+1 < len(hdr); i += 2 {
				req.Header.Set(hdr[i], hdr[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			rb, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, rb
		}
		pub, _ := os.ReadFile(filepath.Join(dir, "sp.pub.pem"))
		st, rb := call("POST", "/api/v1/wrapping-keys", "application/x-pem-file", pub)
		var wk struct{ ID, SHA256 string }
		if json.Unmarshal(rb, &wk); st != 201 || wk.ID == "" {
			t.Fatalf("wrapping key: %d %s", st, rb)
		}
		st, rb = call("POST", "/api/v1/claims", "application/json", []byte(fmt.Sprintf(`{"eid":"%s","wrapping_key_id":"%s"}`, eid(1), wk.ID)), "Idempotency-Key", "k1")
		var claim struct {
			ID, AID    string
			KeyPackage string `json:"key_package"`
		}
		if json.Unmarshal(rb, &claim); st != 201 || claim.AID != "A00000015153504101" {
			t.Fatalf("claim: %d %s", st, rb)
		}
		st, pkg := call("GET", claim.KeyPackage, "", nil)
		if st != 200 {
			t.Fatalf("key package: %d %s", st, pkg)
		}
		os.WriteFile(filepath.Join(dir, "pkg.json"), pkg, 0o600)

		// keyport sp unwrap checks the signature against the portal's JWKS.
		kp(t, o, nil, "sp", "unwrap", filepath.Join(dir, "pkg.json"), "--key", filepath.Join(dir, "sp.pem"), "--jwks", srv.URL, "--out", filepath.Join(dir, "keys.json"))
		var got UnwrappedKeys
		kb, _ := os.ReadFile(filepath.Join(dir, "keys.json"))
		if err := json.Unmarshal(kb, &got); err != nil {
			t.Fatal(err)
		}
		// And OpenSSL alone unwraps the same keys.
		var jws struct{ Payload string }
		json.Unmarshal(pkg, &jws)
		payload, _ := base64.RawURLEncoding.DecodeString(jws.Payload)
		var p struct {
			Keys []struct {
				Usage   string
				Wrapped []byte
			}
		}
		json.Unmarshal(payload, &p)
		if len(p.Keys) != 3 {
			t.Fatalf("package has %d keys", len(p.Keys))
		}
		for _, k := range p.Keys {
			want := secrets[fmt.Sprintf("%s/1/%s", eid(1), k.Usage)]
			if got.Keys[keyportUsage(k.Usage)] != strings.ToUpper(hex.EncodeToString(want)) {
				t.Errorf("sp unwrap: %s key differs from the manufacturer's", k.Usage)
			}
			if o := opensslUnwrapRSAAES(t, dir, "sp.pem", k.Wrapped); !bytes.Equal(o, want) {
				t.Errorf("openssl: %s key differs from the manufacturer's", k.Usage)
			}
		}

		// The clear keys go to a new file only: not over one that exists,
		// nor through a link planted where --out points, and the file the
		// link names is left as it was.
		victim := filepath.Join(dir, "victim")
		os.WriteFile(victim, []byte("untouched"), 0o644)
		os.Symlink(victim, filepath.Join(dir, "planted.json"))
		for _, out := range []string{"keys.json", "planted.json"} {
			err := run(context.Background(), []string{"sp", "unwrap", filepath.Join(dir, "pkg.json"), "--key", filepath.Join(dir, "sp.pem"),
				"--jwks", srv.URL, "--out", filepath.Join(dir, out)})
			if err == nil || !strings.Contains(err.Error(), "never overwritten") {
				t.Errorf("sp unwrap --out %s, which exists: %v", out, err)
			}
		}
		if b, _ := os.ReadFile(victim); string(b) != "untouched" {
			t.Errorf("the file a planted link names was written: %q", b)
		}

		// A tampered package is refused with a clear message.
		tampered := bytes.Replace(pkg, []byte(`"signature":"`), []byte(`"signature":"AA`), 1)
		os.WriteFile(filepath.Join(dir, "bad.json"), tampered, 0o600)
		err = run(context.Background(), []string{"sp", "unwrap", filepath.Join(dir, "bad.json"), "--key", filepath.Join(dir, "sp.pem"), "--jwks", srv.URL})
		if err == nil || !strings.Contains(err.Error(), "key package rejected") {
			t.Errorf("tampered package: %v", err)
		}
		srv.Close()
		a.Close()

		// No secret in the clear in the database or the logs.
		logs := o.err.String()
		if !strings.Contains(logs, "domain claimed") {
			t.Fatalf("logs were not captured: %q", logs)
		}
		db := databaseBytes(t, dsn)
		for name, k := range secrets {
			for _, form := range [][]byte{k, []byte(hex.EncodeToString(k)), []byte(strings.ToUpper(hex.EncodeToString(k))), []byte(base64.StdEncoding.EncodeToString(k))} {
				if bytes.Contains(db, form) {
					t.Errorf("database holds %s in the clear", name)
				}
				if strings.Contains(logs, string(form)) || strings.Contains(o.out.String(), string(form)) {
					t.Errorf("logs hold %s in the clear", name)
				}
			}
		}

		// The audit chain verifies; editing one row makes verify fail naming it.
		if out := kp(t, o, common, "audit", "verify"); !strings.Contains(out, "audit chain verified") {
			t.Fatalf("audit verify: %s", out)
		}
		editAuditRow(t, dsn, 3)
		err = run(context.Background(), append([]string{"audit", "verify"}, common...))
		var ee exitError
		if !asExit(err, &ee) || ee.code == 0 || !strings.Contains(err.Error(), "row 3") {
			t.Errorf("audit verify after an edit: %v", err)
		}
	})
}

func keyportUsage(u string) keyport.KeyUsage { return keyport.KeyUsage(u) }

func asExit(err error, target *exitError) bool { return errors.As(err, target) }

// databaseBytes returns everything the database holds: the SQLite files, or
// a pg_dump of the PostgreSQL database.
func databaseBytes(t *testing.T, dsn string) []byte {
	t.Helper()
	if strings.HasPrefix(dsn, "postgres") {
		return sh(t, "", nil, "pg_dump", "--no-owner", dsn)
	}
	var all []byte
	matches, _ := filepath.Glob(dsn + "*")
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		all = append(all, b...)
	}
	if len(all) == 0 {
		t.Fatal("no database file")
	}
	return all
}

func editAuditRow(t *testing.T, dsn string, seq int) {
	t.Helper()
	if n := storetest.ExecSQL(t, dsn, `UPDATE audit_events SET detail = '{"edited":true}' WHERE seq = ?`, seq); n != 1 {
		t.Fatalf("edited %d rows", n)
	}
}
