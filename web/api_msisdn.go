package web

import (
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// msisdnRoutes: an admin sets or clears a module's MSISDN (E.164), by
// which keyport reaches it with a trigger SMS.
func (s *Server) msisdnRoutes(admin *echo.Group) {
	admin.PUT("/modules/:eid/msisdn", s.putMSISDN)
	admin.DELETE("/modules/:eid/msisdn", s.deleteMSISDN)
}

func (s *Server) putMSISDN(c echo.Context) error {
	eid, err := pathEID(c)
	if err != nil {
		return err
	}
	var in struct {
		MSISDN string `json:"msisdn"`
	}
	if err := readJSON(c, &in); err != nil {
		return err
	}
	if in.MSISDN == "" {
		return keyport.Invalid("msisdn", "missing: DELETE clears the MSISDN")
	}
	if err := s.svc.SetMSISDN(c.Request().Context(), principal(c), eid, in.MSISDN); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) deleteMSISDN(c echo.Context) error {
	eid, err := pathEID(c)
	if err != nil {
		return err
	}
	if err := s.svc.SetMSISDN(c.Request().Context(), principal(c), eid, ""); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
