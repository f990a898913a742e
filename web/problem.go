package web

import (
	"context"
	"errors"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// Problem is an RFC 9457 problem details object. Type is stable: clients
// switch on it, never on Title or Detail.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Field names the input field at fault, when there is one.
	Field string `json:"field,omitempty"`
	// Lines lists the bad lines of a rejected import file.
	Lines []ProblemLine `json:"lines,omitempty"`
	// RequestID lets an operator find the log line of an internal error.
	RequestID string `json:"request_id,omitempty"`
}

// ProblemLine is one bad line of an import file.
type ProblemLine struct {
	Line   int    `json:"line"`
	Detail string `json:"detail"`
}

const problemPrefix = "urn:keyport:problem:"

// problemFor maps an error to the problem a client sees. It is the one place
// where errors become HTTP statuses (STYLE.md: one error-to-HTTP mapping).
func problemFor(err error) Problem {
	var he *echo.HTTPError
	var inv *keyport.InvalidError
	var imp *keyport.ImportErrors
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, new(rejectedCampaign)):
		// A campaign's input (web/campaigns.go): 422, nothing stored.
		var inv *keyport.InvalidError
		p := Problem{Type: problemPrefix + "invalid-campaign", Title: "Campaign rejected", Status: http.StatusUnprocessableEntity, Detail: err.Error()}
		if errors.As(err, &inv) {
			p.Field = inv.Field
		}
		return p
	case errors.As(err, &imp):
		p := Problem{Type: problemPrefix + "invalid-import", Title: "Import file rejected", Status: http.StatusUnprocessableEntity, Detail: err.Error()}
		for _, l := range imp.Lines {
			p.Lines = append(p.Lines, ProblemLine{Line: l.Line, Detail: l.Err.Error()})
		}
		return p
	case errors.As(err, &mbe):
		return Problem{Type: problemPrefix + "too-large", Title: "Request body too large", Status: http.StatusRequestEntityTooLarge,
			Detail: "the request body is larger than this endpoint accepts"}
	case errors.Is(err, keyport.ErrBadPackage):
		return Problem{Type: problemPrefix + "bad-package", Title: "Key package rejected", Status: http.StatusUnprocessableEntity, Detail: err.Error()}
	case errors.As(err, &inv):
		return Problem{Type: problemPrefix + "invalid", Title: "Invalid input", Status: http.StatusUnprocessableEntity, Detail: inv.Error(), Field: inv.Field}
	case errors.Is(err, keyport.ErrInvalid):
		return Problem{Type: problemPrefix + "invalid", Title: "Invalid input", Status: http.StatusUnprocessableEntity, Detail: err.Error()}
	case errors.Is(err, keyport.ErrNotFound):
		return Problem{Type: problemPrefix + "not-found", Title: "Not found", Status: http.StatusNotFound,
			Detail: "no such object, or it is not yours"}
	case errors.Is(err, keyport.ErrConflict):
		return Problem{Type: problemPrefix + "conflict", Title: "Conflict", Status: http.StatusConflict, Detail: err.Error()}
	case errors.Is(err, keyport.ErrUnauthenticated):
		return Problem{Type: problemPrefix + "unauthenticated", Title: "Authentication required", Status: http.StatusUnauthorized,
			Detail: "send a valid API token as Authorization: Bearer <token>"}
	case errors.Is(err, keyport.ErrApprovalRequired):
		return Problem{Type: problemPrefix + "approval-required", Title: "Dual control", Status: http.StatusForbidden,
			Detail: "this operation needs another admin's approval: POST /api/v1/admin/approvals, have another admin approve it, then execute it"}
	case errors.Is(err, keyport.ErrOwnRequest):
		return Problem{Type: problemPrefix + "own-request", Title: "Dual control", Status: http.StatusForbidden,
			Detail: "the requester cannot approve their own request: another admin must"}
	case errors.Is(err, keyport.ErrForbidden):
		return Problem{Type: problemPrefix + "forbidden", Title: "Forbidden", Status: http.StatusForbidden, Detail: "you may not do this"}
	case errors.Is(err, keyport.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return Problem{Type: problemPrefix + "unavailable", Title: "Temporarily unavailable", Status: http.StatusServiceUnavailable,
			Detail: "the HSM or the database cannot serve now; nothing was changed, try again later"}
	case errors.As(err, &he):
		p := Problem{Type: problemPrefix + "http", Title: http.StatusText(he.Code), Status: he.Code}
		if m, ok := he.Message.(string); ok {
			p.Detail = m
		}
		switch he.Code {
		case http.StatusNotFound:
			p.Type = problemPrefix + "no-route"
		case http.StatusMethodNotAllowed:
			p.Type = problemPrefix + "method-not-allowed"
		case http.StatusRequestEntityTooLarge:
			p.Type = problemPrefix + "too-large"
		case http.StatusUnsupportedMediaType:
			p.Type = problemPrefix + "unsupported-media-type"
		case http.StatusBadRequest:
			p.Type = problemPrefix + "bad-request"
		}
		return p
	}
	return Problem{Type: problemPrefix + "internal", Title: "Internal error", Status: http.StatusInternalServerError,
		Detail: "an internal error occurred; the operator can find it by request_id"}
}

// errorHandler renders every error as problem+json and logs server faults.
// Detail of an internal error never reaches the client.
func errorHandler(log *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		p := problemFor(err)
		p.RequestID = c.Response().Header().Get(echo.HeaderXRequestID)
		if p.Status >= 500 {
			log.Error("request failed", "method", c.Request().Method, "path", c.Path(), "request_id", p.RequestID, "err", err)
		}
		if p.Status == http.StatusServiceUnavailable {
			c.Response().Header().Set("Retry-After", "5")
		}
		if p.Status == http.StatusUnauthorized {
			c.Response().Header().Set("WWW-Authenticate", `Bearer realm="keyport"`)
		}
		c.Response().Header().Set(echo.HeaderContentType, "application/problem+json")
		c.Response().WriteHeader(p.Status)
		if c.Request().Method != http.MethodHead {
			_ = jsonEncode(c.Response(), p)
		}
	}
}
