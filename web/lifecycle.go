package web

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// lifecycleRoutes are a domain's card-side life cycle: release (flow 10),
// lock and unlock, as issuer jobs; the answer is the queued job (202): the
// domain's state changes only when the card confirms.
func (s *Server) lifecycleRoutes(api, admin *echo.Group) {
	api.POST("/domains/:eid/:aid/release", s.postRelease)
	api.POST("/domains/:eid/:aid/lock", s.postLock(true))
	api.POST("/domains/:eid/:aid/unlock", s.postLock(false))
	admin.POST("/domains/:eid/:aid/release/retry", s.postReleaseRetry)
}

func (s *Server) queued(c echo.Context, j *keyport.Job) error {
	c.Response().Header().Set("Location", "/api/v1/jobs/"+j.Ref)
	return c.JSON(http.StatusAccepted, j.View())
}

func (s *Server) postRelease(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	j, err := s.svc.RequestRelease(c.Request().Context(), principal(c), eid, aid)
	if err != nil && j == nil {
		return err
	}
	// A release queued whose access-rule removal was not: the job stands,
	// its proof will not free the domain, and the admin retries.
	return s.queued(c, j)
}

func (s *Server) postLock(lock bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		eid, aid, err := pathDomain(c)
		if err != nil {
			return err
		}
		j, err := s.svc.LockDomain(c.Request().Context(), principal(c), eid, aid, lock)
		if err != nil {
			return err
		}
		return s.queued(c, j)
	}
}

func (s *Server) postReleaseRetry(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	j, err := s.svc.RetryRelease(c.Request().Context(), principal(c), eid, aid)
	if err != nil && j == nil {
		return err
	}
	return s.queued(c, j)
}
