package web

import (
	"encoding/hex"
	"maps"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// Dual control over the REST API (admin tokens): the same use cases as
// the console's /admin/approvals page. The admin actor is the token's.

func (s *Server) approvalRoutes(admin *echo.Group) {
	admin.GET("/approvals", s.listApprovalsAPI)
	admin.POST("/approvals", s.postApproval)
	admin.POST("/approvals/:id/approve", s.approveAPI)
	admin.POST("/approvals/:id/execute", s.executeAPI)
	admin.POST("/approvals/:id/cancel", s.cancelAPI)
}

// approvalView is a request as the API shows it (never a released secret).
func (s *Server) approvalView(r *keyport.ApprovalRequest) map[string]any {
	params := maps.Clone(r.Params)
	if params == nil {
		params = map[string]string{}
	}
	return map[string]any{"id": r.ID, "operation": r.Action, "target": r.Target, "params": params, "reason": r.Reason,
		"requested_by": r.RequestedBy, "approvers": append([]string{}, r.Approvers...), "admins_required": r.Required,
		"state": r.StateAt(s.svc.Clock()), "error": r.Error, "created_at": r.CreatedAt, "expires_at": r.ExpiresAt}
}

func (s *Server) listApprovalsAPI(c echo.Context) error {
	list, err := s.svc.ListApprovals(c.Request().Context(), principal(c), approvalsLimit)
	if err != nil {
		return err
	}
	out := make([]map[string]any, len(list))
	for i := range list {
		out[i] = s.approvalView(&list[i])
	}
	return c.JSON(http.StatusOK, map[string]any{"approvals": out})
}

func (s *Server) postApproval(c echo.Context) error {
	var in struct {
		Operation string            `json:"operation"`
		Target    string            `json:"target"`
		Params    map[string]string `json:"params"`
		Reason    string            `json:"reason"`
	}
	if err := readJSON(c, &in); err != nil {
		return err
	}
	r, err := s.svc.RequestApproval(c.Request().Context(), principal(c), keyport.ApprovalAction(in.Operation), in.Target, in.Params, in.Reason)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, s.approvalView(r))
}

func (s *Server) approveAPI(c echo.Context) error {
	r, err := s.svc.ApproveRequest(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, s.approvalView(r))
}

func (s *Server) cancelAPI(c echo.Context) error {
	if err := s.svc.CancelApproval(c.Request().Context(), principal(c), c.Param("id")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// executeAPI runs an approved request and returns what it released, in
// this response only (Cache-Control: no-store).
func (s *Server) executeAPI(c echo.Context) error {
	res, err := s.svc.ExecuteApproval(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	out := map[string]any{"request": s.approvalView(res.Request)}
	switch {
	case res.PSK != nil:
		out["psk_hex"] = hex.EncodeToString(res.PSK)
	case res.Token != "":
		out["token"] = res.Token
	case res.Transport != nil:
		out["transport_key"] = res.Transport
	}
	return c.JSON(http.StatusOK, out)
}
