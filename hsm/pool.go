package hsm

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/miekg/pkcs11"

	"github.com/keyport/keyport"
)

// Config opens a token.
type Config struct {
	// URI is an RFC 7512 PKCS#11 URI (see ParseURI), e.g.
	// "pkcs11:token=keyport?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin".
	URI string
	// OAEPHash is the hash of RSA-OAEP in the RSA-AES wrap: sha1 (the
	// default, and the only one SoftHSM 2.6 has) or sha256.
	OAEPHash keyport.OAEPHash
	// PoolSize bounds the sessions in use at once; 0 means 2×GOMAXPROCS (at
	// least 4).
	PoolSize int
	// Exclusive, if set, is the deployment's lock around the creation of
	// a token key (the check that none has its label, then the creation),
	// so that other processes on the token do not create it too. Without
	// it only this process's creations are serialized.
	Exclusive keyport.Exclusive
}

// HSM is keyport's custody of keys in one PKCS#11 token; it implements
// keyport.Custody. It is safe for concurrent use: every operation borrows a
// session from a pool, since one PKCS#11 session must never be used by two
// goroutines at once (SoftHSM crashes when it is).
//
// Open one *HSM per token per process: two pools over one token would both
// see the same login state and could not tell each other's session handles
// from their own after a recovery.
type HSM struct {
	p    p11
	slot uint
	// token identifies the token for finding its slot again: slot IDs change
	// when the module is initialized again (SoftHSM renumbers them).
	token *URI
	pin   string // for re-login after the token logged out; never printed
	uri   string // redacted, for messages
	oaep  keyport.OAEPHash

	inUse chan struct{} // semaphore: one slot per borrowed session
	// locked is a semaphore of its own for the calls made while a write
	// transaction holds the audit lock (AuditMAC): one session beside
	// PoolSize, so that they do not queue behind handshakes and
	// judgements for the pool while every other writer waits for them.
	locked chan struct{}

	mu     sync.Mutex // guards the fields below and every C_OpenSession
	idle   []*session
	live   map[pkcs11.SessionHandle]*session
	closed bool

	loginMu sync.Mutex
	pinErr  error // sticky once the token refused the PIN

	createMu  sync.Mutex        // one key creation at a time in this process
	exclusive keyport.Exclusive // and in the deployment, if set (Config.Exclusive)

	// sealKeys: both sealing keys were found or made (ensureSealKeys).
	sealKeys atomic.Bool

	receiptMu  sync.Mutex
	receiptKid string
	receiptPub *ecdsa.PublicKey

	// timing is set by Collector: from then on p times mechanism calls.
	timing     atomic.Pointer[timing]
	timingOnce sync.Once
	poolErrs   [numPoolErrors]atomic.Uint64
}

// session is one PKCS#11 session with the object handles found on it.
// Handles are cached per session, not globally: a recovered session may see
// different handles for the same token objects.
type session struct {
	h       pkcs11.SessionHandle
	objects map[objectKey]pkcs11.ObjectHandle
	// dead: the module gave this handle number to a newer session, so this
	// one no longer exists.
	dead bool
}

type objectKey struct {
	class uint
	label string
}

// Open loads the module named by cfg.URI (once per process), finds the token,
// logs in once and returns a ready *HSM. A wrong PIN fails with
// ErrPINIncorrect after exactly one C_Login.
func Open(ctx context.Context, cfg Config) (*HSM, error) {
	return open(ctx, cfg, nil)
}

// open is Open with an optional interposer on the PKCS#11 calls (tests).
// With cfg.Exclusive it finds the token and logs in under the deployment's
// lock, the one key creation holds: SoftHSM rewrites its token's files when
// another process adds a key, and a process that reads them meanwhile
// finds no token, or one whose user PIN is not set.
func open(ctx context.Context, cfg Config, wrap func(p11) p11) (*HSM, error) {
	var h *HSM
	err := underLock(ctx, cfg.Exclusive, "open", func(ctx context.Context) (err error) {
		h, err = openToken(ctx, cfg, wrap)
		return err
	})
	return h, err
}

// keyCreationLock is the name of the deployment's lock (Config.Exclusive)
// around key creation, and the token's opening. One for every token: both
// are rare.
const keyCreationLock = "hsm-key-creation"

