package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/store/storetest"
)

// Replicas that start together on an empty token create each of its keys
// once: eight `keyport hsm init` processes at the same moment, on one token
// and one database (PostgreSQL, and a SQLite file), leave exactly one
// object of each label and class. Without the deployment's lock around the
// creation, each process found no key and created its own (5 sealing MAC
// keys on one token, say, each replica sealing with whichever it found).
// On the embedded default (no --hsm), processes starting together on a new
// data directory make one SoftHSM token between them.
func TestHSMInitOfReplicasStartingTogetherCreatesEachKeyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keyport and starts eight processes")
	}
	bin := filepath.Join(t.TempDir(), "keyport")
	buildKeyport(t, bin)
	for _, db := range []struct {
		name string
		dsn  func() string
	}{
		{"postgres", func() string { return storetest.PostgresURL(t) }},
		{"sqlite", func() string { return filepath.Join(t.TempDir(), "keyport.db") }},
	} {
		t.Run(db.name, func(t *testing.T) {
			dsn := db.dsn()
			tok := hsmtest.NewToken(t)
			env := append(cleanEnv(), "SOFTHSM2_CONF="+tok.Conf)
			common := []string{"--data-dir", filepath.Join(t.TempDir(), "data"), "--db", dsn, "--hsm", tok.URI}
			// One migration runner first, as the deployment says.
			migrate := exec.Command(bin, append([]string{"migrate"}, common...)...)
			migrate.Env = env
			if out, err := migrate.CombinedOutput(); err != nil {
				t.Fatalf("migrate: %v\n%s", err, out)
			}
			hsmInitTogether(t, 8, bin, env, common)
			h, err := hsm.Open(context.Background(), hsm.Config{URI: tok.URI})
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			st, err := h.Status(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			count := map[string]int{}
			for _, k := range st.Keys {
				count[k.Label+" ("+k.Class+")"]++
			}
			for _, want := range []string{hsm.LabelReceipt + " (private key)", hsm.LabelReceipt + " (public key)",
				hsm.LabelAudit + " (secret key)", hsm.LabelISDKEK + " (secret key)", hsm.LabelSealEnc + " (secret key)",
				hsm.LabelSealMAC + " (secret key)"} {
				if count[want] != 1 {
					t.Errorf("%d objects %s on the token, want 1 (all: %v)", count[want], want, count)
				}
			}
		})
	}
}

func TestHSMInitOfProcessesStartingTogetherOnANewDataDirMakesOneTokenWithoutSoftHSMUtil(t *testing.T) {
	if testing.Short() {
		t.Skip("builds keyport and starts eight processes")
	}
	bin := filepath.Join(t.TempDir(), "keyport")
	buildKeyport(t, bin)
	dir := filepath.Join(t.TempDir(), "data")
	common := []string{"--data-dir", dir}
	// With no softhsm2-util to be found: keyport makes the token itself,
	// since that tool's command line, which any local user can read in
	// /proc, would carry both PINs.
	var env []string
	for _, kv := range cleanEnv() {
		if !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	hsmInitTogether(t, 8, bin, append(env, "PATH="+t.TempDir()), common)
	cmd := exec.Command("softhsm2-util", "--show-slots")
	cmd.Env = append(cleanEnv(), "SOFTHSM2_CONF="+filepath.Join(dir, "softhsm", "softhsm2.conf"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("softhsm2-util: %v\n%s", err, out)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if label, ok := strings.CutPrefix(strings.TrimSpace(line), "Label:"); ok && strings.TrimSpace(label) == "keyport" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d tokens labelled keyport in the data directory, want 1:\n%s", n, out)
	}
	again := exec.Command(bin, append([]string{"hsm", "init"}, common...)...)
	again.Env = cleanEnv()
	if out, err := again.CombinedOutput(); err != nil || !strings.Contains(string(out), "nothing created") {
		t.Fatalf("init after them: %v\n%s", err, out)
	}
}

// hsmInitTogether runs n `keyport hsm init` processes of bin at the same
// moment and fails the test for each one that fails.
func hsmInitTogether(t *testing.T, n int, bin string, env, common []string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		cmd := exec.Command(bin, append([]string{"hsm", "init"}, common...)...)
		cmd.Env = env
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Errorf("hsm init %d: %v\n%s", i, err, out)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
