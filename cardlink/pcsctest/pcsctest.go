// Package pcsctest starts a private PC/SC stack for tests: a pcscd of its own
// (in a private mount namespace, so it never meets the machine's pcscd), the
// vsmartcard vpcd reader driver on a free port, and a virtual secure module
// (cardlink/vcard) in the reader, either in-process or as a child process
// that a test can kill.
//
// Everything goes through the real stack: ebfe/scard → libpcsclite →
// pcscd → vpcd → vcard (ENVIRONMENT.md, "PC/SC with a virtual module").
//
// libpcsclite reads PCSCLITE_CSOCK_NAME once per process, the first time it
// needs the socket name. The socket path is therefore fixed per test process
// and every Env of the process reuses it; only one Env may exist at a time.
package pcsctest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ebfe/scard"

	"github.com/keyport/keyport/cardlink/vcard"
)

// Installation facts (ENVIRONMENT.md).
const (
	// DriverPath is vsmartcard-vpcd's pcscd driver.
	DriverPath = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
	// AptInstall is the line that installs what this package needs.
	AptInstall = "apt-get install -y pcscd vsmartcard-vpcd libpcsclite-dev pcsc-tools opensc"
	// FriendlyName is the reader name prefix the private pcscd uses.
	FriendlyName = "Virtual PCD"
	// SocketEnv is the variable that points libpcsclite clients at a pcscd.
	SocketEnv = "PCSCLITE_CSOCK_NAME"
)

// Env variables a card child process reads (see MaybeRunCard).
const (
	envCardState = "KEYPORT_PCSCTEST_CARD_STATE"
	envCardEID   = "KEYPORT_PCSCTEST_CARD_EID"
	envCardVPCD  = "KEYPORT_PCSCTEST_CARD_VPCD"
	envCardMax   = "KEYPORT_PCSCTEST_CARD_MAX_AUTH_FAILURES"
)

// Options configure Start.
type Options struct {
	// APDULog makes pcscd log every APDU (pcscd -a) into its log file.
	APDULog bool
	// Timeout bounds each wait for pcscd, the reader or a card (default 15 s).
	Timeout time.Duration
}

// Env is a running private pcscd with one vpcd reader. Its methods fail the
// test on error unless their name ends in Err.
type Env struct {
	// Reader is the PC/SC name of the vpcd reader the card connects to.
	Reader string
	// ReaderIndex is Reader's position in the reader list (opensc-tool -r).
	ReaderIndex int
	// VPCDAddr is the address a virtual card dials.
	VPCDAddr string
	// Socket is pcscd's client socket; clients need SocketEnv set to it.
	Socket string
	// Dir is the Env's temporary directory (configuration, pcscd log).
	Dir string

	timeout time.Duration
	pcscd   *exec.Cmd
	logPath string
	waitErr chan error

	mu   sync.Mutex
	ctx  *scard.Context
	card *scard.Card
}

var (
	envMu     sync.Mutex
	envActive bool
	runDir    string
	runDirErr error
	runOnce   sync.Once
)

// processRunDir is the per-process directory bind-mounted over /run/pcscd in
// pcscd's namespace. Its path must never change within one process (see the
// package comment), so it is chosen once.
func processRunDir() (string, error) {
	runOnce.Do(func() {
		runDir = filepath.Join(os.TempDir(), fmt.Sprintf("keyport-pcscd-%d", os.Getpid()))
		runDirErr = os.Setenv(SocketEnv, filepath.Join(runDir, "pcscd.comm"))
	})
	return runDir, runDirErr
}

