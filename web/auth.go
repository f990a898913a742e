package web

import (
	"container/list"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/clientnet"
	"github.com/keyport/keyport/web/views"
)

// Browser authentication: a server-side session (the cookie holds a random
// token, the database its SHA-256), a CSRF token on every form, and a
// per-address limit on sign-in attempts. The REST API does not use cookies,
// so none of this applies to /api/v1.

// Cookie names. With Secure cookies the __Host- prefix makes the browser
// refuse them from a subdomain or without Secure and Path=/.
func (s *Server) sessionCookie() string {
	if s.opts.InsecureCookies {
		return "kp_session"
	}
	return "__Host-kp_session"
}

func (s *Server) csrfCookie() string {
	if s.opts.InsecureCookies {
		return "kp_csrf"
	}
	return "__Host-kp_csrf"
}

const flashCookie = "kp_flash"

func (s *Server) setCookie(c echo.Context, name, value string, maxAge time.Duration, sameSite http.SameSite) {
	ck := &http.Cookie{Name: name, Value: value, Path: "/", HttpOnly: true, Secure: !s.opts.InsecureCookies, SameSite: sameSite}
	switch {
	case maxAge > 0:
		ck.MaxAge = int(maxAge / time.Second)
	case maxAge < 0:
		ck.MaxAge = -1
	}
	c.SetCookie(ck)
}

// setPrincipal records the request's principal and how to authenticate
// its credential again (stillAuthenticated), as the middleware that
// authenticated it knows.
func setPrincipal(c echo.Context, p keyport.Principal, again func(context.Context) (keyport.Principal, error)) {
	c.Set("principal", p)
	c.Set("authenticate_again", again)
}

// stillAuthenticated authenticates the request's credential (its bearer
// token, or its portal session) again, as the middleware that let it in
// did, and requires the principal it started with: a token revoked, a
// session ended or a provider suspended while a long upload came in, or
// while a job's stream was open, stops it there.
func stillAuthenticated(c echo.Context) error {
	again, _ := c.Get("authenticate_again").(func(context.Context) (keyport.Principal, error))
	if again == nil {
		return keyport.ErrUnauthenticated
	}
	now, err := again(c.Request().Context())
	if err != nil {
		return err
	}
	if now != principal(c) {
		return fmt.Errorf("%w: the credential this request began with no longer acts as it did", keyport.ErrUnauthenticated)
	}
	return nil
}

// pageUser is the signed-in browser user of this request, or nil.
func pageUser(c echo.Context) *keyport.SessionUser {
	su, _ := c.Get("session_user").(*keyport.SessionUser)
	return su
}

// loadSession resolves the session cookie, if any, and makes sure the
// browser holds a CSRF token.
func (s *Server) loadSession(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if ck, err := c.Cookie(s.sessionCookie()); err == nil && ck.Value != "" {
			su, err := s.svc.ResolveSession(c.Request().Context(), ck.Value)
			switch {
			case err == nil:
				c.Set("session_user", su)
				c.Set("session_token", ck.Value)
				if su.Principal.Admin || su.Principal.ProviderID != "" {
					session := ck.Value
					setPrincipal(c, su.Principal, func(ctx context.Context) (keyport.Principal, error) {
						su, err := s.svc.ResolveSession(ctx, session)
						if err != nil {
							return keyport.Principal{}, err
						}
						return su.Principal, nil
					})
				}
			case errors.Is(err, keyport.ErrUnauthenticated):
				s.setCookie(c, s.sessionCookie(), "", -1, http.SameSiteLaxMode)
			default:
				return err
			}
		}
		token := ""
		if ck, err := c.Cookie(s.csrfCookie()); err == nil && len(ck.Value) >= 32 {
			token = ck.Value
		} else {
			b := make([]byte, 32)
			if _, err := rand.Read(b); err != nil {
				return err
			}
			token = base64.RawURLEncoding.EncodeToString(b)
			s.setCookie(c, s.csrfCookie(), token, 0, http.SameSiteStrictMode)
		}
		c.Set("csrf", token)
		return next(c)
	}
}

// errCSRF is a form posted without the token of this browser.
var errCSRF = echo.NewHTTPError(http.StatusForbidden,
	"this form is stale or was not sent by keyport's own page (missing or wrong CSRF token): go back, reload the page and try again")

