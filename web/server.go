// Package web is keyport's HTTP edge: the REST API and the portal pages
// (templ views in web/views, static files from assets/). Handlers parse and
// check input, call keyport.Service, and render JSON or HTML; every error
// becomes problem+json (API) or an error page (browser) in errorHandler.
package web

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/keyport/keyport"
)

// Limits on request bodies.
const (
	maxJSONBody   = 64 << 10
	maxImportBody = 8 << 30
)

// Timeouts of the HTTP server (cmd/keyport sets them on http.Server): a
// request's headers, body and response must each arrive in time; the
// routes that need longer (imports, the job event stream) extend their own
// deadlines after their access check.
const (
	ReadHeaderTimeout = 10 * time.Second
	ReadTimeout       = time.Minute
	WriteTimeout      = 2 * time.Minute
	IdleTimeout       = 2 * time.Minute
	MaxHeaderBytes    = 64 << 10
	// importDeadline is how long an import may take to upload and store.
	importDeadline = time.Hour
)

// extendDeadlines gives the request's body and response d from now.
func extendDeadlines(c echo.Context, d time.Duration) {
	rc := http.NewResponseController(c.Response())
	at := time.Now().Add(d)
	_ = rc.SetReadDeadline(at) // ErrNotSupported outside net/http's server
	_ = rc.SetWriteDeadline(at)
}

// Options configures the HTTP server.
type Options struct {
	Log *slog.Logger
	// SpoolDir is where import bodies are spooled (two passes need a
	// rereadable file); empty means the system temp dir.
	SpoolDir string
	// PublicURL is the portal's address as users reach it, for links in
	// e-mail (e.g. https://keyport.example.com); empty: taken from the request.
	PublicURL string
	// InsecureCookies drops the Secure flag (and __Host- prefix) of the
	// portal's cookies, for plain-HTTP development on 127.0.0.1 only; the
	// command refuses it for any other address.
	InsecureCookies bool
	// HSMStatus, if set, lists the token's keys on the admin HSM page.
	HSMStatus HSMStatusFunc
	// AdminListener, if set, reports whether the card-link admin server
	// accepts connections (nil) or not (why): /healthz and /readyz answer
	// 503 while it does not. Leave it nil when no admin server runs.
	AdminListener func() error
	// Ready lists /readyz's checks besides the HSM's and the admin
	// listener's (readiness.go): e.g. the database and its schema version.
	Ready []ReadyCheck
	// Demo marks everything the server serves as demo data (keyport demo):
	// a banner on every portal page and "demo": true in the API's module
	// and domain answers.
	Demo bool
	// Sandbox, if set, serves the provider sandbox (sandbox.go) under
	// /api/v1/sandbox and /portal/sandbox; nil: those routes are 404.
	Sandbox *keyport.Sandbox
}

// Server is the HTTP edge over a Service.
type Server struct {
	svc    *keyport.Service
	opts   Options
	log    *slog.Logger
	logins *rateLimiter // sign-in, per client address
	mails  *rateLimiter // sign-up, reset, verify: per client network and e-mail
	// rp is the WebAuthn relying party, from PublicURL; rpErr says why
	// there is none (passkeys are then refused, never weakened).
	rp    keyport.PasskeyRP
	rpErr error
	// uploads counts each caller's campaign uploads in flight.
	uploads uploadSlots
}

// New returns the echo instance serving keyport's REST API.
func New(svc *keyport.Service, opts Options) *echo.Echo {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{svc: svc, opts: opts, log: opts.Log, logins: newRateLimiter("sign-in", loginBurst, loginWindow, opts.Log),
		mails: newRateLimiter("mail", mailBurst, mailWindow, opts.Log)}
	if opts.PublicURL == "" {
		s.rpErr = errors.New("the portal has no configured public URL")
	} else if s.rp, s.rpErr = keyport.PasskeyRPFromURL(opts.PublicURL); s.rpErr != nil {
		opts.Log.Warn("passkeys unavailable", "err", s.rpErr)
	}
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.pageErrorHandler(errorHandler(opts.Log))
	e.Use(middleware.RequestID())
	e.Use(middleware.Recover())
	e.Use(s.accessLog)
	e.Use(s.securityHeaders)

	e.GET("/healthz", s.health)
	e.GET("/readyz", s.ready)
	e.GET("/.well-known/jwks.json", s.jwks)
	e.GET("/sandbox/.well-known/jwks.json", s.sandboxJWKS)

	api := e.Group("/api/v1", s.requireToken)
	api.GET("/modules/:eid", s.getModule)
	api.POST("/wrapping-keys", s.postWrappingKey)
	// A claim checks its token where it is written (keyport.AuthenticateClaim).
	e.POST("/api/v1/claims", s.postClaim, s.tokenAuth(s.svc.AuthenticateClaim))
	api.GET("/domains", s.listDomains)
	api.GET("/domains/:eid/:aid", s.getDomain)
	api.GET("/domains/:eid/:aid/key-package", s.getKeyPackage)

	admin := api.Group("/admin", requireAdmin)
	admin.POST("/batches", s.postBatch)
	admin.POST("/batches/:name/modules", s.postModules)
	admin.GET("/audit", s.listAudit)
	admin.POST("/audit/verify", s.verifyAudit)
	s.jobRoutes(api, admin)
	s.dataRoutes(api)
	s.lifecycleRoutes(api, admin)
	s.accessRuleRoutes(api, admin)
	s.approvalRoutes(admin)
	s.msisdnRoutes(admin)
	s.sandboxRoutes(api)
	s.campaignRoutes(api, admin)

	e.GET("/api/v1/openapi.json", serveOpenAPI)
	s.portalAPIRoutes(api)
	s.pageRoutes(e)
	return e
}

