package ace

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/keyport/keyport/gp"
)

// Enforcer is the handset's access control enforcer (GPD SEAC "ACE", with
// the part of the Open Mobile API an app sees): apps ask it, over a local
// socket, for a logical channel to an applet of the secure element; it
// reads the access rules from the ARA-M, grants or refuses the channel by
// the app's signing certificate, and relays the app's APDUs on the channel
// it opened, within the APDU filters of the rule.
//
// On a phone the operating system tells the enforcer who the calling app
// is (Android: the signing certificates of the caller's package). Here the
// app states its certificate itself; what stands in for the OS's word is
// the socket's file permissions: the socket is mode 0600 in a directory of
// mode 0700, so only processes of the enforcer's own user can connect, and
// the enforcer believes them. Anyone who can connect can claim any app's
// certificate.
//
// The enforcer uses logical channels only (1..19), never the basic
// channel, so it does not disturb an admin session running there. Each
// open reads the ARA-M refresh tag (GET DATA DF20) on a channel of its own
// and re-reads the rules (FF40, FF60) when it changed: a rule removed over
// the air takes effect on the next open. A channel already open keeps the
// access it was granted.
type Enforcer struct {
	card gp.Channel
	log  *slog.Logger

	ruleMu sync.Mutex
	tag    []byte // refresh tag of the cached rules, nil before the first read
	rules  []gp.AccessRule
	reads  atomic.Int64 // rule set reads (FF40), for tests and logs
}

// NewEnforcer returns an enforcer for the secure element behind card,
// typically a *pcsc.Reader (which keyport agent shares with its admin
// sessions: it is safe for concurrent use). A nil log discards.
func NewEnforcer(card gp.Channel, log *slog.Logger) *Enforcer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Enforcer{card: card, log: log}
}

// RuleReads is how many times the enforcer has read the whole rule set.
func (e *Enforcer) RuleReads() int64 { return e.reads.Load() }

// ListenAppSocket creates the Unix socket apps connect to at path. Its
// directory is created mode 0700 if missing and must not be open to group
// or others if it exists (the directory, not only the socket's mode, keeps
// other users out: see Enforcer). A stale socket left by an earlier run is
// removed (any other file there is an error), and the socket is made mode
// 0600.
func ListenAppSocket(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ace: app socket directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("ace: app socket directory: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("ace: app socket directory %s is mode %04o: it must be reachable by its owner only (chmod 700), for the socket's permissions are what vouches for the apps", dir, fi.Mode().Perm())
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("ace: app socket %s: a file that is not a socket is in the way", path)
		}
		os.Remove(path)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("ace: app socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("ace: app socket: %w", err)
	}
	return l, nil
}

// Serve accepts app connections on l until ctx ends, each in its own
// goroutine, and closes l. Connections still open are closed too.
func (e *Enforcer) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ace: app socket: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.ServeConn(ctx, c)
		}()
	}
}

// session is one app connection.
type session struct {
	e       *Enforcer
	ch      int // logical channel, 0 when none is open
	aid     []byte
	access  Access
	appName string
}

// ServeConn runs one app session on c until the app hangs up, ctx ends or
// the framing breaks, then closes any channel left open and c.
func (e *Enforcer) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	s := &session{e: e}
	defer s.closeChannel(context.WithoutCancel(ctx))
	for {
		b, err := ReadFrame(c)
		if err != nil {
			if errors.Is(err, ErrFrame) {
				WriteFrame(c, refuse(CodeBadRequest, fmt.Errorf("%v; closing the connection", err)))
			} else if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				e.log.Info("app connection", "err", err)
			}
			return
		}
		var rep Reply
		if req, err := ParseRequest(b); err != nil {
			rep = refuse(CodeBadRequest, err)
		} else {
			rep = s.handle(ctx, req)
		}
		if err := WriteFrame(c, rep); err != nil {
			return
		}
	}
}

func refuse(code string, err error) Reply { return Reply{Code: code, Error: err.Error()} }

func (s *session) handle(ctx context.Context, req Request) Reply {
	switch req.Op {
	case OpOpen:
		return s.open(ctx, req)
	case OpTransmit:
		return s.transmit(ctx, req.APDU)
	case OpClose:
		if s.ch == 0 {
			return refuse(CodeState, errors.New("close: no channel is open"))
		}
		s.closeChannel(ctx)
		return Reply{OK: true}
	}
	return refuse(CodeBadRequest, fmt.Errorf("unknown op %q", req.Op))
}