// csrfHeader carries the token of a request that is not a urlencoded form.
const csrfHeader = "X-CSRF-Token"

// checkCSRF refuses a state-changing request that does not carry the
// browser's CSRF token (double-submit: the token is in an HttpOnly,
// SameSite=Strict cookie and in every form; a third-party site can read
// neither). It runs after the session is loaded and reads the token
// without touching a large body: from the X-CSRF-Token header, the csrf
// query parameter (multipart forms put it in their action), or the csrf
// field of a urlencoded form, parsed here within maxPageBody. A multipart
// body is never parsed here: only a handler behind the route's access
// check does that, after the body limit is set.
func (s *Server) checkCSRF(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			return next(c)
		}
		got := r.Header.Get(csrfHeader)
		if got == "" {
			got = r.URL.Query().Get("csrf")
		}
		if got == "" {
			mt, _, _ := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType))
			if mt == echo.MIMEApplicationForm {
				r.Body = http.MaxBytesReader(c.Response(), r.Body, maxPageBody)
				perr := r.ParseForm()
				var mbe *http.MaxBytesError
				if errors.As(perr, &mbe) {
					return perr
				}
				got = r.PostForm.Get("csrf")
			}
		}
		want, _ := c.Get("csrf").(string)
		ck, err := c.Cookie(s.csrfCookie())
		if err != nil || got == "" || ck.Value != want || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			return errCSRF
		}
		return next(c)
	}
}

// requirePageProvider lets through an approved provider's user; others are
// sent to sign in (anonymous) or refused.
func requirePageProvider(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		su := pageUser(c)
		switch {
		case su == nil:
			return redirectToLogin(c)
		case su.MustChangePassword && !su.User.Admin:
			return passwordFirst(c, next)
		case su.Principal.ProviderID == "":
			return echo.NewHTTPError(http.StatusForbidden, "this page is for providers whose sign-up the issuer has approved")
		}
		return next(c)
	}
}

// requirePageUser lets through any signed-in user (pending providers too).
func requirePageUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		su := pageUser(c)
		switch {
		case su == nil:
			return redirectToLogin(c)
		case su.MustChangePassword:
			return passwordFirst(c, next)
		}
		return next(c)
	}
}

// requirePageAdmin lets through issuer admins only.
func requirePageAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		su := pageUser(c)
		switch {
		case su == nil:
			return redirectToLogin(c)
		case su.MustChangePassword && su.User.Admin:
			return passwordFirst(c, next)
		case !su.Principal.Admin:
			return echo.NewHTTPError(http.StatusForbidden, "this page is for the issuer's administrators")
		}
		return next(c)
	}
}

// passwordFirst serves a user whose password was made for them
// (keyport.SessionUser.MustChangePassword) only their password page: a page
// asked for sends the browser there, anything else is refused. They act as
// no one until they have chosen their own (the session has no principal).
func passwordFirst(c echo.Context, next echo.HandlerFunc) error {
	page := securityBase(c) + "/password"
	if c.Path() == page {
		return next(c)
	}
	r := c.Request()
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.Header.Get(csrfHeader) == "" {
		return c.Redirect(http.StatusSeeOther, page)
	}
	return echo.NewHTTPError(http.StatusForbidden, "choose your own password first, at "+page)
}

// errSignIn answers an anonymous request that a redirect cannot serve.
var errSignIn = echo.NewHTTPError(http.StatusUnauthorized, "sign in first: this action is for signed-in users")

// redirectToLogin answers an anonymous request to a signed-in route. A
// browser's GET or HEAD (a page to show) is sent to sign in and brought
// back afterwards. Anything else gets 401: a form post (it passed the CSRF
// check, so the browser holds a token but no session, e.g. after the
// session expired) or a script's request carrying the X-CSRF-Token header
// would not be repeated by following a redirect, and a 303 would look like
// success to it.
func redirectToLogin(c echo.Context) error {
	r := c.Request()
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || r.Header.Get(csrfHeader) != "" {
		return errSignIn
	}
	return c.Redirect(http.StatusSeeOther, "/login?next="+url.QueryEscape(r.URL.RequestURI()))
}

