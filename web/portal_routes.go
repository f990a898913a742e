package web

import (
	"errors"
	"io/fs"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/assets"
	"github.com/keyport/keyport/web/views"
)

// pageCSP is the Content-Security-Policy of every portal page: nothing
// inline may run, nothing from elsewhere loads, forms post only to keyport,
// and no site may frame it (clickjacking).
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// isPagePath reports whether path is served to browsers as HTML (or an
// asset of it) rather than by the REST API.
func isPagePath(path string) bool {
	return !strings.HasPrefix(path, "/api/") && path != "/healthz" && path != "/readyz" && !strings.HasPrefix(path, "/.well-known/")
}

// pageRoutes registers the portal: account pages, the provider's pages
// (/portal), the issuer admin console (/admin) and static assets.
func (s *Server) pageRoutes(e *echo.Echo) {
	static, _ := fs.Sub(assets.FS, ".")
	e.GET("/assets/*", echo.WrapHandler(http.StripPrefix("/assets/", assetHandler(static))))

	// Session, then CSRF (never parsing a multipart body), then the body
	// limit; a multipart body is parsed only by a handler, behind its
	// route's access check.
	pg := e.Group("", s.loadSession, s.checkCSRF, limitPageBody)
	pg.GET("/", s.home)
	pg.GET("/signup", s.signUpForm)
	pg.POST("/signup", s.signUp)
	pg.GET("/signup/done", s.signUpDone)
	pg.GET("/verify", s.verifyForm)
	pg.POST("/verify", s.verify)
	pg.GET("/login", s.loginForm)
	pg.POST("/login", s.login)
	pg.POST("/login/passkey", s.passkeyLogin)
	pg.POST("/logout", s.logout)
	pg.GET("/reset", s.resetForm)
	pg.POST("/reset", s.resetRequest)
	pg.GET("/reset/confirm", s.resetConfirmForm)
	pg.POST("/reset/confirm", s.resetConfirm)

	pg.GET("/portal", s.dashboard, requirePageUser)
	pr := pg.Group("/portal", requirePageProvider)
	pr.GET("/keys", s.keysPage)
	pr.POST("/keys", s.registerKey)
	pr.GET("/modules", s.lookupPage)
	pr.GET("/claim", s.claimForm)
	pr.POST("/claim", s.claim)
	pr.GET("/domains/:eid/:aid", s.domainPage)
	pr.GET("/domains/:eid/:aid/key-package", s.getKeyPackage)
	pr.POST("/domains/:eid/:aid/script", s.submitScript)
	s.accessRulePages(pr)
	pr.GET("/jobs/:id", s.jobPage)
	pr.GET("/jobs/:id/events", s.jobEvents)
	pr.POST("/jobs/:id/cancel", s.cancelJobPage(""))
	pr.GET("/tokens", s.tokensPage)
	pr.POST("/tokens", s.createToken)
	pr.POST("/tokens/:id/revoke", s.revokeToken)
	pr.GET("/webhook", s.webhookPage)
	pr.POST("/webhook", s.setWebhook)
	pr.GET("/audit", s.myAuditPage)
	s.securityRoutes(pr.Group("/security"))
	s.sandboxPageRoutes(pr, "/portal/sandbox")

	ad := pg.Group("/admin", requirePageAdmin)
	ad.GET("", s.adminDashboard)
	ad.GET("/batches", s.batchesPage)
	ad.POST("/batches", s.createBatch)
	ad.POST("/batches/:name/import", s.importBatch)
	ad.GET("/modules", s.adminModulesPage)
	ad.GET("/providers", s.providersPage)
	ad.POST("/providers/:id/approve", s.setProviderStatus(keyport.ProviderApproved))
	ad.POST("/providers/:id/suspend", s.setProviderStatus(keyport.ProviderSuspended))
	ad.GET("/audit", s.adminAuditPage)
	ad.POST("/audit/verify", s.adminVerifyAudit)
	ad.GET("/jobs", s.adminJobsPage)
	ad.POST("/jobs/:id/cancel", s.cancelJobPage("/admin/jobs"))
	ad.POST("/jobs/:id/retry", s.retryJobPage)
	ad.GET("/tokens", s.adminTokensPage)
	ad.POST("/tokens", s.createAdminToken)
	ad.POST("/tokens/:id/revoke", s.revokeAdminToken)
	ad.GET("/users", s.adminUsersPage)
	ad.POST("/users/disable", s.setAdminUserDisabled(true))
	ad.POST("/users/enable", s.setAdminUserDisabled(false))
	ad.GET("/outbox", s.outboxPage)
	ad.GET("/hsm", s.hsmPage)
	ad.GET("/approvals", s.approvalsPage)
	ad.POST("/approvals", s.requestApproval)
	ad.POST("/approvals/:id/approve", s.approveRequest)
	ad.POST("/approvals/:id/execute", s.executeApproval)
	ad.POST("/approvals/:id/cancel", s.cancelApproval)
	s.securityRoutes(ad.Group("/security"))
	s.sandboxPageRoutes(ad, "/admin/sandbox")
	s.lifecyclePages(pr, ad)
	s.campaignPages(pr, ad)
}

