package web

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// accessRuleRoutes registers the access-rule API (DESIGN.md flow 9): a
// provider names the apps that may reach its PERSONALIZED domain; keyport
// stores each rule in the module's ARA-M as an issuer job. Admins may list
// a domain's rules and retry a failed issuer job.
func (s *Server) accessRuleRoutes(api, admin *echo.Group) {
	api.POST("/domains/:eid/:aid/access-rules", s.postAccessRule)
	api.GET("/domains/:eid/:aid/access-rules", s.listAccessRules)
	api.DELETE("/domains/:eid/:aid/access-rules/:id", s.deleteAccessRule)
	admin.POST("/jobs/:id/retry", s.retryJob)
}

// AccessRuleResult is a rule with the job that changes it on the card.
type AccessRuleResult struct {
	Rule keyport.AccessRuleView `json:"rule"`
	Job  *keyport.JobView       `json:"job,omitempty"`
}

func (s *Server) postAccessRule(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	var req keyport.AccessRuleRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	rule, j, err := s.svc.RequestAccessRule(c.Request().Context(), principal(c), eid, aid, req)
	if err != nil {
		return err
	}
	v := j.View()
	c.Response().Header().Set("Location", "/api/v1/domains/"+string(eid)+"/"+string(aid)+"/access-rules")
	return c.JSON(http.StatusAccepted, AccessRuleResult{Rule: rule.View(), Job: &v})
}

func (s *Server) listAccessRules(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	rules, err := s.svc.ListAccessRules(c.Request().Context(), principal(c), eid, aid)
	if err != nil {
		return err
	}
	out := make([]keyport.AccessRuleView, len(rules))
	for i := range rules {
		out[i] = rules[i].View()
	}
	return c.JSON(http.StatusOK, map[string]any{"rules": out})
}

func (s *Server) deleteAccessRule(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	rule, j, err := s.svc.DeleteAccessRule(c.Request().Context(), principal(c), eid, aid, c.Param("id"))
	if err != nil {
		return err
	}
	res := AccessRuleResult{Rule: rule.View()}
	if j != nil {
		v := j.View()
		res.Job = &v
	}
	return c.JSON(http.StatusAccepted, res)
}

func (s *Server) retryJob(c echo.Context) error {
	j, err := s.svc.RetryIssuerJob(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, j.View())
}