// underLock runs fn under the deployment's lock ex, or at once when there
// is none. fn's error comes back as it is; a lock that could not be taken
// is op's error.
func underLock(ctx context.Context, ex keyport.Exclusive, op string, fn func(context.Context) error) error {
	if ex == nil {
		return fn(ctx)
	}
	ran := false
	err := ex(ctx, keyCreationLock, func(ctx context.Context) error {
		ran = true
		return fn(ctx)
	})
	if err != nil && !ran {
		return fmt.Errorf("hsm: %s: the deployment's lock: %w", op, err)
	}
	return err
}

func openToken(ctx context.Context, cfg Config, wrap func(p11) p11) (*HSM, error) {
	u, err := ParseURI(cfg.URI)
	if err != nil {
		return nil, fmt.Errorf("hsm: open: %w", err)
	}
	switch cfg.OAEPHash {
	case "":
		cfg.OAEPHash = keyport.OAEPSHA1
	case keyport.OAEPSHA1, keyport.OAEPSHA256:
	default:
		return nil, fmt.Errorf("hsm: open: OAEP hash %q: want sha1 or sha256", cfg.OAEPHash)
	}
	if cfg.PoolSize <= 0 {
		cfg.PoolSize = max(4, 2*runtime.GOMAXPROCS(0))
	}
	pin, err := u.PIN()
	if err != nil {
		return nil, fmt.Errorf("hsm: open: %w", err)
	}
	c, err := loadModule(u.ModulePath)
	if err != nil {
		return nil, opError("open", err)
	}
	var p p11 = c
	if wrap != nil {
		p = wrap(p)
	}
	slot, err := findSlot(p, u)
	if err != nil {
		return nil, opError("open", err)
	}
	h := &HSM{
		slot:   slot,
		token:  u,
		pin:    pin,
		uri:    u.String(),
		oaep:   cfg.OAEPHash,
		inUse:  make(chan struct{}, cfg.PoolSize),
		locked: make(chan struct{}, 1),
		live:   map[pkcs11.SessionHandle]*session{},
	}
	h.exclusive = cfg.Exclusive
	h.p = &timedP11{p11: p, on: &h.timing}
	// Log in now, so that a wrong PIN shows at start-up, not at the first claim.
	if err := h.do(ctx, "open", func(*session) error { return nil }); err != nil {
		return nil, err
	}
	return h, nil
}

// OAEPHash returns the OAEP hash of the RSA-AES wrap.
func (h *HSM) OAEPHash() keyport.OAEPHash { return h.oaep }

// Close closes the pool's idle sessions; sessions in use close when they
// come back. The module stays initialized for the rest of the process.
func (h *HSM) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for _, s := range h.idle {
		h.forget(s)
		_ = h.p.CloseSession(s.h)
	}
	h.idle = nil
	return nil
}

// do runs fn on a pooled session. If the session turns out unusable
// (sessionFatal) it is discarded and fn runs once more on a new session; if a
// cached object handle is stale, the session's cache is cleared and fn runs
// once more. fn must therefore be safe to repeat after a failure.
func (h *HSM) do(ctx context.Context, op string, fn func(*session) error) error {
	return h.doOn(ctx, h.inUse, op, fn)
}

// doOn is do with the session counted on semaphore sem (h.inUse, or
// h.locked for the calls made under the audit lock).
func (h *HSM) doOn(ctx context.Context, sem chan struct{}, op string, fn func(*session) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("hsm: %s: %w", op, err)
	}
	fresh := false
	for attempt := 0; ; attempt++ {
		s, err := h.acquire(ctx, sem, fresh)
		if err != nil {
			return opError(op, err)
		}
		err = fn(s)
		switch {
		case err == nil:
			h.release(s, sem)
			return nil
		case attempt == 0 && isStaleHandle(err):
			h.poolErrs[errStaleHandle].Add(1)
			s.objects = nil
			h.release(s, sem)
		case isSessionFatal(err):
			h.poolErrs[errSessionLost].Add(1)
			rv, _ := ckr(err)
			h.discard(s, rv == pkcs11.CKR_USER_NOT_LOGGED_IN)
			<-sem
			if attempt > 0 {
				return opError(op, err)
			}
			fresh = true
		default:
			h.release(s, sem)
			return opError(op, err)
		}
	}
}

