package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/agent/ace/acetest"
	"github.com/keyport/keyport/gp"
)

// TestAppCommandTalksToItsSSDThroughTheAgentsEnforcer runs `keyport agent
// --app-socket` on a virtual module in a PC/SC reader and plays two apps
// with `keyport app`: the one the ARA-M rule names gets a channel and its
// GET DATA answers, within the rule's filter; the other is refused, with
// exit status 3 and the enforcer's words.
func TestAppCommandTalksToItsSSDThroughTheAgentsEnforcer(t *testing.T) {
	hs := acetest.NewHandset(t)
	appA, appB := acetest.NewApp(t, "A"), acetest.NewApp(t, "B")
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: appA.SHA256(),
		APDU: []byte{0x80, 0xCA, 0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00}}) // GET DATA only
	dir := t.TempDir()
	certA, certB := filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.der")
	os.WriteFile(certA, appA.PEM, 0o600)
	os.WriteFile(certB, appB.DER, 0o600)
	socket := filepath.Join(dir, "run", "se.sock")

	o := capture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"agent", "--reader", hs.Env.Reader, "--app-socket", socket}) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop() })
	waitSocket(t, socket, done)

	out := kp(t, o, nil, "app", "--socket", socket, "--cert", certA, "--aid", "F0010203040501",
		"--apdu", "80CA9F7F00", "--apdu", "80 CA 00 66 00")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 ||
		!regexp.MustCompile(`^channel [1-9][0-9]? to F0010203040501: SELECT answered 6F[0-9A-F]+9000$`).MatchString(lines[0]) ||
		!regexp.MustCompile(`^80CA9F7F00 → 9F7F2A[0-9A-F]{84}9000$`).MatchString(lines[1]) ||
		!regexp.MustCompile(`^80CA006600 → 66[0-9A-F]+9000$`).MatchString(lines[2]) {
		t.Fatalf("keyport app output:\n%s", out)
	}

	err := run(context.Background(), []string{"app", "--socket", socket, "--cert", certB, "--aid", "F0010203040501", "--apdu", "80CA9F7F00"})
	var ee exitError
	if !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("app B: %v", err)
	}
	err = run(context.Background(), []string{"app", "--socket", socket, "--cert", certA, "--aid", "F0010203040501", "--apdu", "80F2400002"})
	if !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "lets this app send only") {
		t.Fatalf("app A, GET STATUS: %v", err)
	}
	err = run(context.Background(), []string{"app", "--socket", socket, "--cert", certA})
	if !errors.As(err, &ee) || ee.code != 2 {
		t.Fatalf("app without --aid: %v", err)
	}
	err = run(context.Background(), []string{"app", "--socket", socket, "--cert", certA, "--aid", "F0010203040501", "--apdu", "80CA"})
	if err == nil || !strings.Contains(err.Error(), "not a command APDU") {
		t.Fatalf("app with a 2-byte --apdu: %v", err)
	}

	if err := stop(); err != nil {
		t.Fatalf("agent: %v", err)
	}
	if log := o.err.String(); !strings.Contains(log, "access control enforcer") || !strings.Contains(log, "app refused") {
		t.Errorf("agent log:\n%s", log)
	}
}

// waitSocket waits until the agent accepts connections on socket, or fails
// when the agent has exited.
func waitSocket(t *testing.T, socket string, done chan error) {
	t.Helper()
	for {
		c, err := net.Dial("unix", socket)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-done:
			t.Fatalf("agent exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestAgentNeedsTheAdminFlagsTogetherOrAnAppSocket(t *testing.T) {
	for _, args := range [][]string{
		{"agent", "--reader", "R"},
		{"agent", "--reader", "R", "--server", "h:1"},
		{"agent", "--app-socket", "/nonexistent/s"},
		{"agent", "--reader", "R", "--server", "h:1", "--psk-identity", "x", "--psk-file", "f", "--once", "--app-socket", "s"},
	} {
		err := run(context.Background(), args)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
