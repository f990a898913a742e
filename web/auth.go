package web

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
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
					c.Set("principal", su.Principal)
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

// checkCSRF refuses a state-changing request whose form does not carry the
// browser's CSRF token (double-submit: the token is in an HttpOnly,
// SameSite=Strict cookie and in a hidden field of every form; a third-party
// site can read neither).
func (s *Server) checkCSRF(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		switch c.Request().Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			return next(c)
		}
		// Parse the form here, so that a body over the limit is a 413
		// rather than a form without its token.
		r := c.Request()
		var perr error
		if strings.HasPrefix(r.Header.Get(echo.HeaderContentType), echo.MIMEMultipartForm) {
			perr = r.ParseMultipartForm(32 << 20)
		} else {
			perr = r.ParseForm()
		}
		var mbe *http.MaxBytesError
		if errors.As(perr, &mbe) {
			return perr
		}
		want, _ := c.Get("csrf").(string)
		got := c.FormValue("csrf")
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
		case su.Principal.ProviderID == "":
			return echo.NewHTTPError(http.StatusForbidden, "this page is for providers whose sign-up the issuer has approved")
		}
		return next(c)
	}
}

// requirePageUser lets through any signed-in user (pending providers too).
func requirePageUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if pageUser(c) == nil {
			return redirectToLogin(c)
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
		case !su.Principal.Admin:
			return echo.NewHTTPError(http.StatusForbidden, "this page is for the issuer's administrators")
		}
		return next(c)
	}
}

func redirectToLogin(c echo.Context) error {
	next := ""
	if c.Request().Method == http.MethodGet {
		next = c.Request().URL.RequestURI()
	}
	return c.Redirect(http.StatusSeeOther, "/login?next="+url.QueryEscape(next))
}

// safeNext accepts only a local path to return to after sign-in.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return ""
	}
	return next
}

// loginLimiter bounds sign-in attempts per client address: a fixed window
// of loginWindow holding at most loginBurst attempts. It complements the
// per-account lockout (keyport.MaxFailedLogins), which stops guessing one
// password; this stops one address from trying many accounts.
type loginLimiter struct {
	mu      sync.Mutex
	windows map[string]*loginWindowState
}

type loginWindowState struct {
	start time.Time
	n     int
}

const (
	loginBurst  = 20
	loginWindow = 5 * time.Minute
)

func (l *loginLimiter) allow(ip string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windows == nil || len(l.windows) > 100000 {
		l.windows = map[string]*loginWindowState{}
	}
	w := l.windows[ip]
	if w == nil || now.Sub(w.start) > loginWindow {
		w = &loginWindowState{start: now}
		l.windows[ip] = w
	}
	w.n++
	return w.n <= loginBurst
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

// meta builds the page frame for this request.
func (s *Server) meta(c echo.Context, title, active string) views.Meta {
	m := views.Meta{Title: title, Active: active}
	m.CSRF, _ = c.Get("csrf").(string)
	if su := pageUser(c); su != nil {
		m.Email = su.User.Email
		switch {
		case su.Principal.Admin:
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
