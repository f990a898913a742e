// Package agent is the handset agent: it plays the phone (and the card's
// BIP/TLS stack) for a module in a PC/SC reader. It waits for a wake-up (or
// polls), opens TLS-PSK to keyport's admin server with the module's identity
// and PSK, POSTs as a GlobalPlatform Amendment B admin agent, relays every
// C-APDU of the scripts it receives to the module, posts the R-APDUs back,
// follows X-Admin-Next-URI, and resumes (X-Admin-Resume) after a dropped
// connection.
//
// Acting as the card's RAM handler (ETSI TS 102 226 over Amendment B), it
// SELECTs the X-Admin-Targeted-Application before a script aimed at another
// security domain, so that the script's SCP03 session opens on that SSD.
//
// The handset's other part, the access control enforcer that gives apps
// logical channels to applets by the ARA-M's rules, is package ace below
// this one; the admin sessions use the basic channel only, the enforcer
// logical channels only, so both share one PC/SC connection.
package agent

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/wait"
)

// DefaultAdminURI is the URI of the first POST (session parameter 8C), as
// in the reference trace (PROTOCOLS.md §3.4).
const DefaultAdminURI = "/server/adminagent?cmd=1"

// Config configures an Agent.
type Config struct {
	// Server is the admin server's host:port.
	Server string
	// Identity and PSK are the module's TLS-PSK credentials.
	Identity string
	PSK      []byte
	// AgentID is X-Admin-From (session parameter 8B); default Identity.
	AgentID string
	// AdminURI is the first POST's URI; default DefaultAdminURI.
	AdminURI string
	// Poll, when set, opens a session every Poll instead of waiting on the
	// wake-up channel.
	Poll time.Duration
	// ContentLength sends response scripts with Content-Length instead of
	// chunked framing (cards usually chunk).
	ContentLength bool
	// Retries bounds reconnections within one session (default 5), Retry
	// the delay between them (default 500 ms, doubling).
	Retries int
	Retry   time.Duration
	// Dial opens the TLS-PSK connection; default tlspsk.Dial. Tests wrap it
	// to break connections.
	Dial func(ctx context.Context) (net.Conn, error)
	Log  *slog.Logger
}

// Agent runs admin sessions for one module.
type Agent struct {
	cfg  Config
	card gp.Channel
	log  *slog.Logger
}

// New returns an agent relaying to card.
func New(cfg Config, card gp.Channel) *Agent {
	if cfg.AgentID == "" {
		cfg.AgentID = cfg.Identity
	}
	if cfg.AdminURI == "" {
		cfg.AdminURI = DefaultAdminURI
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 500 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dial == nil {
		tc := &tlspsk.ClientConfig{Identity: cfg.Identity, PSK: cfg.PSK}
		server := cfg.Server
		cfg.Dial = func(ctx context.Context) (net.Conn, error) {
			c, err := tlspsk.Dial(ctx, "tcp", server, tc)
			if err != nil {
				return nil, err // not a nil *Conn in a non-nil net.Conn
			}
			return c, nil
		}
	}
	return &Agent{cfg: cfg, card: card, log: cfg.Log}
}

// Report says what one session did.
type Report struct {
	Scripts  int // scripts run
	Resumed  int // reconnections with X-Admin-Resume
	Statuses []string
}

// Run waits for wake-ups (or polls) and runs a session after each, until ctx
// ends. Errors of one session are logged; the agent carries on.
func (a *Agent) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		if a.cfg.Poll > 0 {
			if wait.Sleep(ctx, a.cfg.Poll) != nil {
				return nil
			}
		} else {
			woken, err := a.WaitWake(ctx)
			if err != nil {
				a.log.Warn("wake-up channel", "err", err)
				if wait.Sleep(ctx, a.cfg.Retry*4) != nil {
					return nil
				}
				continue
			}
			if !woken {
				continue
			}
		}
		rep, err := a.Session(ctx)
		if err != nil && ctx.Err() == nil {
			a.log.Warn("admin session", "err", err)
			continue
		}
		a.log.Info("admin session done", "scripts", rep.Scripts, "resumed", rep.Resumed)
	}
	return nil
}

