package web

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// ReadyCheck is one condition of /readyz: Check returns nil while it holds.
// Name is a fixed word (it names the check in the response body); the
// error goes to the log only.
type ReadyCheck struct {
	Name  string
	Check func(ctx context.Context) error
}

// readyTimeout bounds each check of /readyz.
const readyTimeout = 2 * time.Second

// readyBody is /readyz's answer: every check "ok" or "failing", and the
// failing ones by name.
type readyBody struct {
	Status  string            `json:"status"`
	Checks  map[string]string `json:"checks"`
	Failing []string          `json:"failing,omitempty"`
}

// readyChecks are the checks in the order they run: the HSM, the admin
// listener when one runs, then Options.Ready.
func (s *Server) readyChecks() []ReadyCheck {
	checks := []ReadyCheck{{Name: "hsm", Check: s.svc.Custody.Health}}
	if s.opts.AdminListener != nil {
		al := s.opts.AdminListener
		checks = append(checks, ReadyCheck{Name: "admin_listener", Check: func(context.Context) error { return al() }})
	}
	return append(checks, s.opts.Ready...)
}

// readiness runs every check, each bounded by readyTimeout: 200 when all
// pass, else 503 naming the failing ones.
func (s *Server) readiness(c echo.Context) error {
	body := readyBody{Status: "ok", Checks: map[string]string{}}
	for _, rc := range s.readyChecks() {
		ctx, cancel := context.WithTimeout(c.Request().Context(), readyTimeout)
		err := rc.Check(ctx)
		cancel()
		if err != nil {
			s.log.Warn("readiness check failing", "check", rc.Name, "err", err)
			body.Checks[rc.Name] = "failing"
			body.Failing = append(body.Failing, rc.Name)
			continue
		}
		body.Checks[rc.Name] = "ok"
	}
	if len(body.Failing) > 0 {
		body.Status = "unavailable"
		c.Response().Header().Set("Retry-After", "10")
		return c.JSON(http.StatusServiceUnavailable, body)
	}
	return c.JSON(http.StatusOK, body)
}