// Start starts a private pcscd with a vpcd reader on a free port and returns
// once the reader is listed. No card is in the reader yet: add one with
// StartCard or StartCardProcess. Everything is stopped by t.Cleanup.
//
// If pcscd, the vpcd driver or unshare are missing the test is skipped with
// the apt-get line that installs them.
func Start(t testing.TB, opts Options) *Env {
	t.Helper()
	for _, p := range []string{"pcscd", "unshare", "mount"} {
		if _, err := exec.LookPath(p); err != nil {
			t.Skipf("pcsctest: %s not found; install with: %s", p, AptInstall)
		}
	}
	if _, err := os.Stat(DriverPath); err != nil {
		t.Skipf("pcsctest: vpcd driver %s not found; install with: %s", DriverPath, AptInstall)
	}
	if os.Geteuid() != 0 {
		t.Skip("pcsctest: a private pcscd needs root (unshare --mount and mount --bind)")
	}

	envMu.Lock()
	if envActive {
		envMu.Unlock()
		t.Fatal("pcsctest: only one Env per process at a time (libpcsclite has one socket per process)")
	}
	envActive = true
	envMu.Unlock()
	t.Cleanup(func() {
		envMu.Lock()
		envActive = false
		envMu.Unlock()
	})

	run, err := processRunDir()
	if err != nil {
		t.Fatalf("pcsctest: %v", err)
	}
	if err := os.MkdirAll(run, 0o755); err != nil {
		t.Fatalf("pcsctest: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })

	e := &Env{
		Dir:     t.TempDir(),
		Socket:  filepath.Join(run, "pcscd.comm"),
		timeout: opts.Timeout,
	}
	if e.timeout <= 0 {
		e.timeout = 15 * time.Second
	}
	port, err := freePortPair()
	if err != nil {
		t.Fatalf("pcsctest: %v", err)
	}
	e.VPCDAddr = fmt.Sprintf("127.0.0.1:%d", port)

	conf := filepath.Join(e.Dir, "reader.conf.d")
	if err := os.MkdirAll(conf, 0o755); err != nil {
		t.Fatalf("pcsctest: %v", err)
	}
	// Same layout as Debian's /etc/reader.conf.d/vpcd; vpcd takes its TCP
	// port from CHANNELID (slot 0 = port, slot 1 = port+1).
	readerConf := fmt.Sprintf("FRIENDLYNAME \"%s\"\nDEVICENAME   /dev/null:0x%X\nLIBPATH      %s\nCHANNELID    0x%X\n",
		FriendlyName, port, DriverPath, port)
	if err := os.WriteFile(filepath.Join(conf, "vpcd"), []byte(readerConf), 0o644); err != nil {
		t.Fatalf("pcsctest: %v", err)
	}

	e.logPath = filepath.Join(e.Dir, "pcscd.log")
	logf, err := os.Create(e.logPath)
	if err != nil {
		t.Fatalf("pcsctest: %v", err)
	}
	defer logf.Close()
	pcscdArgs := "-f -c \"$CONF\""
	if opts.APDULog {
		pcscdArgs += " -a -d"
	}
	// pcscd always serves /run/pcscd; in a private mount namespace that path
	// is our own directory (ENVIRONMENT.md recipe).
	script := "mkdir -p /run/pcscd && mount --bind \"$RUN\" /run/pcscd && exec pcscd " + pcscdArgs
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "RUN="+run, "CONF="+conf)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("pcsctest: start pcscd: %v", err)
	}
	e.pcscd = cmd
	e.waitErr = make(chan error, 1)
	go func() { e.waitErr <- cmd.Wait() }()
	t.Cleanup(e.stop)

	if err := e.waitReader(); err != nil {
		t.Fatalf("pcsctest: %v\npcscd log:\n%s", err, e.Log())
	}
	return e
}

// Log returns pcscd's output so far (for failure messages).
func (e *Env) Log() string {
	b, _ := os.ReadFile(e.logPath)
	return string(b)
}

// Environ returns the environment for a PC/SC client subprocess
// (opensc-tool, scriptor, keyport agent): this process's plus SocketEnv.
func (e *Env) Environ() []string {
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, SocketEnv+"=") {
			env = append(env, kv)
		}
	}
	return append(env, SocketEnv+"="+e.Socket)
}