func (s *session) open(ctx context.Context, req Request) Reply {
	if s.ch != 0 {
		return refuse(CodeState, fmt.Errorf("open: this session already has channel %d to %X; close it first", s.ch, s.aid))
	}
	app := NewAppID(req.CertDER, req.Package)
	rules, err := s.e.currentRules(ctx)
	if err != nil {
		var denied *AppError
		if errors.As(err, &denied) {
			return refuse(CodeDenied, err)
		}
		return refuse(CodeCard, fmt.Errorf("open: cannot read the access rules: %v", err))
	}
	acc := Decide(rules, req.AID, app)
	if !acc.Allowed {
		s.e.log.Info("app refused", "app", app.String(), "aid", hex.EncodeToString(req.AID), "reason", acc.Reason)
		return refuse(CodeDenied, errors.New(acc.Reason))
	}
	n, err := s.e.openChannel(ctx)
	if err != nil {
		return refuse(CodeCard, fmt.Errorf("open: %v", err))
	}
	sel, err := gp.LogicalChannel{Ch: s.e.card, N: n}.Transmit(ctx, gp.Select(req.AID).Bytes())
	if err != nil {
		s.e.closeChannel(ctx, n)
		return refuse(CodeCard, fmt.Errorf("open: SELECT %X: %v", req.AID, err))
	}
	r, _ := gp.ParseResponse(sel)
	if r.SW != gp.SWOK && !r.SW.Warning() {
		s.e.closeChannel(ctx, n)
		return refuse(CodeCard, fmt.Errorf("open: applet %X is not selectable on the secure element: SELECT answered %v", req.AID, r.SW))
	}
	if name := gp.FCIDFName(r.Data); name != nil && !bytes.Equal(name, req.AID) {
		// ISO 7816-4 partial DF name selection reached another applet than
		// the one the rule was looked up for.
		s.e.closeChannel(ctx, n)
		return refuse(CodeRefused, fmt.Errorf("open: %X selected applet %X (a partial AID); ask for the applet's full AID", req.AID, name))
	}
	s.ch, s.aid, s.access, s.appName = n, req.AID, acc, app.String()
	s.e.log.Info("channel opened", "app", s.appName, "aid", hex.EncodeToString(req.AID), "channel", n, "access", acc.Reason)
	return Reply{OK: true, Channel: n, Select: hex.EncodeToString(sel)}
}

// transmit checks one APDU of the app and relays it on the session's
// channel.
func (s *session) transmit(ctx context.Context, apdu []byte) Reply {
	if s.ch == 0 {
		return refuse(CodeState, errors.New("transmit: no channel is open; send open first"))
	}
	cmd, err := gp.ParseCommand(apdu)
	if err != nil {
		return refuse(CodeBadRequest, fmt.Errorf("transmit: %X is not a command APDU: %v", apdu, err))
	}
	if err := checkAppCommand(cmd); err != nil {
		return refuse(CodeRefused, fmt.Errorf("transmit: %v", err))
	}
	basic, _ := gp.OnChannel(cmd.CLA, 0)
	hdr := [4]byte{basic, cmd.INS, cmd.P1, cmd.P2}
	if !s.access.Permits(hdr) {
		return refuse(CodeRefused, fmt.Errorf("transmit: the access rule for applet %X lets this app send only %s; %X is not among them",
			s.aid, filterList(s.access.Filters), hdr))
	}
	rsp, err := gp.LogicalChannel{Ch: s.e.card, N: s.ch}.Transmit(ctx, apdu)
	if err != nil {
		return refuse(CodeCard, fmt.Errorf("transmit: %v", err))
	}
	return Reply{OK: true, RAPDU: hex.EncodeToString(rsp)}
}

func filterList(fs []APDUFilter) string {
	if len(fs) == 0 {
		return "nothing"
	}
	var b bytes.Buffer
	b.WriteString("headers matching ")
	for i, f := range fs {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(f.String())
	}
	return b.String()
}