// safeNext accepts only a local path to return to after sign-in: one '/'
// followed by anything but '/', a backslash, a control character or white space,
// checked on the value as given and once percent-decoded (browsers treat
// "//host", "/%09/host" and the like as another site). No control
// character or white space may appear anywhere, decoded or not.
func safeNext(next string) string {
	dec, err := url.PathUnescape(next)
	if err != nil {
		return ""
	}
	for _, v := range []string{next, dec} {
		if !strings.HasPrefix(v, "/") {
			return ""
		}
		if len(v) > 1 && (v[1] == '/' || v[1] == '\\') {
			return ""
		}
		for _, r := range v {
			if r <= ' ' || r == 0x7f || unicode.IsSpace(r) || unicode.IsControl(r) {
				return ""
			}
		}
	}
	return next
}

// rateLimiter bounds attempts per key (a client network, an e-mail
// address): a fixed window of window holding at most burst attempts. The
// sign-in limit complements the per-account lockout
// (keyport.MaxFailedLogins), which stops guessing one password; it stops
// one address from trying many accounts. Sign-up, reset and verify have
// their own limiters, so that they cannot flood mailboxes or the outbox.
//
// It holds at most maxKeys windows. A window is dropped once it has
// expired, never before: forgetting a live one would give its client a new
// allowance. When the table is full of live windows an attempt that needs
// a new key is refused (the limiter fails closed) and a warning is logged;
// clients that already have a window are unaffected.
type rateLimiter struct {
	name    string
	burst   int
	window  time.Duration
	maxKeys int
	log     *slog.Logger

	mu      sync.Mutex
	windows map[string]*list.Element // the elements of order, by key
	// order holds the windows oldest start first, so expired ones are
	// dropped from its front.
	order list.List
	// refused counts attempts refused since lastWarn because the table
	// was full; at most one warning is logged per rateFullWarnEvery.
	refused  int
	lastWarn time.Time
}

type rateWindow struct {
	key   string
	start time.Time
	n     int
}

const (
	loginBurst  = 20
	loginWindow = 5 * time.Minute
	// mailBurst attempts to sign up, ask for a reset or verify an address
	// per client network and per e-mail address in mailWindow.
	mailBurst  = 10
	mailWindow = 15 * time.Minute
	// rateKeysMax is how many keys a limiter holds (a few tens of MB at
	// most: keys are short, emailKey cuts long input). One client network
	// makes at most 24 mail keys a window (4 for its network, 10 sign-up
	// and 10 reset addresses: none once it is over its limit) and one
	// sign-in key, so the cap is reached only by thousands of networks at
	// their limits within one window. An IPv6 site (/48) adds its own 4
	// mail keys and 1 sign-in key, and at most siteScale×burst networks a
	// window (clientKeys).
	rateKeysMax = 100_000
	// rateFullWarnEvery spaces the warnings of a full limiter.
	rateFullWarnEvery = time.Minute
)

// newRateLimiter returns a limiter of burst attempts per window and key,
// holding at most rateKeysMax keys; name labels its log lines.
func newRateLimiter(name string, burst int, window time.Duration, log *slog.Logger) *rateLimiter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &rateLimiter{name: name, burst: burst, window: window, maxKeys: rateKeysMax, log: log,
		windows: map[string]*list.Element{}}
}

// allow counts one attempt for each key in turn and reports whether all of
// them are within their limits. Counting stops at the first key over its
// limit: callers put the widest key first (the client's site, then its
// network, then an address it typed), so that a client over a wider limit
// creates no narrower key, and cannot fill the table. An attempt that needs
// a new key while the table is full of live windows is refused.
func (l *rateLimiter) allow(now time.Time, keys ...rateKey) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	for _, rk := range keys {
		k := rk.key
		if k == "" {
			continue
		}
		e := l.windows[k]
		if e != nil && now.Sub(e.Value.(*rateWindow).start) > l.window {
			// Expired but not yet swept (callers' clocks are read
			// before the lock, so windows may start a little out of order).
			l.order.Remove(e)
			delete(l.windows, k)
			e = nil
		}
		if e == nil {
			if len(l.windows) >= l.maxKeys {
				l.full(now)
				return false
			}
			e = l.order.PushBack(&rateWindow{key: k, start: now})
			l.windows[k] = e
		}
		w, burst := e.Value.(*rateWindow), l.burst*max(rk.scale, 1)
		if w.n <= burst {
			w.n++
		}
		if w.n > burst {
			return false
		}
	}
	return true
}