func (e *Env) stop() {
	e.mu.Lock()
	if e.card != nil {
		e.card.Disconnect(scard.LeaveCard)
		e.card = nil
	}
	if e.ctx != nil {
		e.ctx.Release()
		e.ctx = nil
	}
	e.mu.Unlock()
	if e.pcscd == nil || e.pcscd.Process == nil {
		return
	}
	pid := e.pcscd.Process.Pid
	syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-e.waitErr:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pid, syscall.SIGKILL)
		<-e.waitErr
	}
}

// exited reports whether pcscd has exited.
func (e *Env) exited() bool {
	select {
	case err := <-e.waitErr:
		e.waitErr <- err
		return true
	default:
		return false
	}
}

// waitReader waits until pcscd answers and lists a vpcd reader.
func (e *Env) waitReader() error {
	deadline := time.Now().Add(e.timeout)
	var last error
	for time.Now().Before(deadline) {
		if e.exited() {
			return errors.New("pcscd exited")
		}
		if _, err := os.Stat(e.Socket); err != nil {
			last = err
			time.Sleep(20 * time.Millisecond)
			continue
		}
		ctx, err := scard.EstablishContext()
		if err != nil {
			last = err
			time.Sleep(50 * time.Millisecond)
			continue
		}
		readers, err := ctx.ListReaders()
		ctx.Release()
		if err != nil {
			last = err
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for i, r := range readers {
			// Slot 0 ("… 00 00") is the one on VPCDAddr.
			if strings.HasPrefix(r, FriendlyName) && strings.HasSuffix(r, "00") {
				e.Reader, e.ReaderIndex = r, i
				return nil
			}
		}
		last = fmt.Errorf("readers %q", readers)
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no vpcd reader after %v: %v", e.timeout, last)
}

// freePortPair returns a TCP port p such that p and p+1 are free on all
// interfaces: vpcd listens on both (slots 0 and 1).
func freePortPair() (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", ":0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf(":%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p, nil
		}
	}
	return 0, errors.New("no two consecutive free ports")
}

// StartCard runs card in this process, connected to the Env's reader, and
// waits until pcscd reports it present. It is stopped by t.Cleanup.
func (e *Env) StartCard(t testing.TB, card *vcard.Card) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		vcard.Serve(ctx, card, e.VPCDAddr)
	}()
	t.Cleanup(func() {
		e.Disconnect()
		cancel()
		<-done
	})
	e.WaitCard(t, true)
}

// CardProcess is a virtual card running in a child process.
type CardProcess struct {
	cmd  *exec.Cmd
	done chan error
	out  *bytes.Buffer
}

// Kill kills the card process at once (SIGKILL) and waits for it to exit,
// as a crash or a pulled module would.
func (p *CardProcess) Kill() {
	if p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	p.done <- nil
}

// Output returns what the process wrote to stdout and stderr.
func (p *CardProcess) Output() string { return p.out.String() }

// StartCardProcess runs a virtual card in a child process: this test binary,
// re-executed with environment variables that make MaybeRunCard (called from
// TestMain) serve the card module kept in statePath, created with eid if the
// file does not exist. maxAuthFailures 0 means the vcard default. The
// function waits until pcscd reports the card present; the process is killed
// by t.Cleanup if still running.
func (e *Env) StartCardProcess(t testing.TB, statePath, eid string, maxAuthFailures int) *CardProcess {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("pcsctest: %v", err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(e.Environ(),
		envCardState+"="+statePath,
		envCardEID+"="+eid,
		envCardVPCD+"="+e.VPCDAddr,
		fmt.Sprintf("%s=%d", envCardMax, maxAuthFailures),
	)
	out := new(bytes.Buffer)
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("pcsctest: start card process: %v", err)
	}
	p := &CardProcess{cmd: cmd, done: make(chan error, 1), out: out}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		e.Disconnect()
		p.Kill()
	})
	if err := e.waitCard(true); err != nil {
		t.Fatalf("pcsctest: card process: %v\nits output:\n%s\n(does TestMain call pcsctest.MaybeRunCard?)", err, out)
	}
	return p
}

