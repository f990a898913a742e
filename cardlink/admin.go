package cardlink

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
)

// Paths of the admin server. A card's first POST goes to its admin URI
// (session parameter 8C), whatever it is; the server then steers the card
// with X-Admin-Next-URI to session paths, relative and with a query
// (PROTOCOLS.md §3.5: the card echoes them verbatim).
const (
	// WakeUpPath is the handset agent's long poll: the wake-up channel
	// that stands in for an SMS trigger.
	WakeUpPath = "/cardlink/wake-up"
	// sessionPrefix starts every Next-URI: /cardlink/s/<session>/<job>?req=n.
	sessionPrefix = "/cardlink/s/"
)

// AdminServerConfig configures an AdminServer.
type AdminServerConfig struct {
	// Service runs the use cases (PSK lookup, sessions, scripts). Required.
	Service *keyport.Service
	// Wake is the handset agents' wake-up channel; nil disables WakeUpPath.
	Wake *WakeHub
	Log  *slog.Logger
	// Chunked sends scripts with Transfer-Encoding: chunked instead of
	// Content-Length (a card profile choice, PROTOCOLS.md §7.6).
	Chunked bool
	// Script chooses the TS 102 226 script variant (AE/AA, 22/A2).
	Script gp.ScriptOptions
	// IdleTimeout bounds the wait for a card's next request (default 60 s).
	IdleTimeout time.Duration
	// WakeWait is how long a wake-up long poll is held (default 25 s);
	// WakeCheck how often it looks for jobs in the database meanwhile, so
	// that a job queued on another replica is found (default 5 s).
	WakeWait, WakeCheck time.Duration
	// TLS adjusts the TLS-PSK server settings (ciphers, versions,
	// handshake timeout); its PSK callback is set by the server.
	TLS tlspsk.ServerConfig
}

// AdminServer is keyport's GP Amendment B admin server: HTTP/1.1 over
// TLS-PSK (RFC 4279) where the PSK identity names a module (its EID) and the
// PSK is the module's key, derived in the HSM for the handshake only. It
// hands each module its queued scripts, one session per module at a time,
// and records the answers (keyport.Service.AnswerScript).
type AdminServer struct {
	cfg AdminServerConfig
	log *slog.Logger
	tls *tlspsk.ServerConfig

	// base is cancelled by Close: it ends long polls and requests in flight.
	base   context.Context
	cancel context.CancelFunc

	// modules caches identity lookups: a module's ID and ISD AID never
	// change once imported, and every handshake and new dialog needs
	// them. The PSK itself is never cached.
	modules moduleCache

	mu     sync.Mutex
	lns    []net.Listener
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewAdminServer returns a server; Serve or ListenAndServe start it.
func NewAdminServer(cfg AdminServerConfig) *AdminServer {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.WakeWait <= 0 {
		cfg.WakeWait = 25 * time.Second
	}
	if cfg.WakeCheck <= 0 {
		cfg.WakeCheck = 5 * time.Second
	}
	s := &AdminServer{cfg: cfg, log: cfg.Log, conns: map[net.Conn]struct{}{}}
	s.base, s.cancel = context.WithCancel(context.Background())
	t := cfg.TLS
	t.PSK = s.psk
	s.tls = &t
	return s
}

// psk is the TLS-PSK server callback: identity → module → HSM-derived PSK.
// An unknown or malformed identity refuses the handshake (alert
// unknown_psk_identity); nothing is stored.
func (s *AdminServer) psk(identity string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := s.module(ctx, identity)
	if err != nil {
		s.log.Warn("admin session refused", "identity", identity, "err", err)
		return nil, err
	}
	psk, err := s.cfg.Service.AdminModulePSK(ctx, m)
	if err != nil {
		s.log.Warn("admin session refused", "identity", identity, "err", err)
		return nil, err
	}
	return psk, nil
}

// module returns the module a PSK identity names, from the cache when it
// was looked up lately. Unknown identities are not cached: a module
// imported later is found at once.
func (s *AdminServer) module(ctx context.Context, identity string) (*keyport.AdminModule, error) {
	if m := s.modules.get(identity); m != nil {
		return m, nil
	}
	m, err := s.cfg.Service.LookupAdminModule(ctx, identity)
	if err != nil {
		return nil, err
	}
	s.modules.put(identity, m)
	return m, nil
}

// moduleCache maps PSK identities to modules for moduleTTL, holding at
// most moduleCacheMax of them (it starts over when full: a miss costs
// only one read).
type moduleCache struct {
	mu sync.Mutex
	m  map[string]cachedModule
}

type cachedModule struct {
	mod *keyport.AdminModule
	at  time.Time
}

const (
	moduleTTL      = 10 * time.Minute
	moduleCacheMax = 1 << 16
)

func (c *moduleCache) get(identity string) *keyport.AdminModule {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[identity]
	if !ok || time.Since(e.at) > moduleTTL {
		return nil
	}
	return e.mod
}

func (c *moduleCache) put(identity string, m *keyport.AdminModule) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= moduleCacheMax {
		c.m = make(map[string]cachedModule)
	}
	c.m[identity] = cachedModule{mod: m, at: time.Now()}
}

