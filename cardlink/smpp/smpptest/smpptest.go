// Package smpptest runs a test SMSC for SMPP tests: smsc.pl, in which
// Net::SMPP (Debian libnet-smpp-perl) decodes what the ESME sends. The
// script logs the decoded fields (Events) and the messages it hands on to
// handsets (the handset file), one JSON object a line, and delivers the
// handsets' mobile-originated messages from a spool (MOSpool).
package smpptest

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

//go:embed smsc.pl
var script []byte

// SMSC is one running test SMSC.
type SMSC struct {
	t    testing.TB
	dir  string
	args []string
	// Port is the TCP port it listens on.
	Port int
	// EventsPath, HandsetPath and MOSpoolPath are its files: what it
	// decoded, what it handed on to handsets, and what handsets send.
	EventsPath, HandsetPath, MOSpoolPath string
	cmd                                  *exec.Cmd
}

// NeedPerlSMPP fails (it does not skip) when Net::SMPP is missing.
func NeedPerlSMPP(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("perl", "-MNet::SMPP", "-e", "1").CombinedOutput(); err != nil {
		t.Fatalf("perl with Net::SMPP is needed (Debian libnet-smpp-perl; scripts/install-deps.sh installs it): %v\n%s", err, out)
	}
}

// Start starts an SMSC on a free port with smsc.pl's options args; it is
// killed when the test ends.
func Start(t testing.TB, args ...string) *SMSC {
	t.Helper()
	NeedPerlSMPP(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "smsc.pl"), script, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &SMSC{t: t, dir: dir, args: args, EventsPath: filepath.Join(dir, "events.jsonl"),
		HandsetPath: filepath.Join(dir, "handset.jsonl"), MOSpoolPath: filepath.Join(dir, "mo.jsonl")}
	s.Restart(0)
	t.Cleanup(s.Kill)
	return s
}

// Restart starts the SMSC (again) on port (0: a free one) with Start's options.
func (s *SMSC) Restart(port int) {
	s.t.Helper()
	s.StartWith(port, s.args...)
}

// StartWith starts the SMSC with other options than Start's.
func (s *SMSC) StartWith(port int, extra ...string) {
	s.t.Helper()
	args := append([]string{filepath.Join(s.dir, "smsc.pl"), "--port", strconv.Itoa(port),
		"--events", s.EventsPath, "--handset", s.HandsetPath, "--mo-spool", s.MOSpoolPath}, extra...)
	cmd := exec.Command("perl", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its forked children die with it
	stderr, err := os.OpenFile(filepath.Join(s.dir, "stderr"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
		b, _ := os.ReadFile(filepath.Join(s.dir, "stderr"))
		s.t.Fatalf("smsc.pl did not start: %v\n%s", err, b)
	}
	p, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "listening "))
	if err != nil {
		s.t.Fatalf("smsc.pl said %q", line)
	}
	s.Port, s.cmd = p, cmd
}

// Kill ends the SMSC and its connection processes at once (SIGKILL): no
// unbind, no FIN from an orderly close, as when the SMSC host dies.
func (s *SMSC) Kill() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// URL is an ESME configuration for this SMSC (account keyport/secret,
// source 1234, short backoffs); extra is appended to the query.
func (s *SMSC) URL(extra string) string {
	u := fmt.Sprintf("smpp://keyport:secret@127.0.0.1:%d?source=1234&min_backoff=50ms&max_backoff=500ms&timeout=5s", s.Port)
	if extra != "" {
		u += "&" + extra
	}
	return u
}

// Event is one line the SMSC logged; the fields are Net::SMPP's.
type Event struct {
	Event              string `json:"event"`
	PID                int    `json:"pid"`
	Time               string `json:"time"`
	Seq                uint32 `json:"seq"`
	Status             uint32 `json:"status"`
	Answer             string `json:"answer"`
	SystemID           string `json:"system_id"`
	InterfaceVersion   int    `json:"interface_version"`
	OK                 bool   `json:"ok"`
	SourceAddr         string `json:"source_addr"`
	DestAddrTON        int    `json:"dest_addr_ton"`
	DestAddrNPI        int    `json:"dest_addr_npi"`
	DestinationAddr    string `json:"destination_addr"`
	ESMClass           int    `json:"esm_class"`
	ProtocolID         int    `json:"protocol_id"`
	DataCoding         int    `json:"data_coding"`
	RegisteredDelivery int    `json:"registered_delivery"`
	SMLength           int    `json:"sm_length"`
	ShortMessage       string `json:"short_message"`
	MessageID          string `json:"message_id"`
	Kind               string `json:"kind"`
	Stat               string `json:"stat"`
	From               string `json:"from"`
	HeldCount          any    `json:"held"`
	// SubmittedBy is, for a receipt delivered from --receipt-spool, the
	// connection (PID) the message was submitted on.
	SubmittedBy int `json:"submitted_by"`
}

// Seconds is the event's time.
func (e Event) Seconds(t testing.TB) float64 {
	f, err := strconv.ParseFloat(e.Time, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// HandsetMessage is what the SMSC handed on, its UDH split by the script.
type HandsetMessage struct {
	To         string `json:"to"`
	MessageID  string `json:"message_id"`
	ProtocolID int    `json:"protocol_id"`
	DataCoding int    `json:"data_coding"`
	UDH        []struct {
		IEI  int    `json:"iei"`
		Data string `json:"data"`
	} `json:"udh"`
	Data string `json:"data"`
}

// ReadLines reads a JSON Lines file (none: nothing).
func ReadLines[T any](t testing.TB, path string) []T {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		var v T
		if err := json.Unmarshal(l, &v); err != nil {
			t.Fatalf("SMSC line %q: %v", l, err)
		}
		out = append(out, v)
	}
	return out
}

// Events returns every event logged so far.
func (s *SMSC) Events() []Event { return ReadLines[Event](s.t, s.EventsPath) }

// HandsetMessages returns what the SMSC handed on so far.
func (s *SMSC) HandsetMessages() []HandsetMessage {
	return ReadLines[HandsetMessage](s.t, s.HandsetPath)
}

// EventsWhere returns the events of kind ev that match keep.
func (s *SMSC) EventsWhere(ev string, keep func(Event) bool) []Event {
	var out []Event
	for _, e := range s.Events() {
		if e.Event == ev && (keep == nil || keep(e)) {
			out = append(out, e)
		}
	}
	return out
}

// WaitFor polls the SMSC's log until cond holds (at most 30 s; then the
// test fails). The SMSC writes a line after the PDU it describes.
func (s *SMSC) WaitFor(what string, cond func([]Event) bool) []Event {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := s.Events()
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the SMSC never logged %s; it logged:\n%v", what, evs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
