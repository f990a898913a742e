// Package sandbox is the provider sandbox's fault injection (keyport's
// sandbox.go): a fault book, kept in a JSON file, and wrappers around a
// virtual module's card channel and its handset agent's transport that do
// what each module's fault says. The card protocol (vcard, gp) and the
// agent know nothing of it: the wrappers sit between them.
//
//   - offline: every connection of the agent is refused, so it never reaches
//     the admin server.
//   - drop after command n: the channel refuses command n+1 (the card runs 1..n
//     only), the transport breaks the connection that carries the answer,
//     and the agent resumes (X-Admin-Resume) with what ran.
//   - sw on command n: the channel answers the SW instead of passing command
//     n to the card.
//   - slow: the channel answers every APDU that much later.
//   - drift: before the script's first INITIALIZE UPDATE the channel sends
//     it to the card drift more times, and each raises the card's sequence
//     counter.
//   - lost: the card runs the script; the transport breaks every connection
//     carrying its answer (resumes included) until the agent opens a new
//     dialog.
//
// Command numbers count a script's commands from 1, after the agent's
// SELECT of the targeted domain; a script is what the channel sees between
// two of the agent's requests.
package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/wait"
)

// ErrInjected is the error of a connection or APDU the sandbox broke.
var ErrInjected = errors.New("sandbox: fault injected")

// Book is the fault book: each module's fault, what the faults did since
// keyport last asked, and the wrappers' per-module state. It implements
// keyport.FaultBook.
type Book struct {
	path string // "" keeps the faults in memory only

	mu     sync.Mutex
	faults map[keyport.EID]keyport.Fault
	notes  map[keyport.EID][]string
	state  map[keyport.EID]*moduleState
}

// moduleState is what the wrappers of one module share.
type moduleState struct {
	n          int  // commands of the current script seen so far
	fresh      bool // no APDU since the agent's last request
	drifted    bool // the current script's INITIALIZE UPDATE was multiplied
	dropAnswer bool // break the next answer once (drop)
	loseAnswer bool // break every answer until a new dialog (lost)
}

// fileSpec is one fault as the book's file keeps it: ParseFault's input.
type fileSpec struct {
	Kind    keyport.FaultKind `json:"fault"`
	Command int               `json:"command,omitempty"`
	SW      string            `json:"sw,omitempty"`
	DelayMS int64             `json:"delay_ms,omitempty"`
	Drift   int               `json:"drift,omitempty"`
}

// Open returns the book kept in the JSON file at path (none yet: empty);
// path "" keeps it in memory.
func Open(path string) (*Book, error) {
	b := &Book{path: path, faults: map[keyport.EID]keyport.Fault{}, notes: map[keyport.EID][]string{},
		state: map[keyport.EID]*moduleState{}}
	if path == "" {
		return b, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	var specs map[keyport.EID]json.RawMessage
	if err := json.Unmarshal(data, &specs); err != nil {
		return nil, fmt.Errorf("sandbox: %s: %w", path, err)
	}
	for eid, raw := range specs {
		if _, err := keyport.ParseEID(string(eid)); err != nil {
			return nil, fmt.Errorf("sandbox: %s: %w", path, err)
		}
		f, err := keyport.ParseFault(raw)
		if err != nil {
			return nil, fmt.Errorf("sandbox: %s: module %s: %w", path, eid, err)
		}
		b.faults[eid] = f
	}
	return b, nil
}

// Fault implements keyport.FaultBook.
func (b *Book) Fault(eid keyport.EID) keyport.Fault {
	b.mu.Lock()
	defer b.mu.Unlock()
	if f, ok := b.faults[eid]; ok {
		return f
	}
	return keyport.Fault{Kind: keyport.FaultNone}
}

// SetFault implements keyport.FaultBook; the file is rewritten first, so a
// fault that could not be stored is not set.
func (b *Book) SetFault(eid keyport.EID, f keyport.Fault) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := map[keyport.EID]keyport.Fault{}
	for k, v := range b.faults {
		next[k] = v
	}
	if f.Active() {
		next[eid] = f
	} else {
		delete(next, eid)
	}
	if err := b.save(next); err != nil {
		return err
	}
	b.faults = next
	b.state[eid] = &moduleState{fresh: true}
	return nil
}

