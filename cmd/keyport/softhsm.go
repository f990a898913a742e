package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/internal/filelock"
)

// softHSMModules are where Debian and others install SoftHSM2's PKCS#11 module.
var softHSMModules = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
}

func findSoftHSM() (string, error) {
	for _, p := range softHSMModules {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("SoftHSM2 is not installed: run `make run` (it installs it) or: apt-get install -y softhsm2")
}

// defaultToken makes sure the embedded default HSM exists: a SoftHSM token
// labelled "keyport" under <data>/softhsm with random PINs kept in 0600 files,
// and returns its PKCS#11 URI. It sets SOFTHSM2_CONF, which SoftHSM reads at
// C_Initialize, so it must run before the HSM is opened.
func defaultToken(dataDir string) (uri string, created bool, err error) {
	module, err := findSoftHSM()
	if err != nil {
		return "", false, err
	}
	dir := filepath.Join(dataDir, "softhsm")
	tokens := filepath.Join(dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", false, err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	want := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if cur, err := os.ReadFile(conf); err != nil || string(cur) != want {
		if err := os.WriteFile(conf, []byte(want), 0o600); err != nil {
			return "", false, err
		}
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	pinFile := filepath.Join(dir, "user.pin")
	// Two processes starting at once on a new data directory must not
	// both make a token (and a PIN file that fits only one of them).
	err = filelock.With(context.Background(), filepath.Join(dir, "token.lock"), func(context.Context) error {
		if entries, _ := os.ReadDir(tokens); len(entries) > 0 {
			return nil
		}
		pin, so := randomPIN(), randomPIN()
		if err := os.WriteFile(pinFile, []byte(pin), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "so.pin"), []byte(so), 0o600); err != nil {
			return err
		}
		// In this process (C_InitToken, C_InitPIN), not by softhsm2-util:
		// its command line, which every local user can read in /proc,
		// would carry both PINs.
		if err := hsm.InitToken(module, "keyport", so, pin); err != nil {
			return fmt.Errorf("create SoftHSM token: %w", err)
		}
		created = true
		return nil
	})
	if err != nil {
		return "", false, err
	}
	return "pkcs11:token=keyport?module-path=" + escapeQuery(module) + "&pin-source=file:" + escapeQuery(pinFile), created, nil
}

func escapeQuery(s string) string {
	// RFC 7512 §2.3: '/' and ':' may stand unescaped in query values.
	return strings.NewReplacer("%", "%25", "&", "%26", "?", "%3F", " ", "%20", "#", "%23").Replace(s)
}

func randomPIN() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
