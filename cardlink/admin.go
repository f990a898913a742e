package cardlink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/internal/clientnet"
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
	// IdleTimeout bounds the wait for a card's next request, head and
	// body (default 60 s).
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the TLS-PSK handshake from the accept on,
	// the wait for the ClientHello included (default 10 s). It replaces
	// TLS.HandshakeTimeout when that is zero.
	HandshakeTimeout time.Duration
	// MaxConns caps the connections open at once (default 10,000), and
	// MaxConnsPerAddr those from one source address (default 64; IPv6
	// addresses count per /64, and a /48 as a site of siteScale such
	// sources). A connection over a cap is closed at once, before the
	// handshake. Negative means no cap.
	MaxConns, MaxConnsPerAddr int
	// HandshakeRate and HandshakeBurst limit the handshakes a source
	// address (IPv6: its /64, and its /48 at siteScale times both) may
	// start, as a token bucket: HandshakeRate a second (default 10) with
	// bursts of HandshakeBurst (default 64).
	// Every handshake costs a database lookup and an HSM derive before
	// the client has proved anything; a connection over the limit is
	// closed at once. A negative HandshakeRate means no limit.
	HandshakeRate  float64
	HandshakeBurst int
	// MaxHeaderBytes bounds a request's line and header fields (default
	// DefaultMaxHeaderBytes); a larger head is answered 431. Bodies are
	// bounded by MaxBody (413).
	MaxHeaderBytes int
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

	decoyMu     sync.Mutex
	decoyModule *keyport.AdminModule

	// base is cancelled by Close: it ends long polls and requests in flight.
	base   context.Context
	cancel context.CancelFunc

	// modules caches identity lookups: a module's ID and ISD AID never
	// change once imported, and every handshake and new dialog needs
	// them. The PSK is cached only sealed, never in clear.
	modules moduleCache

	mu      sync.Mutex
	lns     []net.Listener
	conns   map[net.Conn]struct{}
	perAddr map[string]int  // open connections by rateSource key
	rates   *handshakeRates // handshake rate by rateSource; nil: no limit
	serving int             // Serve loops running
	stopErr error           // why the last Serve loop ended
	closed  bool
	wg      sync.WaitGroup

	refusedCap, refusedRate atomic.Uint64
	active, sessions        atomic.Int64
	handshakeFails          [numHandshakeCauses]atomic.Uint64
	refusals, acceptErrs    logLimiter
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
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 10000
	}
	if cfg.MaxConnsPerAddr == 0 {
		cfg.MaxConnsPerAddr = 64
	}
	if cfg.HandshakeRate == 0 {
		cfg.HandshakeRate = 10
	}
	if cfg.HandshakeBurst <= 0 {
		cfg.HandshakeBurst = 64
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	s := &AdminServer{cfg: cfg, log: cfg.Log, conns: map[net.Conn]struct{}{},
		perAddr: map[string]int{}}
	if cfg.HandshakeRate > 0 {
		s.rates = newHandshakeRates(cfg.HandshakeRate, cfg.HandshakeBurst, maxBuckets)
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	t := cfg.TLS
	t.PSK = s.psk
	if t.HandshakeTimeout == 0 {
		t.HandshakeTimeout = cfg.HandshakeTimeout
	}
	s.tls = &t
	s.stopErr = errors.New("cardlink: admin server not started")
	return s
}

// psk is the TLS-PSK server callback: identity → module → HSM-derived PSK.
// An unknown or malformed identity refuses the handshake; tlspsk answers it
// exactly as a wrong PSK (bad_record_mac), so EIDs cannot be enumerated.
// Nothing is stored: the PSK returned is freshly unsealed, and tlspsk
// wipes it once OpenSSL has it.
func (s *AdminServer) psk(identity string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, cached, err := s.module(ctx, identity)
	if errors.Is(err, keyport.ErrNotFound) {
		// An unknown identity costs the HSM unseal a known one does, for a
		// module that does not exist, so that the handshake's timing does
		// not tell which EIDs are registered (tlspsk then fails it with a
		// dummy PSK, exactly as a wrong PSK fails).
		if d := s.decoy(ctx); d != nil {
			k, _ := s.cfg.Service.AdminModulePSK(ctx, d)
			clear(k)
		}
	}
	if err != nil {
		s.log.Warn("admin session refused", "identity", identity, "err", err)
		return nil, err
	}
	psk, err := s.cfg.Service.AdminModulePSK(ctx, m)
	if err != nil && cached {
		// The cached sealed PSK may be one the token can no longer unseal
		// (`keyport hsm init` sealed it anew and destroyed the old key):
		// the module as the database has it now, once.
		s.modules.forget(identity)
		if m, _, err = s.module(ctx, identity); err == nil {
			psk, err = s.cfg.Service.AdminModulePSK(ctx, m)
		}
	}
	if err != nil {
		s.log.Warn("admin session refused", "identity", identity, "err", err)
		return nil, err
	}
	return psk, nil
}

// decoyEID is the module an unknown identity's handshake unseals a PSK for:
// a well-formed EID that no issuer assigns (all zeros before the check
// digits, which make it valid).
const decoyEID keyport.EID = "89000000000000000000000000000002"

// decoy returns the decoy module, with a PSK sealed for it on first use;
// nil if that failed (the HSM is down: then no handshake costs anything).
func (s *AdminServer) decoy(ctx context.Context) *keyport.AdminModule {
	s.decoyMu.Lock()
	defer s.decoyMu.Unlock()
	if s.decoyModule == nil {
		if sealed, err := s.cfg.Service.NewDecoyPSK(ctx, decoyEID); err == nil {
			s.decoyModule = &keyport.AdminModule{EID: decoyEID, ISDAID: "A000000151000000", PSK: sealed}
		}
	}
	return s.decoyModule
}

// module returns the module a PSK identity names, from the cache (cached
// true) when it was looked up lately. Unknown identities are not cached:
// a module imported later is found at once.
func (s *AdminServer) module(ctx context.Context, identity string) (m *keyport.AdminModule, cached bool, err error) {
	if m := s.modules.get(identity); m != nil {
		return m, true, nil
	}
	if m, err = s.cfg.Service.LookupAdminModule(ctx, identity); err != nil {
		return nil, false, err
	}
	s.modules.put(identity, m)
	return m, false, nil
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

// forget drops identity's entry.
func (c *moduleCache) forget(identity string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, identity)
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
// tlspsk.NewListener) until it is closed. It returns nil after Close, an
// error when ln was closed otherwise. Other accept errors (EMFILE, ENFILE,
// ENOBUFS, ECONNABORTED, …) are retried with a backoff of 5 ms doubling to
// 1 s, as net/http does: a process at its descriptor limit accepts again
// once descriptors are free.
func (s *AdminServer) Serve(ln net.Listener) (err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.serving++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.serving--
		s.stopErr = err
		if err == nil {
			s.stopErr = errors.New("cardlink: admin server closed")
		}
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("cardlink: accept: %w", err)
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if n, ok := s.acceptErrs.note(); ok {
				s.log.Error("admin accept failed; retrying", "err", err, "retry_in", delay, "errors", n)
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		tc, ok := c.(*tlspsk.Conn)
		if !ok {
			c.Close()
			return errors.New("cardlink: Serve needs a TLS-PSK listener")
		}
		srcs := sourcesOf(tc.RemoteAddr())
		key := srcs[len(srcs)-1].key
		switch s.admit(tc, srcs) {
		case admitClosed:
			tc.Close()
			return nil
		case admitOverCap:
			tc.Close()
			s.refused(&s.refusedCap, "connection cap", key)
			continue
		case admitOverRate:
			tc.Close()
			s.refused(&s.refusedRate, "handshake rate", key)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.release(tc, srcs)
			s.ServeConn(s.base, tc)
		}()
	}
}

func (s *AdminServer) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Accepting returns nil while a Serve loop runs, and otherwise why none
// does (not started, closed, or the error Serve returned). Health checks
// report it (web.Options.AdminListener).
func (s *AdminServer) Accepting() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serving > 0 {
		return nil
	}
	return s.stopErr
}

// AdminStats counts the server's connections, sessions and what it refused.
type AdminStats struct {
	Conns int // open connections
	// Active counts the open sessions past their handshake; Sessions every
	// handshake that succeeded.
	Active, Sessions int64
	// OverCap and OverRate count connections closed at accept because of
	// MaxConns/MaxConnsPerAddr and of the handshake rate limit.
	OverCap, OverRate uint64
	// HandshakeFailures counts failed handshakes by cause: unknown_identity,
	// psk_unavailable, psk_mismatch, timeout, other.
	HandshakeFailures map[string]uint64
}

// Stats returns the open connections and sessions and the refusals so far.
func (s *AdminServer) Stats() AdminStats {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	st := AdminStats{Conns: n, Active: s.active.Load(), Sessions: s.sessions.Load(), OverCap: s.refusedCap.Load(),
		OverRate: s.refusedRate.Load(), HandshakeFailures: make(map[string]uint64, numHandshakeCauses)}
	for i, cause := range handshakeCauses {
		st.HandshakeFailures[cause] = s.handshakeFails[i].Load()
	}
	return st
}

// refused counts a refusal and logs, at most once per logEvery, how many
// there were since the last line.
func (s *AdminServer) refused(counter *atomic.Uint64, reason, key string) {
	counter.Add(1)
	if n, ok := s.refusals.note(); ok {
		s.log.Warn("admin connections refused", "reason", reason, "addr", key, "refused", n)
	}
}

type admission int

const (
	admitOK admission = iota
	admitClosed
	admitOverCap
	admitOverRate
)

// admit tracks c if the caps and the handshake rates of its sources
// (sourcesOf) allow.
func (s *AdminServer) admit(c net.Conn, srcs []rateSource) admission {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return admitClosed
	}
	if s.cfg.MaxConns > 0 && len(s.conns) >= s.cfg.MaxConns {
		return admitOverCap
	}
	for _, src := range srcs {
		if s.cfg.MaxConnsPerAddr > 0 && s.perAddr[src.key] >= s.cfg.MaxConnsPerAddr*src.scale {
			return admitOverCap
		}
	}
	if s.rates != nil && !s.rates.takeAll(srcs, time.Now()) {
		return admitOverRate
	}
	s.conns[c] = struct{}{}
	for _, src := range srcs {
		s.perAddr[src.key]++
	}
	return admitOK
}