func (b *Book) save(faults map[keyport.EID]keyport.Fault) error {
	if b.path == "" {
		return nil
	}
	out := map[keyport.EID]fileSpec{}
	for eid, f := range faults {
		out[eid] = fileSpec{Kind: f.Kind, Command: f.Command, SW: f.SW, DelayMS: f.Delay.Milliseconds(), Drift: f.Drift}
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	tmp := b.path + ".tmp"
	if err := os.MkdirAll(filepath.Dir(b.path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.path)
}

// TakeInjected implements keyport.FaultBook.
func (b *Book) TakeInjected(eid keyport.EID) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	notes := b.notes[eid]
	delete(b.notes, eid)
	var out string
	for i, n := range notes {
		if i > 0 {
			out += "; "
		}
		out += n
	}
	return out
}

// note records what a fault did (once until taken).
func (b *Book) note(eid keyport.EID, what string) {
	if !slices.Contains(b.notes[eid], what) {
		b.notes[eid] = append(b.notes[eid], what)
	}
}

// with runs fn under the lock with module eid's fault and state.
func (b *Book) with(eid keyport.EID, fn func(f keyport.Fault, st *moduleState)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state[eid]
	if st == nil {
		st = &moduleState{fresh: true}
		b.state[eid] = st
	}
	f, ok := b.faults[eid]
	if !ok {
		f = keyport.Fault{Kind: keyport.FaultNone}
	}
	fn(f, st)
}

// Channel wraps module eid's card channel with its fault.
func (b *Book) Channel(eid keyport.EID, card gp.Channel) gp.Channel {
	return &channel{b: b, eid: eid, card: card}
}

type channel struct {
	b    *Book
	eid  keyport.EID
	card gp.Channel
}

func isSelectByName(apdu []byte) bool {
	return len(apdu) >= 4 && apdu[0]&0xFC == 0 && apdu[1] == 0xA4 && apdu[2] == 0x04
}

func isInitializeUpdate(apdu []byte) bool {
	return len(apdu) >= 4 && apdu[0]&0x80 == 0x80 && apdu[1] == 0x50
}

// Transmit implements gp.Channel.
func (c *channel) Transmit(ctx context.Context, apdu []byte) ([]byte, error) {
	var (
		delay  time.Duration
		answer []byte
		fail   bool
		drift  int
	)
	c.b.with(c.eid, func(f keyport.Fault, st *moduleState) {
		first := st.fresh
		st.fresh = false
		if first {
			st.n, st.drifted = 0, false
			if isSelectByName(apdu) {
				// The agent's SELECT of the targeted domain: not counted.
				if f.Kind == keyport.FaultSlow {
					delay = f.Delay
				}
				return
			}
		}
		st.n++
		switch f.Kind {
		case keyport.FaultSlow:
			delay = f.Delay
			c.b.note(c.eid, fmt.Sprintf("every APDU was answered %s late", f.Delay))
		case keyport.FaultSW:
			if st.n == f.Command {
				answer = []byte{0, 0}
				fmt.Sscanf(f.SW, "%02X%02X", &answer[0], &answer[1])
				c.b.note(c.eid, fmt.Sprintf("the card answered %s to command %d instead of running it", f.SW, f.Command))
			}
		case keyport.FaultDrop:
			if st.n > f.Command {
				fail = true
				st.dropAnswer = true
				c.b.note(c.eid, fmt.Sprintf("the connection dropped after command %d; the card did not run the commands after it", f.Command))
			}
		case keyport.FaultDrift:
			if !st.drifted && isInitializeUpdate(apdu) {
				st.drifted = true
				drift = f.Drift
				c.b.note(c.eid, fmt.Sprintf("the card's sequence counter jumped by %d before the script's INITIALIZE UPDATE", f.Drift))
			}
		case keyport.FaultLost:
			st.loseAnswer = true
			c.b.note(c.eid, "the card ran the script; its answer was dropped on the way to keyport")
		}
	})
	if err := wait.Sleep(ctx, delay); err != nil {
		return nil, err
	}
	if fail {
		return nil, fmt.Errorf("%w: connection dropped", ErrInjected)
	}
	if answer != nil {
		return answer, nil
	}
	for range drift {
		// Each INITIALIZE UPDATE raises the counter; the answers go nowhere.
		if _, err := c.card.Transmit(ctx, apdu); err != nil {
			return nil, err
		}
	}
	return c.card.Transmit(ctx, apdu)
}

// DialFunc opens an agent's connection to the admin server.
type DialFunc func(ctx context.Context) (net.Conn, error)

// DialGap is the least time between two of a sandbox agent's connections,
// so that an agent refused by a held lease does not spin.
const DialGap = 100 * time.Millisecond

// Dial wraps module eid's agent transport with its fault.
func (b *Book) Dial(eid keyport.EID, dial DialFunc) DialFunc {
	return func(ctx context.Context) (net.Conn, error) {
		if err := wait.Sleep(ctx, DialGap); err != nil {
			return nil, err
		}
		offline := false
		b.with(eid, func(f keyport.Fault, _ *moduleState) {
			if f.Kind == keyport.FaultOffline {
				offline = true
				b.note(eid, "the module was offline: its agent's connections were refused")
			}
		})
		if offline {
			return nil, fmt.Errorf("%w: module offline", ErrInjected)
		}
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return &conn{Conn: c, b: b, eid: eid}, nil
	}
}

// conn is an agent's connection: each Write is one request of the agent.
type conn struct {
	net.Conn
	b   *Book
	eid keyport.EID
}

var statusHeader = []byte(cardlink.HeaderScriptStatus + ":")

func (c *conn) Write(p []byte) (int, error) {
	answer := bytes.Contains(p, statusHeader)
	broken := false
	c.b.with(c.eid, func(_ keyport.Fault, st *moduleState) {
		st.fresh = true
		switch {
		case st.loseAnswer && answer:
			broken = true
		case st.loseAnswer:
			st.loseAnswer = false // a new dialog: the answer is lost for good
		case st.dropAnswer && answer:
			st.dropAnswer, broken = false, true
		}
	})
	if broken {
		c.Conn.Close()
		return 0, fmt.Errorf("%w: connection broken", ErrInjected)
	}
	return c.Conn.Write(p)
}
