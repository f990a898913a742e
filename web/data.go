package web

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// dataRoutes registers the provider's data scripts (flow 9).
func (s *Server) dataRoutes(api *echo.Group) {
	api.POST("/domains/:eid/:aid/data-scripts", s.postDataScript)
}

// postDataScript accepts {"apdus":[hex…]}: a precomputed SCP03 session at
// level 33 under the provider's own keys (keyport sp data put|get) that
// stores or reads its data objects. keyport sees only ciphertext; the job
// result (GET /api/v1/jobs/{id}) carries the card's answers as they came.
func (s *Server) postDataScript(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	var req keyport.DataScriptRequest
	if err := readJSON(c, &req); err != nil {
		return err
	}
	j, err := s.svc.SubmitDataScript(c.Request().Context(), principal(c), eid, aid, req)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", "/api/v1/jobs/"+j.Ref)
	return c.JSON(http.StatusCreated, j.View())
}