// MaybeRunCard turns the test binary into a virtual card process when it was
// started by StartCardProcess, and never returns in that case. Call it first
// in TestMain:
//
//	func TestMain(m *testing.M) {
//		pcsctest.MaybeRunCard()
//		os.Exit(m.Run())
//	}
func MaybeRunCard() {
	statePath := os.Getenv(envCardState)
	if statePath == "" {
		return
	}
	var maxFail int
	fmt.Sscan(os.Getenv(envCardMax), &maxFail)
	err := vcard.Run(context.Background(), vcard.Options{
		StatePath:       statePath,
		EID:             os.Getenv(envCardEID),
		VPCDAddr:        os.Getenv(envCardVPCD),
		MaxAuthFailures: maxFail,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// WaitCard waits until the reader reports a card present (present=true) or
// empty (present=false), through SCardGetStatusChange.
func (e *Env) WaitCard(t testing.TB, present bool) {
	t.Helper()
	if err := e.waitCard(present); err != nil {
		t.Fatalf("pcsctest: %v\npcscd log:\n%s", err, e.Log())
	}
}

func (e *Env) waitCard(present bool) error {
	ctx, err := scard.EstablishContext()
	if err != nil {
		return fmt.Errorf("establish context: %w", err)
	}
	defer ctx.Release()
	rs := []scard.ReaderState{{Reader: e.Reader, CurrentState: scard.StateUnaware}}
	deadline := time.Now().Add(e.timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("reader %q: card present=%v not reached within %v", e.Reader, present, e.timeout)
		}
		err := ctx.GetStatusChange(rs, min(left, time.Second))
		if err != nil && !errors.Is(err, scard.ErrTimeout) {
			return fmt.Errorf("get status change: %w", err)
		}
		st := rs[0].EventState
		isPresent := st&scard.StatePresent != 0 && st&scard.StateMute == 0
		isEmpty := st&scard.StateEmpty != 0
		if err == nil && ((present && isPresent) || (!present && isEmpty)) {
			return nil
		}
		rs[0].CurrentState = st &^ scard.StateChanged
	}
}

// Disconnect drops the Env's own connection to the card, if any; the next
// Transmit connects again.
func (e *Env) Disconnect() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.card != nil {
		e.card.Disconnect(scard.LeaveCard)
		e.card = nil
	}
}

// TransmitErr sends one C-APDU to the card through PC/SC and returns the
// R-APDU. It connects (shared mode, any protocol) on first use.
func (e *Env) TransmitErr(apdu []byte) ([]byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx == nil {
		ctx, err := scard.EstablishContext()
		if err != nil {
			return nil, fmt.Errorf("pcsctest: establish context: %w", err)
		}
		e.ctx = ctx
	}
	if e.card == nil {
		c, err := e.ctx.Connect(e.Reader, scard.ShareShared, scard.ProtocolAny)
		if err != nil {
			return nil, fmt.Errorf("pcsctest: connect %q: %w", e.Reader, err)
		}
		e.card = c
	}
	rsp, err := e.card.Transmit(apdu)
	if err != nil {
		// A reset or removed card invalidates the handle: reconnect next time.
		e.card.Disconnect(scard.LeaveCard)
		e.card = nil
		return nil, fmt.Errorf("pcsctest: transmit: %w", err)
	}
	return rsp, nil
}

// Transmit is TransmitErr that fails the test on error.
func (e *Env) Transmit(t testing.TB, apdu []byte) []byte {
	t.Helper()
	rsp, err := e.TransmitErr(apdu)
	if err != nil {
		t.Fatal(err)
	}
	return rsp
}