// WaitWake holds one long poll on the wake-up channel: true when the server
// wants a session.
func (a *Agent) WaitWake(ctx context.Context) (bool, error) {
	c, err := a.cfg.Dial(ctx)
	if err != nil {
		return false, fmt.Errorf("agent: wake-up: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	resp, err := a.roundTrip(c, bufio.NewReader(c), cardlink.WakeUpPath, "", nil, false)
	if err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("agent: wake-up: %w", err)
	}
	return resp.status == http.StatusOK, nil
}

// Session runs one admin dialog to its end (204, or a 200 without
// Next-URI). A connection that breaks is re-opened and the last request
// resumed with X-Admin-Resume: the answer to a script that ran is never
// lost, and a script is never run twice.
func (a *Agent) Session(ctx context.Context) (Report, error) {
	var rep Report
	uri, status := a.cfg.AdminURI, ""
	var body []byte
	resume := false
	var c net.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	failures := 0
	for {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if c == nil {
			var err error
			if c, err = a.cfg.Dial(ctx); err != nil {
				c = nil
				if failures++; failures > a.cfg.Retries || errors.Is(err, tlspsk.ErrUnknownIdentity) || errors.Is(err, tlspsk.ErrPSKMismatch) {
					return rep, fmt.Errorf("agent: connect %s: %w", a.cfg.Server, err)
				}
				a.sleep(ctx, failures)
				continue
			}
			br = bufio.NewReader(c)
		}
		resp, err := a.roundTrip(c, br, uri, status, body, resume)
		if err != nil {
			c.Close()
			c = nil
			if failures++; failures > a.cfg.Retries {
				return rep, fmt.Errorf("agent: session: %w", err)
			}
			a.log.Info("connection dropped; resuming", "uri", uri, "err", err)
			resume = true
			rep.Resumed++
			a.sleep(ctx, failures)
			continue
		}
		failures, resume = 0, false
		switch resp.status {
		case http.StatusNoContent:
			return rep, nil
		case http.StatusOK:
		default:
			return rep, fmt.Errorf("agent: server answered %d: %s", resp.status, strings.TrimSpace(string(resp.body)))
		}
		status, body = a.runScript(ctx, resp.target, resp.body)
		rep.Scripts++
		rep.Statuses = append(rep.Statuses, status)
		if resp.nextURI == "" {
			return rep, nil // Amd B: the script ran; its result is not posted
		}
		uri = resp.nextURI
	}
}

func (a *Agent) sleep(ctx context.Context, n int) {
	wait.Sleep(ctx, a.cfg.Retry<<min(n-1, 5))
}

type response struct {
	status  int
	nextURI string
	target  string
	body    []byte
}

// roundTrip writes one Amendment B POST (in one Write) and reads the answer.
func (a *Agent) roundTrip(c net.Conn, br *bufio.Reader, uri, status string, body []byte, resume bool) (*response, error) {
	var b bytes.Buffer
	host := a.cfg.Server
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\n%s: %s\r\n%s: %s\r\n", uri, host,
		cardlink.HeaderProtocol, cardlink.Protocol, cardlink.HeaderFrom, a.cfg.AgentID)
	if resume {
		fmt.Fprintf(&b, "%s: true\r\n", cardlink.HeaderResume)
	}
	if status != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", cardlink.HeaderScriptStatus, status)
	}
	switch {
	case len(body) == 0:
		b.WriteString("Content-Length: 0\r\n\r\n")
	case a.cfg.ContentLength:
		fmt.Fprintf(&b, "Content-Type: %s\r\nContent-Length: %d\r\n\r\n", cardlink.ContentTypeResponse, len(body))
		b.Write(body)
	default:
		fmt.Fprintf(&b, "Content-Type: %s\r\nTransfer-Encoding: chunked\r\n\r\n", cardlink.ContentTypeResponse)
		b.WriteString(strconv.FormatInt(int64(len(body)), 16) + "\r\n")
		b.Write(body)
		b.WriteString("\r\n0\r\n\r\n")
	}
	if _, err := c.Write(b.Bytes()); err != nil {
		return nil, err
	}
	hr, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	defer hr.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(hr.Body, cardlink.MaxBody))
	if err != nil {
		return nil, err
	}
	if p := hr.Header.Get(cardlink.HeaderProtocol); p != cardlink.Protocol {
		return nil, fmt.Errorf("server answered %s %q", cardlink.HeaderProtocol, p)
	}
	return &response{status: hr.StatusCode, nextURI: hr.Header.Get(cardlink.HeaderNextURI),
		target: hr.Header.Get(cardlink.HeaderTarget), body: rb}, nil
}

// runScript is the RAM handler: it selects the targeted application, runs
// the TS 102 226 command script against the module and returns the script
// status and the response script (AF 80 … 00 00). Execution stops after the
// first error status word, whose R-APDU is the last in the answer.
func (a *Agent) runScript(ctx context.Context, target string, script []byte) (string, []byte) {
	cs, err := gp.ParseCommandScript(script)
	if err != nil {
		a.log.Warn("script does not parse", "err", err)
		return cardlink.StatusOK, gp.ResponseScript{BadFormat: []byte{0x01}, HasExecuted: true}.Bytes()
	}
	// The script carries its own secure channel: the agent relays its
	// commands as they are.
	host := gp.NewHost(a.card)
	if target != "" {
		aid, err := gp.ParseTargetedApplication(target)
		if err != nil {
			return cardlink.StatusUnknownApplication, nil
		}
		r, err := host.Send(ctx, gp.Select(aid))
		if err != nil || r.SW != gp.SWOK {
			// A locked or deleted SSD is not selectable: the answer
			// carries the module's R-APDU, so that the server can tell
			// what the card said.
			a.log.Info("targeted application not selectable", "target", target, "sw", r.SW, "err", err)
			if err != nil {
				return cardlink.StatusUnknownApplication, nil
			}
			return cardlink.StatusUnknownApplication, gp.ResponseScript{HasExecuted: true, Executed: 1, Responses: []gp.Response{r}}.Bytes()
		}
	}
	out := gp.ResponseScript{HasExecuted: true}
	for _, c := range cs.Commands {
		r, err := host.Send(ctx, c)
		if err != nil {
			a.log.Warn("module transmit failed", "err", err)
			break
		}
		out.Responses = append(out.Responses, r)
		out.Executed++
		if r.SW != gp.SWOK && !r.SW.Warning() {
			break
		}
	}
	return cardlink.StatusOK, out.Bytes()
}