func (s *AdminServer) release(c net.Conn, srcs []rateSource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	for _, src := range srcs {
		if s.perAddr[src.key]--; s.perAddr[src.key] <= 0 {
			delete(s.perAddr, src.key)
		}
	}
}

// maxBuckets bounds the handshake rate limiter's memory (handshakeRates).
const maxBuckets = 1 << 16

// sourcesOf is what a connection from a counts against, widest first
// (clientnet.Of): its IP address, or an IPv6 address's /48 (a site, with
// siteScale sources' caps and handshake allowance) and then its /64. An
// address that does not parse counts as itself.
func sourcesOf(a net.Addr) []rateSource {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return []rateSource{{key: a.String(), scale: 1}}
	}
	srcs := clientnet.Of(ap.Addr())
	out := make([]rateSource, len(srcs))
	for i, src := range srcs {
		out[i] = rateSource{key: src.Key, scale: src.Scale}
	}
	return out
}

// siteScale is how many sources' caps and handshake allowances an IPv6
// /48 has.
const siteScale = clientnet.SiteScale

// logLimiter lets a repeated event be logged at most once per every
// (logEvery when zero).
type logLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  time.Time
	n     uint64
}

const logEvery = 10 * time.Second

// note counts an event; ok says to log it now, with n events since the
// last line.
func (l *logLimiter) note() (n uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	every := l.every
	if every == 0 {
		every = logEvery
	}
	if now := time.Now(); now.Sub(l.last) >= every {
		n, l.n, l.last = l.n, 0, now
		return n, true
	}
	return 0, false
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
// the card closes it, the session ends (the server closes after the final
// 204, PROTOCOLS.md §3.5), a request fails, or IdleTimeout passes.
func (s *AdminServer) ServeConn(ctx context.Context, c *tlspsk.Conn) {
	defer c.Close()
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := c.Handshake(hctx)
	cancel()
	if err != nil {
		s.handshakeFails[handshakeCause(err)].Add(1)
		s.log.Info("admin handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	s.sessions.Add(1)
	s.active.Add(1)
	defer s.active.Add(-1)
	// The PSK callback looked the module up: this is the cache's answer.
	mod, _, err := s.module(ctx, c.Identity())
	if err != nil {
		s.log.Warn("admin session: module lookup", "identity", c.Identity(), "err", err)
		return
	}
	eid := mod.EID
	cn := &conn{s: s, c: c, eid: eid, mod: mod}
	rr := NewAdminRequestReader(c, s.cfg.MaxHeaderBytes)
	for {
		c.SetReadDeadline(time.Now().Add(s.cfg.IdleTimeout))
		req, err := rr.Read()
		var re *RequestError
		switch {
		case errors.As(err, &re):
			s.log.Info("admin request refused", "eid", eid, "status", re.Status, "reason", re.Reason)
			c.SetWriteDeadline(time.Now().Add(lingerTimeout))
			if _, err := c.Write(AdminResponse{Status: re.Status, Body: []byte(re.Reason + "\n"), Close: true}.Bytes()); err == nil {
				lingerClose(c)
			}
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
		if resp.Close || resp.End {
			return // the deferred Close sends close_notify
		}
	}
}

// lingerTimeout and lingerMax bound lingerClose.
const (
	lingerTimeout = 2 * time.Second
	lingerMax     = 256 << 10
)

// lingerClose ends a connection whose request was refused unread: it sends
// close_notify and a FIN, then drains (and drops) what the card still
// sends for a while, so that closing with unread input does not reset the
// connection before the card has read the error response.
func lingerClose(c *tlspsk.Conn) {
	if c.CloseWrite() != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.Copy(io.Discard, io.LimitReader(c.NetConn(), lingerMax))
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
	return AdminResponse{Status: http.StatusNoContent, End: true}
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
		return false, AdminResponse{Status: http.StatusNoContent, End: true}
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
		return AdminResponse{Status: http.StatusNoContent, End: true}
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
			return AdminResponse{Status: http.StatusNoContent, End: true}
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