// acquire borrows a session, waiting while PoolSize are in use. With fresh,
// it opens a new session instead of reusing an idle one.
func (h *HSM) acquire(ctx context.Context, sem chan struct{}, fresh bool) (*session, error) {
	select {
	case sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	s, loggedIn, err := h.take(fresh)
	if err != nil && !errors.Is(err, ErrClosed) {
		h.poolErrs[errOpen].Add(1)
	}
	if err == nil && !loggedIn {
		if err = h.login(s); err != nil {
			h.poolErrs[errLogin].Add(1)
			h.discard(s, true)
		}
	}
	if err != nil {
		<-sem
		return nil, err
	}
	return s, nil
}

// take pops a working idle session or opens a new one. Popping, checking and
// opening happen under h.mu so that a handle number the module reuses is
// never handed to two goroutines.
func (h *HSM) take(fresh bool) (*session, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, false, ErrClosed
	}
	for !fresh && len(h.idle) > 0 {
		s := h.idle[len(h.idle)-1]
		h.idle = h.idle[:len(h.idle)-1]
		if s.dead {
			continue
		}
		info, err := h.p.GetSessionInfo(s.h)
		if err != nil || info.SlotID != h.slot {
			// Closed behind our back (C_CloseAllSessions, token removed):
			// the handle may belong to someone else now, so do not close it.
			h.poolErrs[errSessionLost].Add(1)
			h.forget(s)
			continue
		}
		return s, loggedInState(info.State), nil
	}
	sh, err := h.p.OpenSession(h.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if rv, ok := ckr(err); ok && slotGone[rv] {
		// The slot was renumbered or the token moved: find it again by its
		// label or serial, then try once more.
		slot, ferr := findSlot(h.p, h.token)
		if ferr != nil {
			return nil, false, fmt.Errorf("C_OpenSession: %w (finding the token again: %w)", err, ferr)
		}
		h.slot = slot
		sh, err = h.p.OpenSession(h.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	}
	if err != nil {
		return nil, false, fmt.Errorf("C_OpenSession: %w", err)
	}
	if old, ok := h.live[sh]; ok {
		old.dead = true
	}
	s := &session{h: sh}
	h.live[sh] = s
	info, err := h.p.GetSessionInfo(sh)
	if err != nil {
		h.forget(s)
		return nil, false, fmt.Errorf("C_GetSessionInfo: %w", err)
	}
	return s, loggedInState(info.State), nil
}

func loggedInState(state uint) bool {
	return state == pkcs11.CKS_RW_USER_FUNCTIONS || state == pkcs11.CKS_RO_USER_FUNCTIONS
}

// login logs the user in. One login covers every session of the process on
// the token (PKCS#11 v2.40 base §5.6 C_Login); it is needed again only after
// the token dropped it (e.g. all sessions were closed).
func (h *HSM) login(s *session) error {
	h.loginMu.Lock()
	defer h.loginMu.Unlock()
	if h.pinErr != nil {
		return h.pinErr
	}
	err := h.p.Login(s.h, pkcs11.CKU_USER, h.pin)
	rv, _ := ckr(err)
	switch {
	case err == nil, rv == pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		return nil
	case rv == pkcs11.CKR_PIN_INCORRECT, rv == pkcs11.CKR_PIN_INVALID, rv == pkcs11.CKR_PIN_LEN_RANGE:
		h.pinErr = fmt.Errorf("login to %s: %w", h.uri, ErrPINIncorrect)
		return h.pinErr
	case rv == pkcs11.CKR_PIN_LOCKED:
		h.pinErr = fmt.Errorf("login to %s: %w", h.uri, ErrPINLocked)
		return h.pinErr
	}
	return fmt.Errorf("C_Login: %w", err)
}

// release returns a healthy session to the pool.
func (h *HSM) release(s *session, sem chan struct{}) {
	h.mu.Lock()
	switch {
	case s.dead:
	case h.closed:
		h.forget(s)
		_ = h.p.CloseSession(s.h)
	default:
		h.idle = append(h.idle, s)
	}
	h.mu.Unlock()
	<-sem
}

// discard drops a broken session. It is closed only when the caller knows the
// handle is still ours (closeIt); otherwise its number may already belong to
// another session.
func (h *HSM) discard(s *session, closeIt bool) {
	h.mu.Lock()
	h.forget(s)
	if closeIt && !s.dead {
		_ = h.p.CloseSession(s.h)
	}
	h.mu.Unlock()
}

// forget removes s from the live set. Callers hold h.mu.
func (h *HSM) forget(s *session) {
	if h.live[s.h] == s {
		delete(h.live, s.h)
	}
}
