package web

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// The dual-control console (/admin/approvals): requests for the operations
// that release secrets or custody, approved by other admins and executed
// once by their requester (keyport.Service.RequestApproval and friends).

// approvalsLimit is how many requests the page lists.
const approvalsLimit = 200

func (s *Server) approvalsPage(c echo.Context) error {
	return s.renderApprovals(c, http.StatusOK, views.ApprovalForm{}, nil, "", "")
}

func (s *Server) renderApprovals(c echo.Context, status int, f views.ApprovalForm, e views.Errors, resultName, result string) error {
	ctx := c.Request().Context()
	p := principal(c)
	list, err := s.svc.ListApprovals(ctx, p, approvalsLimit)
	if err != nil {
		return err
	}
	names, err := s.providerNames(ctx)
	if err != nil {
		return err
	}
	now := s.svc.Clock()
	rows := make([]views.ApprovalRow, len(list))
	for i, r := range list {
		rows[i] = views.ApprovalRow{Request: r, State: r.StateAt(now), Mine: r.RequestedBy == p.Identity(),
			Approved: slices.Contains(r.Approvers, p.Identity())}
		if r.Action == keyport.ActionProviderApprove {
			rows[i].TargetName = names[r.Target]
		}
	}
	if result != "" {
		// A released secret: never cached, never kept by the browser.
		c.Response().Header().Set("Cache-Control", "no-store")
	}
	return render(c, status, views.ApprovalsPage(s.meta(c, "Dual control", "/admin/approvals"), s.svc.DualControl, rows, f, e, resultName, result))
}

func (s *Server) requestApproval(c echo.Context) error {
	f := views.ApprovalForm{Action: c.FormValue("action"), Target: c.FormValue("target"), Reason: c.FormValue("reason"),
		ManufacturerPEM: c.FormValue("manufacturer_pem"), AIDPrefix: c.FormValue("aid_prefix")}
	var params map[string]string
	if keyport.ApprovalAction(f.Action) == keyport.ActionTransportExport {
		params = map[string]string{"manufacturer_pem": f.ManufacturerPEM, "aid_prefix": f.AIDPrefix}
	}
	r, err := s.svc.RequestApproval(c.Request().Context(), principal(c), keyport.ApprovalAction(f.Action), f.Target, params, f.Reason)
	if err != nil {
		e, ok := approvalErrors(err)
		if !ok {
			return err
		}
		return s.renderApprovals(c, http.StatusUnprocessableEntity, f, e, "", "")
	}
	s.flash(c, "good", "Request "+r.ID+" recorded; another admin approves it here, then you execute it.")
	return c.Redirect(http.StatusSeeOther, "/admin/approvals")
}

// approvalErrors turns a use case's refusal into the page's messages.
func approvalErrors(err error) (views.Errors, bool) {
	if e, ok := formErrors(err, map[string]string{"manufacturer_pem": "target"}); ok {
		return e, true
	}
	switch {
	case errors.Is(err, keyport.ErrOwnRequest):
		return views.Errors{"": "You asked for this operation: another admin must approve it."}, true
	case errors.Is(err, keyport.ErrNotFound):
		return views.Errors{"target": "No such module, provider or request."}, true
	case errors.Is(err, keyport.ErrForbidden):
		return views.Errors{"": "Only the admin who asked for an operation executes or cancels it."}, true
	}
	return nil, false
}

func (s *Server) approveRequest(c echo.Context) error {
	_, err := s.svc.ApproveRequest(c.Request().Context(), principal(c), c.Param("id"))
	return s.afterApprovalStep(c, err, "Approved.")
}

func (s *Server) cancelApproval(c echo.Context) error {
	err := s.svc.CancelApproval(c.Request().Context(), principal(c), c.Param("id"))
	return s.afterApprovalStep(c, err, "Request cancelled.")
}

func (s *Server) afterApprovalStep(c echo.Context, err error, done string) error {
	if err != nil {
		e, ok := approvalErrors(err)
		if !ok {
			return err
		}
		return s.renderApprovals(c, http.StatusConflict, views.ApprovalForm{}, e, "", "")
	}
	s.flash(c, "good", done)
	return c.Redirect(http.StatusSeeOther, "/admin/approvals")
}

// executeApproval runs an approved request and shows what it released,
// once, in this response only.
func (s *Server) executeApproval(c echo.Context) error {
	res, err := s.svc.ExecuteApproval(c.Request().Context(), principal(c), c.Param("id"))
	if err != nil {
		return s.afterApprovalStep(c, err, "")
	}
	name, value := approvalResultText(res)
	return s.renderApprovals(c, http.StatusOK, views.ApprovalForm{}, nil, name, value)
}

// approvalResultText is what an executed request released, as text.
func approvalResultText(res *keyport.ApprovalResult) (name, value string) {
	switch {
	case res.PSK != nil:
		return "TLS-PSK of module " + res.Request.Target + " (hex, for keyport agent --psk-file)", hex.EncodeToString(res.PSK)
	case res.Token != "":
		return "Admin API token " + res.Request.Target, res.Token
	case res.Transport != nil:
		b, _ := json.MarshalIndent(res.Transport, "", "  ")
		return "Transport key of batch " + res.Request.Target + " for the manufacturer (wrapped to their key)", string(b)
	}
	return "", ""
}