// checkAppCommand refuses what an app may not send on its channel, as an
// Open Mobile API implementation does: the channel's management belongs to
// the enforcer (MANAGE CHANNEL, and SELECT by DF name, which would put
// another applet behind the rule that granted this one), and class FF and
// the instruction bytes 6x and 9x are not commands (ISO 7816-3 PPS; T=0
// procedure bytes). INS 70 and A4 P1 04 are refused in every class: the
// enforcer cannot know that the card's OS, like a Java Card runtime, gives
// them to the applet in a proprietary class rather than taking them as
// MANAGE CHANNEL and SELECT, and one that takes them lets the app leave its
// applet for any other, the ISD included. An applet of the app's own has
// other instructions.
func checkAppCommand(cmd gp.Command) error {
	switch {
	case cmd.CLA == 0xFF:
		return errors.New("class FF is reserved for PPS, not a command")
	case cmd.INS&0xF0 == 0x60 || cmd.INS&0xF0 == 0x90:
		return fmt.Errorf("INS %02X is not a valid instruction (6x and 9x are status bytes)", cmd.INS)
	case cmd.INS == 0x70:
		return errors.New("MANAGE CHANNEL is not allowed: the enforcer opens and closes channels (use open and close)")
	case cmd.INS == 0xA4 && cmd.P1 == 0x04:
		return errors.New("SELECT by DF name is not allowed: the channel stays with the applet it was opened to (open another channel)")
	}
	return nil
}

// closeChannel closes the session's channel, if any. A failure only costs
// the card a channel until its next reset: it is logged.
func (s *session) closeChannel(ctx context.Context) {
	if s.ch == 0 {
		return
	}
	s.e.closeChannel(ctx, s.ch)
	s.e.log.Info("channel closed", "app", s.appName, "channel", s.ch)
	s.ch, s.aid, s.access = 0, nil, Access{}
}

// openChannel sends MANAGE CHANNEL open on the basic channel.
func (e *Enforcer) openChannel(ctx context.Context) (int, error) {
	b, err := e.card.Transmit(ctx, gp.ManageChannelOpen().Bytes())
	if err != nil {
		return 0, err
	}
	r, err := gp.ParseResponse(b)
	if err != nil {
		return 0, err
	}
	if r.SW == gp.SWFunctionNotSupported || r.SW == gp.SWChannelNotSupported {
		return 0, fmt.Errorf("the secure element has no logical channel left (MANAGE CHANNEL answered %v)", r.SW)
	}
	return gp.ParseManageChannelOpen(r)
}

// closeChannel sends MANAGE CHANNEL close on the channel itself, so that
// the basic channel never sees the enforcer's commands but one: open.
func (e *Enforcer) closeChannel(ctx context.Context, n int) {
	b, err := gp.LogicalChannel{Ch: e.card, N: n}.Transmit(ctx, gp.ManageChannelClose(n).Bytes())
	if err == nil {
		if r, perr := gp.ParseResponse(b); perr != nil || r.SW != gp.SWOK {
			err = fmt.Errorf("answered %X", b)
		}
	}
	if err != nil {
		e.log.Warn("MANAGE CHANNEL close", "channel", n, "err", err)
	}
}

// errNoARAM refuses everything when the secure element has no ARA-M: with
// no rules there is nothing that grants access (GPD SEAC).
var errNoARAM = &AppError{Code: CodeDenied, Message: fmt.Sprintf(
	"access denied: the secure element has no ARA-M (%X), so no access rule grants any app a channel", gp.ARAMAID)}

// currentRules returns the ARA-M's rules: the cached ones while the
// refresh tag is unchanged, read anew otherwise. It reads on a logical
// channel of its own, closed afterwards.
func (e *Enforcer) currentRules(ctx context.Context) ([]gp.AccessRule, error) {
	e.ruleMu.Lock()
	defer e.ruleMu.Unlock()
	n, err := e.openChannel(ctx)
	if err != nil {
		return nil, err
	}
	defer e.closeChannel(ctx, n)
	h := gp.NewHost(gp.LogicalChannel{Ch: e.card, N: n})
	if _, found, err := h.Select(ctx, gp.ARAMAID); err != nil {
		return nil, err
	} else if !found {
		return nil, errNoARAM
	}
	tag, err := h.RefreshTag(ctx)
	if err != nil {
		return nil, err
	}
	if e.tag != nil && bytes.Equal(tag, e.tag) {
		return e.rules, nil
	}
	rules, err := h.AccessRules(ctx)
	if err != nil {
		return nil, err
	}
	e.reads.Add(1)
	e.log.Info("access rules read", "rules", len(rules), "refresh_tag", hex.EncodeToString(tag))
	e.tag, e.rules = tag, rules
	return rules, nil
}
