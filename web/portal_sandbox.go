package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// sandboxPageRoutes registers the sandbox page on the provider's portal
// (base /portal/sandbox) or the issuer's console (/admin/sandbox), through
// the same use cases as /api/v1/sandbox.
func (s *Server) sandboxPageRoutes(g *echo.Group, base string) {
	sb := g.Group("/sandbox", s.requireSandbox)
	sb.GET("", s.sandboxPage(base))
	sb.POST("/modules/:eid/fault", s.setSandboxFaultPage(base))
	if strings.HasPrefix(base, "/portal") {
		sb.POST("/claim", s.sandboxClaimPage(base))
		sb.GET("/domains/:eid/:aid/key-package", s.sandboxKeyPackage)
		sb.POST("/domains/:eid/:aid/release", s.sandboxCardChangePage(base, "release"))
		sb.POST("/domains/:eid/:aid/lock", s.sandboxCardChangePage(base, "lock"))
		sb.POST("/domains/:eid/:aid/unlock", s.sandboxCardChangePage(base, "unlock"))
	}
}

func (s *Server) renderSandbox(c echo.Context, base string, status int, e views.Errors) error {
	ctx, p := c.Request().Context(), principal(c)
	v := views.SandboxView{Base: base, Admin: p.Admin}
	var err error
	if v.Modules, err = s.opts.Sandbox.ListModules(ctx, p); err != nil {
		return err
	}
	if !p.Admin {
		if v.Domains, err = s.opts.Sandbox.Domains(ctx, p); err != nil {
			return err
		}
		if v.Keys, err = s.svc.ListWrappingKeys(ctx, p); err != nil {
			return err
		}
	}
	jobs, err := s.opts.Sandbox.ListJobs(ctx, p)
	if err != nil {
		return err
	}
	for i := len(jobs) - 1; i >= 0; i-- { // newest first
		v.Jobs = append(v.Jobs, sandboxJob(&jobs[i]))
	}
	return render(c, status, views.SandboxPage(s.meta(c, "Sandbox", base), v, e))
}

func (s *Server) sandboxPage(base string) echo.HandlerFunc {
	return func(c echo.Context) error { return s.renderSandbox(c, base, http.StatusOK, nil) }
}

// faultFromForm turns the page's form into a fault spec and reads it with
// the API's parser: empty fields are left out.
func faultFromForm(c echo.Context) (keyport.Fault, error) {
	spec := map[string]any{"fault": c.FormValue("fault")}
	for _, name := range []string{"command", "delay_ms", "drift"} {
		if v := strings.TrimSpace(c.FormValue(name)); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return keyport.Fault{}, keyport.Invalid(name, "a whole number")
			}
			spec[name] = n
		}
	}
	if v := strings.TrimSpace(c.FormValue("sw")); v != "" {
		spec["sw"] = v
	}
	b, _ := json.Marshal(spec)
	return keyport.ParseFault(b)
}

func (s *Server) setSandboxFaultPage(base string) echo.HandlerFunc {
	return func(c echo.Context) error {
		eid, err := pathEID(c)
		if err != nil {
			return err
		}
		f, err := faultFromForm(c)
		if err == nil {
			err = s.opts.Sandbox.SetFault(c.Request().Context(), principal(c), eid, f)
		}
		if e, ok := formErrors(err, nil); ok {
			for k, msg := range e {
				e[k] = fmt.Sprintf("Module %s: %s %s", eid, k, msg)
			}
			return s.renderSandbox(c, base, http.StatusUnprocessableEntity, views.Errors{"": e[firstKey(e)]})
		}
		if refused(err) {
			s.flash(c, "bad", "Not done: "+refusal(err)+".")
			return c.Redirect(http.StatusSeeOther, base)
		}
		if err != nil {
			return err
		}
		s.flash(c, "good", fmt.Sprintf("Module %s: %s.", eid, f))
		return c.Redirect(http.StatusSeeOther, base)
	}
}

// refused reports a refusal a page explains in a notice rather than an
// error page: the caller may not do this (yet), e.g. set the fault of a
// sandbox module it holds no domain of. A conflict (another provider's
// module) is already one of formErrors' and comes back with the page.
func refused(err error) bool {
	return errors.Is(err, keyport.ErrForbidden)
}

func firstKey(e views.Errors) string {
	for k := range e {
		return k
	}
	return ""
}

func (s *Server) sandboxClaimPage(base string) echo.HandlerFunc {
	return func(c echo.Context) error {
		eid, err := keyport.ParseEID(c.FormValue("eid"))
		if err != nil {
			return s.renderSandbox(c, base, http.StatusUnprocessableEntity, views.Errors{"": "The EID: " + err.Error()})
		}
		claim, _, err := s.opts.Sandbox.Claim(c.Request().Context(), principal(c),
			keyport.ClaimRequest{EID: eid, WrappingKeyID: c.FormValue("wrapping_key_id")})
		if e, ok := formErrors(err, nil); ok {
			return s.renderSandbox(c, base, http.StatusUnprocessableEntity, views.Errors{"": e[firstKey(e)]})
		}
		if refused(err) {
			s.flash(c, "bad", "Not done: "+refusal(err)+".")
			return c.Redirect(http.StatusSeeOther, base)
		}
		if err != nil {
			return err
		}
		s.flash(c, "good", fmt.Sprintf("Sandbox domain %s on %s claimed: download its key package below.", claim.AID, claim.EID))
		return c.Redirect(http.StatusSeeOther, base)
	}
}

// sandboxCardChangePage queues the release, lock or unlock (op) of one of
// the provider's sandbox domains from DomainLifeCycle's forms, through the
// use case the API's /api/v1/sandbox/…/release, …/lock and …/unlock use; a
// release needs the form's confirm box, as in production.
func (s *Server) sandboxCardChangePage(base, op string) echo.HandlerFunc {
	return func(c echo.Context) error {
		eid, aid, err := pathDomain(c)
		if err != nil {
			return err
		}
		if s.releaseUnconfirmed(c, op) {
			return c.Redirect(http.StatusSeeOther, base)
		}
		j, err := s.opts.Sandbox.ChangeDomain(c.Request().Context(), principal(c), eid, aid, keyport.CardChange(op))
		if j == nil {
			if e, ok := formErrors(err, nil); ok {
				return s.renderSandbox(c, base, http.StatusUnprocessableEntity, views.Errors{"": e[firstKey(e)]})
			}
			if refused(err) {
				s.flash(c, "bad", "Not done: "+refusal(err)+".")
				return c.Redirect(http.StatusSeeOther, base)
			}
			return err
		}
		then := map[string]string{
			"release": "it is UNASSIGNED once the module has proved its fresh first keys",
			"lock":    "it is LOCKED once the module confirms",
			"unlock":  "it is back to its state before the lock once the module confirms",
		}[op]
		s.flash(c, "good", fmt.Sprintf("%s of sandbox domain %s on %s queued (job %s): %s.", strings.ToUpper(op[:1])+op[1:], aid, eid, j.Ref, then))
		return c.Redirect(http.StatusSeeOther, base)
	}
}
