package web

import (
	"fmt"
	"io"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// sandboxRoutes registers the provider sandbox's REST API (README,
// "Provider sandbox") when the server has a sandbox: the caller is
// authenticated by production (the same API token), everything else is the
// sandbox service's. Every answer says "sandbox": true. Its receipt key,
// which signs sandbox key packages and webhooks, is at
// /sandbox/.well-known/jwks.json.
func (s *Server) sandboxRoutes(api *echo.Group) {
	sb := api.Group("/sandbox", s.requireSandbox)
	sb.GET("/modules", s.sandboxModules)
	sb.GET("/modules/:eid/fault", s.getSandboxFault)
	sb.PUT("/modules/:eid/fault", s.putSandboxFault)
	sb.POST("/claims", s.postSandboxClaim)
	sb.GET("/domains", s.sandboxDomains)
	sb.GET("/domains/:eid/:aid/key-package", s.sandboxKeyPackage)
	sb.POST("/domains/:eid/:aid/scripts", s.postSandboxScript)
	sb.POST("/domains/:eid/:aid/release", s.postSandboxLifecycle("release"))
	sb.POST("/domains/:eid/:aid/lock", s.postSandboxLifecycle("lock"))
	sb.POST("/domains/:eid/:aid/unlock", s.postSandboxLifecycle("unlock"))
	sb.GET("/jobs", s.sandboxJobs)
	sb.GET("/jobs/:id", s.getSandboxJob)
}

// sandboxJWKS is mounted beside the production JWKS, outside the API.
func (s *Server) sandboxJWKS(c echo.Context) error {
	if s.opts.Sandbox == nil {
		return keyport.ErrNotFound
	}
	set, err := s.opts.Sandbox.Box.JWKS(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, set)
}

func (s *Server) requireSandbox(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if s.opts.Sandbox == nil {
			return fmt.Errorf("%w: this server runs no sandbox (keyport serve --sandbox)", keyport.ErrNotFound)
		}
		return next(c)
	}
}

// sandboxJob is a sandbox job as the API shows it.
func sandboxJob(j *keyport.Job) keyport.JobView {
	v := j.View()
	v.Sandbox = true
	return v
}

func (s *Server) sandboxModules(c echo.Context) error {
	ms, err := s.opts.Sandbox.ListModules(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	if ms == nil {
		ms = []keyport.SandboxModule{}
	}
	return c.JSON(http.StatusOK, map[string]any{"modules": ms, "sandbox": true})
}

func (s *Server) getSandboxFault(c echo.Context) error {
	eid, err := pathEID(c)
	if err != nil {
		return err
	}
	ms, err := s.opts.Sandbox.ListModules(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.EID == eid {
			return c.JSON(http.StatusOK, map[string]any{"eid": eid, "fault": m.Fault, "sandbox": true})
		}
	}
	return keyport.ErrNotFound
}

// putSandboxFault sets a module's fault: {"fault":"sw","command":3,"sw":"6A88"}
// (keyport.ParseFault); {"fault":"none"} clears it.
func (s *Server) putSandboxFault(c echo.Context) error {
	eid, err := pathEID(c)
	if err != nil {
		return err
	}
	if ct := c.Request().Header.Get(echo.HeaderContentType); ct != echo.MIMEApplicationJSON && ct != echo.MIMEApplicationJSONCharsetUTF8 {
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the body as application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, 4096))
	if err != nil {
		return err
	}
	f, err := keyport.ParseFault(body)
	if err != nil {
		return err
	}
	if err := s.opts.Sandbox.SetFault(c.Request().Context(), principal(c), eid, f); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"eid": eid, "fault": f, "sandbox": true})
}

func (s *Server) postSandboxClaim(c echo.Context) error {
	if principal(c).ProviderID == "" {
		return keyport.ErrForbidden
	}
	req, err := readClaimRequest(c)
	if err != nil {
		return err
	}
	claim, created, err := s.opts.Sandbox.Claim(c.Request().Context(), principal(c), req)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if !created {
		status = http.StatusOK
	}
	loc := "/api/v1/sandbox/domains/" + string(claim.EID) + "/" + string(claim.AID)
	c.Response().Header().Set("Location", loc)
	return c.JSON(status, map[string]any{"id": claim.ID, "eid": claim.EID, "aid": claim.AID, "state": keyport.Assigned,
		"wrapping_key_id": claim.WrappingKeyID, "created_at": claim.CreatedAt, "key_package": loc + "/key-package", "sandbox": true})
}

// sandboxDomain is a sandbox domain as the API shows it.
type sandboxDomain struct {
	DomainJSON
	Sandbox bool `json:"sandbox"`
}

func (s *Server) sandboxDomains(c echo.Context) error {
	p := principal(c)
	ds, err := s.opts.Sandbox.Domains(c.Request().Context(), p)
	if err != nil {
		return err
	}
	out := []sandboxDomain{}
	for _, d := range ds {
		out = append(out, sandboxDomain{domainJSON(p, d), true})
	}
	return c.JSON(http.StatusOK, map[string]any{"domains": out, "sandbox": true})
}

func (s *Server) sandboxKeyPackage(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	pkg, err := s.opts.Sandbox.KeyPackage(c.Request().Context(), principal(c), eid, aid)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="keyport-sandbox-%s-%s.jws.json"`, eid, aid))
	c.Response().Header().Set("Keyport-Sandbox", "true")
	return c.Blob(http.StatusOK, "application/jose+json", pkg)
}

func (s *Server) postSandboxScript(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	var req keyport.ScriptRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	j, err := s.opts.Sandbox.SubmitScript(c.Request().Context(), principal(c), eid, aid, req)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", "/api/v1/sandbox/jobs/"+j.Ref)
	return c.JSON(http.StatusCreated, sandboxJob(j))
}

// postSandboxLifecycle queues a sandbox domain's release, lock or unlock
// and answers as production does: 202 with the job, which changes the
// domain only when the virtual card confirms.
func (s *Server) postSandboxLifecycle(op string) echo.HandlerFunc {
	return func(c echo.Context) error {
		eid, aid, err := pathDomain(c)
		if err != nil {
			return err
		}
		j, err := s.opts.Sandbox.ChangeDomain(c.Request().Context(), principal(c), eid, aid, keyport.CardChange(op))
		if err != nil && j == nil {
			return err
		}
		c.Response().Header().Set("Location", "/api/v1/sandbox/jobs/"+j.Ref)
		return c.JSON(http.StatusAccepted, sandboxJob(j))
	}
}

func (s *Server) sandboxJobs(c echo.Context) error {
	jobs, err := s.opts.Sandbox.ListJobs(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	out := []keyport.JobView{}
	for i := range jobs {
		out = append(out, sandboxJob(&jobs[i]))
	}
	return c.JSON(http.StatusOK, map[string]any{"jobs": out, "sandbox": true})
}

func (s *Server) getSandboxJob(c echo.Context) error {
	j, err := s.opts.Sandbox.GetJob(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, sandboxJob(j))
}