// TLSConfig returns the TLS-PSK configuration the server listens with.
func (s *AdminServer) TLSConfig() *tlspsk.ServerConfig { return s.tls }

// ListenAndServe listens on addr (KEYPORT_ADMIN_ADDR) and serves until ctx
// ends or Close is called.
func (s *AdminServer) ListenAndServe(ctx context.Context, addr string) error {
	ln, err := tlspsk.Listen("tcp", addr, s.tls)
	if err != nil {
		return fmt.Errorf("cardlink: listen %s: %w", addr, err)
	}
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	return s.Serve(ln)
}

// Serve accepts TLS-PSK connections on ln (from tlspsk.Listen or
// tlspsk.NewListener) until it is closed. It returns nil after Close.
func (s *AdminServer) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("cardlink: accept: %w", err)
		}
		delay = 0
		tc, ok := c.(*tlspsk.Conn)
		if !ok {
			c.Close()
			return errors.New("cardlink: Serve needs a TLS-PSK listener")
		}
		if !s.track(tc, true) {
			tc.Close()
			return nil
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.track(tc, false)
			s.ServeConn(s.base, tc)
		}()
	}
}

func (s *AdminServer) track(c net.Conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closed {
			return false
		}
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	return true
}

// Close stops the listeners, closes every connection and waits for their
// goroutines. Leases of interrupted sessions expire on their own, so that
// the cards may resume elsewhere.
func (s *AdminServer) Close() error {
	s.cancel()
	s.mu.Lock()
	s.closed = true
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// conn is one TLS-PSK connection's dialog state.
type conn struct {
	s    *AdminServer
	c    *tlspsk.Conn
	eid  keyport.EID
	mod  *keyport.AdminModule
	sess *keyport.AdminSession
}

// ServeConn runs the handshake and the HTTP dialog on one connection until
// the card closes it, a request fails, or IdleTimeout passes.
func (s *AdminServer) ServeConn(ctx context.Context, c *tlspsk.Conn) {
	defer c.Close()
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err := c.Handshake(hctx)
	cancel()
	if err != nil {
		s.log.Info("admin handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	// The PSK callback looked the module up: this is the cache's answer.
	mod, err := s.module(ctx, c.Identity())
	if err != nil {
		s.log.Warn("admin session: module lookup", "identity", c.Identity(), "err", err)
		return
	}
	eid := mod.EID
	cn := &conn{s: s, c: c, eid: eid, mod: mod}
	br := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		req, err := ReadAdminRequest(br)
		var re *RequestError
		switch {
		case errors.As(err, &re):
			s.log.Info("admin request refused", "eid", eid, "status", re.Status, "reason", re.Reason)
			c.Write(AdminResponse{Status: re.Status, Body: []byte(re.Reason + "\n"), Close: true}.Bytes())
			return
		case err != nil:
			if !errors.Is(err, io.EOF) {
				s.log.Info("admin connection ended", "eid", eid, "err", err)
			}
			return
		}
		c.SetReadDeadline(time.Time{})
		resp := cn.handle(ctx, req)
		if _, err := c.Write(resp.Bytes()); err != nil {
			s.log.Info("admin write failed", "eid", eid, "err", err)
			return
		}
		if resp.Close {
			return
		}
	}
}

// handle answers one request: the routing of PROTOCOLS.md §3.3's server
// state machine.
func (cn *conn) handle(ctx context.Context, req *AdminRequest) AdminResponse {
	u, err := url.ParseRequestURI(req.URI)
	if err != nil {
		return errResponse(http.StatusBadRequest, "request URI does not parse")
	}
	switch {
	case u.Path == WakeUpPath:
		return cn.wakeUp(ctx)
	case strings.HasPrefix(u.Path, sessionPrefix):
		sid, ref, ok := strings.Cut(strings.TrimPrefix(u.Path, sessionPrefix), "/")
		if !ok || !strings.HasPrefix(sid, "ses_") || !strings.HasPrefix(ref, "job_") {
			return errResponse(http.StatusNotFound, "unknown session URI")
		}
		n, _ := strconv.Atoi(u.Query().Get("req"))
		return cn.continueDialog(ctx, req, sid, ref, n)
	}
	return cn.newDialog(ctx, req.Resume)
}

func errResponse(status int, reason string) AdminResponse {
	return AdminResponse{Status: status, Body: []byte(reason + "\n"), Close: true}
}

// endSession is the 204 that closes a dialog (Amd B: "204 to end").
func (cn *conn) endSession(ctx context.Context) AdminResponse {
	if cn.sess != nil {
		if err := cn.s.cfg.Service.CloseAdminSession(ctx, cn.sess); err != nil {
			cn.s.log.Warn("release admin lease", "eid", cn.eid, "err", err)
		}
		cn.sess = nil
	}
	return AdminResponse{Status: http.StatusNoContent}
}

// open takes (sid "": a new session) or renews the module's lease. Another
// live session of the module gets ok=false: one session at a time.
func (cn *conn) open(ctx context.Context, sid string, takeover bool) (ok bool, resp AdminResponse) {
	if cn.sess != nil && sid != "" && cn.sess.ID == sid && time.Now().Before(cn.sess.RenewAfter) {
		return true, AdminResponse{} // this connection holds a fresh lease
	}
	sess, err := cn.s.cfg.Service.OpenAdminSession(ctx, cn.mod, sid, takeover)
	switch {
	case errors.Is(err, keyport.ErrConflict):
		cn.s.log.Info("admin session refused: module busy", "eid", cn.eid)
		return false, AdminResponse{Status: http.StatusNoContent}
	case err != nil:
		return false, cn.failure(err)
	}
	cn.sess = sess
	return true, AdminResponse{}
}

// failure answers a server-side error; the card retries per its policy.
func (cn *conn) failure(err error) AdminResponse {
	var inv *keyport.InvalidError
	switch {
	case errors.As(err, &inv):
		return errResponse(http.StatusBadRequest, inv.Error())
	case errors.Is(err, keyport.ErrNotFound):
		return errResponse(http.StatusNotFound, "no such job for this module")
	case errors.Is(err, keyport.ErrConflict):
		return errResponse(http.StatusConflict, err.Error())
	}
	cn.s.log.Error("admin request failed", "eid", cn.eid, "err", err)
	return AdminResponse{Status: http.StatusServiceUnavailable, Body: []byte("try again later\n"), Close: true}
}

// newDialog starts a session on a card's first POST. With X-Admin-Resume
// the card says it broke off before it got the server's answer: it takes
// the module over from its own broken session and gets any SENT script again.
func (cn *conn) newDialog(ctx context.Context, resume bool) AdminResponse {
	if cn.sess != nil { // a restart on the same connection
		cn.endSession(ctx)
	}
	// The lease and the first script in one go (OpenAdminSession, then
	// NextScript, when that cannot be).
	sess, del, err := cn.s.cfg.Service.StartAdminSession(ctx, cn.mod, resume, cn.s.cfg.Script)
	if sess != nil {
		cn.sess = sess
	}
	switch {
	case errors.Is(err, keyport.ErrConflict) && sess == nil:
		cn.s.log.Info("admin session refused: module busy", "eid", cn.eid)
		return AdminResponse{Status: http.StatusNoContent}
	case err != nil:
		return cn.failure(err)
	case del == nil:
		return cn.endSession(ctx)
	}
	cn.s.log.Info("script sent", "eid", cn.eid, "job", del.Job.Ref, "session", cn.sess.ID)
	return cn.script(del, 1)
}

func (cn *conn) continueDialog(ctx context.Context, req *AdminRequest, sid, ref string, n int) AdminResponse {
	if ok, resp := cn.open(ctx, sid, false); !ok {
		return resp
	}
	svc := cn.s.cfg.Service
	switch {
	case req.ScriptStatus != "":
		j, ended, err := svc.AnswerScript(ctx, cn.sess, ref, req.ScriptStatus, req.Body)
		if err != nil {
			return cn.failure(err)
		}
		cn.s.log.Info("script answered", "eid", cn.eid, "job", j.Ref, "state", j.State, "resume", req.Resume)
		if ended { // the lease went with the answer: nothing more to run
			cn.sess = nil
			return AdminResponse{Status: http.StatusNoContent}
		}
	case req.Resume:
		del, err := svc.PendingScript(ctx, cn.sess, ref, cn.s.cfg.Script)
		if err != nil {
			return cn.failure(err)
		}
		if del != nil { // the card never ran it: send it again
			return cn.script(del, n)
		}
	}
	return cn.next(ctx, n+1, false)
}

// next sends the module's next script, or ends the session.
func (cn *conn) next(ctx context.Context, n int, resumed bool) AdminResponse {
	del, err := cn.s.cfg.Service.NextScript(ctx, cn.sess, cn.s.cfg.Script, resumed)
	if err != nil {
		return cn.failure(err)
	}
	if del == nil {
		return cn.endSession(ctx)
	}
	cn.s.log.Info("script sent", "eid", cn.eid, "job", del.Job.Ref, "session", cn.sess.ID)
	return cn.script(del, n)
}

func (cn *conn) script(del *keyport.Delivery, n int) AdminResponse {
	return AdminResponse{Status: http.StatusOK, Body: del.Script, Target: del.Target, Chunked: cn.s.cfg.Chunked,
		NextURI: fmt.Sprintf("%s%s/%s?req=%d", sessionPrefix, cn.sess.ID, del.Job.Ref, n)}
}

// wakeUp holds the agent's long poll until the module is woken, it has a
// job waiting, or WakeWait passes (204).
func (cn *conn) wakeUp(ctx context.Context) AdminResponse {
	if cn.s.cfg.Wake == nil {
		return errResponse(http.StatusNotFound, "no wake-up channel here")
	}
	ctx, cancel := context.WithTimeout(ctx, cn.s.cfg.WakeWait)
	defer cancel()
	woken := cn.s.cfg.Wake.Wait(ctx, cn.eid, cn.s.cfg.WakeCheck, func() bool {
		has, err := cn.s.cfg.Service.ModuleHasWork(ctx, cn.eid)
		return err == nil && has
	})
	if !woken {
		return AdminResponse{Status: http.StatusNoContent}
	}
	return AdminResponse{Status: http.StatusOK, ContentType: "application/json", Body: []byte(`{"wake":true}` + "\n")}
}
