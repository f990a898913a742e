// Package hsmtest gives tests a real, private SoftHSM2 token: New returns the
// RFC 7512 URI of a fresh token, Open an opened and initialized *hsm.HSM.
//
// SoftHSM reads SOFTHSM2_CONF once, at C_Initialize, which happens once per
// process; so the package writes one configuration per test process (a token
// directory under os.TempDir) and creates one token, with a unique label and
// random PINs, per call. Tokens are created inside the test process
// (hsm.InitToken) because SoftHSM does not see tokens another process
// creates after C_Initialize. Call Main from TestMain to remove the token
// directory when the tests end; directories of earlier, finished test
// processes are removed by the next one.
package hsmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/keyport/keyport/hsm"
)

// ModulePath is SoftHSM2's PKCS#11 module on Debian.
const ModulePath = "/usr/lib/softhsm/libsofthsm2.so"

// InstallHint is how to get SoftHSM2 and pkcs11-tool on Debian.
const InstallHint = "apt-get update && apt-get install -y softhsm2 opensc"

const dirPrefix = "keyport-softhsm-"

var (
	setupOnce sync.Once
	setupDir  string
	setupErr  error
	tokens    atomic.Int64
)

// Token describes a token New created.
type Token struct {
	URI     string
	Label   string
	UserPIN string
	SOPIN   string
	PINFile string
	// Conf is the SOFTHSM2_CONF the process uses, for pkcs11-tool and
	// softhsm2-util run as child processes.
	Conf string
}

// New creates a private SoftHSM token and returns its URI (pin-source=file:).
// It skips the test, with the apt-get line, when SoftHSM2 is not installed.
func New(t testing.TB) string {
	t.Helper()
	return NewToken(t).URI
}

// NewToken is New returning the token's details too.
func NewToken(t testing.TB) Token {
	t.Helper()
	if _, err := exec.LookPath("softhsm2-util"); err != nil {
		t.Skipf("SoftHSM2 is not installed (softhsm2-util not found); install it with: %s", InstallHint)
	}
	if _, err := os.Stat(ModulePath); err != nil {
		t.Skipf("SoftHSM2 module %s missing; install it with: %s", ModulePath, InstallHint)
	}
	setupOnce.Do(setup)
	if setupErr != nil {
		t.Fatalf("hsmtest: %v", setupErr)
	}
	tok := Token{
		Label:   fmt.Sprintf("kp-%d-%d", os.Getpid(), tokens.Add(1)),
		UserPIN: randomPIN(),
		SOPIN:   randomPIN(),
		Conf:    filepath.Join(setupDir, "softhsm2.conf"),
	}
	if err := hsm.InitToken(ModulePath, tok.Label, tok.SOPIN, tok.UserPIN); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	tok.PINFile = filepath.Join(t.TempDir(), "user.pin")
	if err := os.WriteFile(tok.PINFile, []byte(tok.UserPIN+"\n"), 0o600); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	tok.URI = (&hsm.URI{Token: tok.Label, ModulePath: ModulePath, PINSource: tok.PINFile}).String()
	return tok
}

// Open creates a token (New), opens it and runs Init, so that the receipt,
// audit, ISD KEK and sealing keys exist. The *HSM is closed at the end of the test.
func Open(t testing.TB) *hsm.HSM {
	t.Helper()
	h, _ := OpenToken(t)
	return h
}

// OpenToken is Open returning the token's details too.
func OpenToken(t testing.TB) (*hsm.HSM, Token) {
	t.Helper()
	tok := NewToken(t)
	h, err := hsm.Open(context.Background(), hsm.Config{URI: tok.URI})
	if err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	if _, err := h.Init(context.Background()); err != nil {
		t.Fatalf("hsmtest: %v", err)
	}
	return h, tok
}

// Main runs the tests and then removes this process's token directory. Use
// it as `func TestMain(m *testing.M) { hsmtest.Main(m) }`.
func Main(m *testing.M) {
	code := m.Run()
	if setupDir != "" {
		os.RemoveAll(setupDir)
	}
	os.Exit(code)
}

func setup() {
	removeStale()
	dir, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", dirPrefix, os.Getpid()))
	if err != nil {
		setupErr = err
		return
	}
	if err := os.Mkdir(filepath.Join(dir, "tokens"), 0o700); err != nil {
		setupErr = err
		return
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	body := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n",
		filepath.Join(dir, "tokens"))
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		setupErr = err
		return
	}
	// Must happen before the module's C_Initialize, i.e. before any hsm.Open
	// or hsm.InitToken in this process.
	setupErr = os.Setenv("SOFTHSM2_CONF", conf)
	setupDir = dir
}

// removeStale deletes token directories left by test processes that are gone.
func removeStale() {
	entries, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, e := range entries {
		rest := strings.TrimPrefix(filepath.Base(e), dirPrefix)
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(e)
		}
	}
}

func randomPIN() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
