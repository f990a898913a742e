package smpp_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/smpp"
)

// testSMSC runs testdata/smsc.pl: Net::SMPP decodes what the ESME sends
// and the script logs the decoded fields (events) and the messages it hands
// on to the handset (handset), one JSON object a line.
type testSMSC struct {
	t       testing.TB
	dir     string
	args    []string
	port    int
	events  string
	handset string
	cmd     *exec.Cmd
}

// needPerlSMPP fails (it does not skip) when Net::SMPP is missing: the
// tests of this package are its only independent check.
func needPerlSMPP(t testing.TB) {
	t.Helper()
	if out, err := exec.Command("perl", "-MNet::SMPP", "-e", "1").CombinedOutput(); err != nil {
		t.Fatalf("perl with Net::SMPP is needed (Debian libnet-smpp-perl; scripts/install-deps.sh installs it): %v\n%s", err, out)
	}
}

func startSMSC(t testing.TB, args ...string) *testSMSC {
	t.Helper()
	needPerlSMPP(t)
	dir := t.TempDir()
	s := &testSMSC{t: t, dir: dir, args: args,
		events: filepath.Join(dir, "events.jsonl"), handset: filepath.Join(dir, "handset.jsonl")}
	s.start(0)
	t.Cleanup(s.kill)
	return s
}

func (s *testSMSC) start(port int) {
	s.t.Helper()
	s.startWith(port, s.args...)
}

// startWith starts the SMSC with other options than startSMSC's.
func (s *testSMSC) startWith(port int, extra ...string) {
	s.t.Helper()
	args := append([]string{"testdata/smsc.pl", "--port", strconv.Itoa(port),
		"--events", s.events, "--handset", s.handset}, extra...)
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
	s.port, s.cmd = p, cmd
}

// kill ends the SMSC and its connection processes at once (SIGKILL): no
// unbind, no FIN from an orderly close, as when the SMSC host dies.
func (s *testSMSC) kill() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// url is the ESME's configuration for this SMSC.
func (s *testSMSC) url(extra string) string {
	u := fmt.Sprintf("smpp://keyport:secret@127.0.0.1:%d?source=1234&min_backoff=50ms&max_backoff=500ms&timeout=5s", s.port)
	if extra != "" {
		u += "&" + extra
	}
	return u
}

// smscEvent is one line the SMSC logged; the fields are Net::SMPP's.
type smscEvent struct {
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
	HeldCount          any    `json:"held"`
}

func (e smscEvent) seconds(t testing.TB) float64 {
	f, err := strconv.ParseFloat(e.Time, 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// handsetMessage is what the SMSC handed on, its UDH split by the script.
type handsetMessage struct {
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

func readLines[T any](t testing.TB, path string) []T {
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

func (s *testSMSC) allEvents() []smscEvent { return readLines[smscEvent](s.t, s.events) }

func (s *testSMSC) handsetMessages() []handsetMessage {
	return readLines[handsetMessage](s.t, s.handset)
}

// eventsWhere returns the events of kind ev that match keep.
func (s *testSMSC) eventsWhere(ev string, keep func(smscEvent) bool) []smscEvent {
	var out []smscEvent
	for _, e := range s.allEvents() {
		if e.Event == ev && (keep == nil || keep(e)) {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls the SMSC's log until cond holds; the SMSC writes a line
// after the PDU it describes, so some things are seen only after the fact.
func (s *testSMSC) waitFor(what string, cond func([]smscEvent) bool) []smscEvent {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := s.allEvents()
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the SMSC never logged %s; it logged:\n%v", what, evs)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// collector keeps what the ESME's handlers received.
type collector struct {
	mu       sync.Mutex
	receipts []smpp.Receipt
	mos      []smpp.MO
	changed  chan struct{}
}

func newCollector() *collector { return &collector{changed: make(chan struct{}, 1)} }

func (c *collector) handlers() smpp.Handlers {
	return smpp.Handlers{
		Receipt: func(r smpp.Receipt) error {
			c.mu.Lock()
			c.receipts = append(c.receipts, r)
			c.mu.Unlock()
			c.poke()
			return nil
		},
		MO: func(m smpp.MO) error {
			c.mu.Lock()
			c.mos = append(c.mos, m)
			c.mu.Unlock()
			c.poke()
			return nil
		},
	}
}

func (c *collector) poke() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// receiptFor waits for the receipt of message id.
func (c *collector) receiptFor(t testing.TB, id string) smpp.Receipt {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		for _, r := range c.receipts {
			if r.MessageID == id {
				c.mu.Unlock()
				return r
			}
		}
		c.mu.Unlock()
		select {
		case <-c.changed:
		case <-ctx.Done():
			t.Fatalf("no delivery receipt for %s", id)
		}
	}
}

func (c *collector) moFrom(t testing.TB, msisdn string) smpp.MO {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		for _, m := range c.mos {
			if m.From == msisdn {
				c.mu.Unlock()
				return m
			}
		}
		c.mu.Unlock()
		select {
		case <-c.changed:
		case <-ctx.Done():
			t.Fatalf("no mobile-originated message from %s", msisdn)
		}
	}
}

func newESME(t testing.TB, rawURL string, h smpp.Handlers) *smpp.ESME {
	t.Helper()
	cfg, err := smpp.ParseURL(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	e, err := smpp.New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func sendCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