// securityRoutes are the sign-in security pages of a provider's user
// (/portal/security) and of an admin (/admin/security).
func (s *Server) securityRoutes(g *echo.Group) {
	g.GET("", s.securityPage)
	g.POST("/totp", s.totpBegin)
	g.POST("/totp/confirm", s.totpConfirm)
	g.POST("/totp/disable", s.totpDisable)
	g.GET("/password", s.passwordPage)
	g.POST("/password", s.changePassword)
	g.POST("/passkeys/begin", s.passkeyBegin)
	g.POST("/passkeys", s.passkeyFinish)
	g.GET("/passkeys/:id/remove", s.passkeyRemovePage)
	g.POST("/passkeys/:id/remove", s.passkeyRemove)
}

// maxPageBody bounds a form post (a PEM key, a script); only the batch
// import takes more (up to maxImportBody, spooled to disk).
const maxPageBody = 1 << 20

func limitPageBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		limit := int64(maxPageBody)
		if strings.HasSuffix(c.Path(), "/import") {
			limit = maxImportBody
		}
		c.Request().Body = http.MaxBytesReader(c.Response(), c.Request().Body, limit)
		return next(c)
	}
}

// assetHandler serves embedded files with a day of caching (they change
// only with the binary).
func assetHandler(files fs.FS) http.Handler {
	h := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Cache-Control", "public, max-age=86400")
		h.ServeHTTP(w, r)
	})
}

// pageErrorHandler renders errors of page routes as an HTML page (status,
// title and detail from the one mapping, problemFor), and leaves API errors
// to the problem+json handler.
func (s *Server) pageErrorHandler(api echo.HTTPErrorHandler) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed || !isPagePath(c.Request().URL.Path) {
			api(err, c)
			return
		}
		p := problemFor(err)
		p.RequestID = c.Response().Header().Get(echo.HeaderXRequestID)
		if p.Status >= 500 {
			s.log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "request_id", p.RequestID, "err", err)
		}
		detail := p.Detail
		var he *echo.HTTPError
		switch {
		case p.Status == http.StatusNotFound:
			detail = "There is no such page, or what it shows is not yours."
		case errors.As(err, &he) && he.Code == http.StatusForbidden:
		case p.Status == http.StatusForbidden:
			detail = "You may not do this."
		case p.Status >= 500:
			detail += " (" + p.RequestID + ")"
		}
		if c.Request().Method == http.MethodHead {
			c.Response().WriteHeader(p.Status)
			return
		}
		_ = render(c, p.Status, views.ErrorPage(s.meta(c, p.Title, ""), p.Status, p.Title, detail))
	}
}
