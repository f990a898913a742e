package web

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// campaignRoutes registers campaigns (campaign.go in the root package): a
// provider's over its own domains at /api/v1/campaigns, the issuer's (and
// a view of every provider's) at /api/v1/admin/campaigns.
func (s *Server) campaignRoutes(api, admin *echo.Group) {
	for _, g := range []*echo.Group{api, admin} {
		g.POST("/campaigns", s.postCampaign)
		g.GET("/campaigns", s.listCampaigns)
		g.GET("/campaigns/:id", s.getCampaign)
		g.POST("/campaigns/:id/pause", s.moveCampaign((*keyport.Service).PauseCampaign))
		g.POST("/campaigns/:id/resume", s.moveCampaign((*keyport.Service).ResumeCampaign))
		g.POST("/campaigns/:id/cancel", s.moveCampaign((*keyport.Service).CancelCampaign))
	}
}

// rejectedCampaign marks an error of a campaign's input: 422, whatever its
// class (problemFor).
type rejectedCampaign struct{ err error }

func (e rejectedCampaign) Error() string { return e.err.Error() }
func (e rejectedCampaign) Unwrap() error { return e.err }

// campaignPrincipal is the caller, which must be an admin under /admin and
// a provider elsewhere.
func campaignPrincipal(c echo.Context) (keyport.Principal, error) {
	p := principal(c)
	if p.Admin != isAdminPath(c) {
		return p, keyport.ErrForbidden
	}
	return p, nil
}

func isAdminPath(c echo.Context) bool {
	const prefix = "/api/v1/admin/"
	return len(c.Path()) > len(prefix) && c.Path()[:len(prefix)] == prefix
}

func (s *Server) postCampaign(c echo.Context) error {
	p, err := campaignPrincipal(c)
	if err != nil {
		return err
	}
	r := c.Request()
	mt, _, _ := mime.ParseMediaType(r.Header.Get(echo.HeaderContentType))
	limit := int64(keyport.MaxCampaignBody)
	if mt == "application/x-ndjson" {
		limit = keyport.MaxCampaignUpload
	}
	body := http.MaxBytesReader(c.Response(), r.Body, limit)
	var req *keyport.CampaignRequest
	var scripts io.Reader
	switch mt {
	case echo.MIMEApplicationJSON:
		b, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		if req, err = keyport.ParseCampaignRequest(b); err != nil {
			return rejectedCampaign{err}
		}
	case "application/x-ndjson":
		if req, err = campaignQuery(c); err != nil {
			return rejectedCampaign{err}
		}
		// Read whole first, so that CreateCampaign checks a local file
		// and not a client that trickles its lines for as long as it
		// likes; up to MaxCampaignUpload, so with an import's time.
		release, ok := s.uploads.take(uploader(p))
		if !ok {
			return errTooManyUploads
		}
		defer release()
		extendDeadlines(c, importDeadline)
		f, done, err := spoolBody(s.opts.SpoolDir, "keyport-campaign-*.ndjson", body)
		if err != nil {
			return err
		}
		defer done()
		if err := stillAuthenticated(c); err != nil {
			return err
		}
		scripts = f
	default:
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the campaign as application/json, or its scripts as application/x-ndjson")
	}
	cm, err := s.svc.CreateCampaign(r.Context(), p, *req, scripts)
	if errors.Is(err, keyport.ErrInvalid) {
		return rejectedCampaign{err}
	}
	if err != nil {
		return err
	}
	v, err := s.svc.GetCampaign(r.Context(), p, cm.ID)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Location", c.Path()+"/"+cm.ID)
	return c.JSON(http.StatusCreated, v)
}

// campaignQuery reads a script upload's settings from the query: op, rate,
// module_cap, busy.
func campaignQuery(c echo.Context) (*keyport.CampaignRequest, error) {
	q := c.QueryParams()
	for k := range q {
		switch k {
		case "op", "rate", "module_cap", "busy":
		default:
			return nil, keyport.Invalid(k, "unknown parameter; an upload takes op, rate, module_cap, busy")
		}
	}
	req := &keyport.CampaignRequest{Op: keyport.CampaignOp(q.Get("op")), Busy: q.Get("busy")}
	for _, f := range []struct {
		name string
		v    *int
	}{{"rate", &req.Rate}, {"module_cap", &req.ModuleCap}} {
		if s := q.Get(f.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				return nil, keyport.Invalid(f.name, "not a number")
			}
			*f.v = n
		}
	}
	if !req.Op.Scripted() {
		return nil, keyport.Invalid("op", "an NDJSON upload is for rotation-script or data-script")
	}
	return req, nil
}

func (s *Server) listCampaigns(c echo.Context) error {
	p, err := campaignPrincipal(c)
	if err != nil {
		return err
	}
	vs, err := s.svc.ListCampaigns(c.Request().Context(), p, 0)
	if err != nil {
		return err
	}
	if vs == nil {
		vs = []keyport.CampaignView{}
	}
	return c.JSON(http.StatusOK, map[string]any{"campaigns": vs})
}

func (s *Server) getCampaign(c echo.Context) error {
	p, err := campaignPrincipal(c)
	if err != nil {
		return err
	}
	v, err := s.svc.GetCampaign(c.Request().Context(), p, c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *Server) moveCampaign(f func(*keyport.Service, context.Context, keyport.Principal, string) (*keyport.CampaignView, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		p, err := campaignPrincipal(c)
		if err != nil {
			return err
		}
		v, err := f(s.svc, c.Request().Context(), p, c.Param("id"))
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, v)
	}
}