// rateKey is one count an attempt adds to: key, allowed scale times the
// limiter's burst in a window (scale 0 counts as 1).
type rateKey struct {
	key   string
	scale int
}

// keyOf is the rate key k at the limiter's own burst.
func keyOf(k string) rateKey { return rateKey{key: k} }

// sweep drops the windows that have expired at now. Windows start in the
// order they are created, so the expired ones are at the front of l.order.
func (l *rateLimiter) sweep(now time.Time) {
	for e := l.order.Front(); e != nil; e = l.order.Front() {
		w := e.Value.(*rateWindow)
		if now.Sub(w.start) <= l.window {
			return
		}
		l.order.Remove(e)
		delete(l.windows, w.key)
	}
}

// full records an attempt refused because the table is full, and logs it
// at most once per rateFullWarnEvery.
func (l *rateLimiter) full(now time.Time) {
	l.refused++
	if !l.lastWarn.IsZero() && now.Sub(l.lastWarn) < rateFullWarnEvery {
		return
	}
	l.log.Warn("rate limiter full: refusing attempts from clients it does not yet count",
		"limiter", l.name, "keys", len(l.windows), "max_keys", l.maxKeys, "refused", l.refused, "window", l.window)
	l.refused, l.lastWarn = 0, now
}

// clientIP is the peer address; keyport does not trust X-Forwarded-For
// unless an operator puts it behind a proxy that sets it (not yet supported).
func clientIP(c echo.Context) string {
	host, _, err := net.SplitHostPort(c.Request().RemoteAddr)
	if err != nil {
		return c.Request().RemoteAddr
	}
	return host
}

// clientKeys are the keys rate limits count a client by, under scope, widest
// first (clientnet.Of): an IPv4 address is one key; an IPv6 address counts
// against its /48, allowed siteScale times the burst, then against its
// /64. Each new /64 a site tries is an attempt of the site, so a site at
// its limit adds no key, and filling a limiter's table takes hundreds of
// sites at their limits, not one.
func clientKeys(scope string, c echo.Context) []rateKey {
	ip := clientIP(c)
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return []rateKey{keyOf(scope + "ip:" + ip)}
	}
	srcs := clientnet.Of(a)
	keys := make([]rateKey, len(srcs))
	for i, src := range srcs {
		keys[i] = rateKey{key: scope + src.Key, scale: src.Scale}
	}
	return keys
}

// siteScale is how many clients' allowances an IPv6 /48 has.
const siteScale = clientnet.SiteScale

// emailKey is the rate-limit key of an e-mail address as typed. An
// address is at most maxEmailKey octets (RFC 5321): longer input is cut
// there, so that no key takes more room than a real address.
func emailKey(email string) string {
	email = strings.ToLower(strings.TrimSpace(email))
	if email == "" {
		return ""
	}
	if len(email) > maxEmailKey {
		email = email[:maxEmailKey]
	}
	return "email:" + email
}

// maxEmailKey is the longest address emailKey keeps (RFC 5321 §4.5.3.1.3).
const maxEmailKey = 254

// meta builds the page frame for this request.
func (s *Server) meta(c echo.Context, title, active string) views.Meta {
	m := views.Meta{Title: title, Active: active, Demo: s.opts.Demo, Sandbox: s.opts.Sandbox != nil}
	m.CSRF, _ = c.Get("csrf").(string)
	if su := pageUser(c); su != nil {
		m.Email = su.User.Email
		switch {
		case su.Principal.Admin, su.MustChangePassword && su.User.Admin:
			m.Role = views.AdminRole
		case su.Principal.ProviderID != "":
			m.Role = views.ProviderRole
		default:
			m.Role = views.PendingProvider
		}
	}
	if ck, err := c.Cookie(flashCookie); err == nil && ck.Value != "" {
		if v, err := url.QueryUnescape(ck.Value); err == nil {
			m.FlashKind, m.Flash, _ = strings.Cut(v, ":")
		}
		s.setCookie(c, flashCookie, "", -1, http.SameSiteLaxMode)
	}
	return m
}

// flash leaves a one-time notice for the page a redirect leads to.
func (s *Server) flash(c echo.Context, kind, msg string) {
	s.setCookie(c, flashCookie, url.QueryEscape(kind+":"+msg), time.Minute, http.SameSiteLaxMode)
}