func (s *Server) accessLog(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		status := c.Response().Status
		if err != nil {
			status = problemFor(err).Status
		}
		// Paths and statuses only: never bodies, headers or tokens.
		s.log.Info("http", "method", c.Request().Method, "route", c.Path(), "status", status,
			"ms", float64(time.Since(start).Microseconds())/1000, "request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		return err
	}
}

// hsts makes browsers use HTTPS only for a year, subdomains included; it is
// left out in plain-HTTP development (InsecureCookies).
const hsts = "max-age=31536000; includeSubDomains"

func (s *Server) securityHeaders(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		h := c.Response().Header()
		if !s.opts.InsecureCookies {
			h.Set("Strict-Transport-Security", hsts)
		}
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		h.Set("Referrer-Policy", "no-referrer")
		if isPagePath(c.Request().URL.Path) {
			// Pages: own scripts, styles and images only, no inline script,
			// forms post only here, never framed.
			h.Set("Content-Security-Policy", pageCSP)
			h.Set("X-Frame-Options", "DENY")
		} else {
			h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
		}
		return next(c)
	}
}

type principalKey struct{}

func (s *Server) requireToken(next echo.HandlerFunc) echo.HandlerFunc {
	return s.tokenAuth(s.svc.Authenticate)(next)
}

// tokenAuth authenticates the request's bearer token with authenticate.
func (s *Server) tokenAuth(authenticate func(context.Context, string) (keyport.Principal, error)) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			auth := c.Request().Header.Get("Authorization")
			token, ok := strings.CutPrefix(auth, "Bearer ")
			if !ok {
				return keyport.ErrUnauthenticated
			}
			token = strings.TrimSpace(token)
			p, err := authenticate(c.Request().Context(), token)
			if err != nil {
				return err
			}
			// Again, it is the token as it is now (not a claim's recent
			// authentication).
			setPrincipal(c, p, func(ctx context.Context) (keyport.Principal, error) { return s.svc.Authenticate(ctx, token) })
			return next(c)
		}
	}
}

func requireAdmin(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !principal(c).Admin {
			return keyport.ErrForbidden
		}
		return next(c)
	}
}

func principal(c echo.Context) keyport.Principal {
	p, _ := c.Get("principal").(keyport.Principal)
	return p
}

func jsonEncode(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// readJSON decodes a JSON request body strictly: the right content type, a
// size limit, no unknown fields, one value.
func readJSON(c echo.Context, v any) error {
	mt, _, _ := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	if mt != echo.MIMEApplicationJSON {
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the body as application/json")
	}
	body := http.MaxBytesReader(c.Response(), c.Request().Body, maxJSONBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errorsAs(err, &mbe) {
			return err
		}
		return keyport.Invalid("", "the body is not the expected JSON object: %s", keyport.DescribeJSONError(err))
	}
	if dec.More() {
		return keyport.Invalid("", "the body holds more than one JSON value")
	}
	return nil
}

// health is the liveness check: cheap, touching no dependency. It fails
// only when the card-link admin server has stopped accepting (it does not
// come back without a restart, which is what liveness asks for).
func (s *Server) health(c echo.Context) error {
	body := map[string]string{"status": "ok"}
	if s.opts.AdminListener != nil {
		if err := s.opts.AdminListener(); err != nil {
			s.log.Warn("health: card-link admin listener not accepting", "err", err)
			c.Response().Header().Set("Retry-After", "10")
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "admin_listener": "not accepting"})
		}
		body["admin_listener"] = "accepting"
	}
	return c.JSON(http.StatusOK, body)
}

// ready is the readiness check, for a load balancer deciding whether to send
// traffic here: readiness.go.
func (s *Server) ready(c echo.Context) error {
	return s.readiness(c)
}

func (s *Server) jwks(c echo.Context) error {
	set, err := s.svc.JWKS(c.Request().Context())
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.JSON(http.StatusOK, set)
}
