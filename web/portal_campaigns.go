package web

import (
	"context"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// campaignPages are the campaign pages of the provider's portal (pr: its
// own campaigns) and the issuer's console (ad: every campaign), through
// the same use cases as the API.
func (s *Server) campaignPages(pr, ad *echo.Group) {
	for area, g := range map[string]*echo.Group{"/portal": pr, "/admin": ad} {
		g.GET("/campaigns", s.campaignsPage(area))
		g.GET("/campaigns/:id", s.campaignPage(area))
		g.POST("/campaigns/:id/pause", s.campaignForm(area, (*keyport.Service).PauseCampaign, "Paused: nothing more is queued."))
		g.POST("/campaigns/:id/resume", s.campaignForm(area, (*keyport.Service).ResumeCampaign, "Resumed."))
		g.POST("/campaigns/:id/cancel", s.campaignForm(area, (*keyport.Service).CancelCampaign, "Cancelled: its queued jobs are cancelled; jobs already sent run out."))
	}
}

func (s *Server) campaignsPage(area string) echo.HandlerFunc {
	return func(c echo.Context) error {
		list, err := s.svc.ListCampaigns(c.Request().Context(), principal(c), 0)
		if err != nil {
			return err
		}
		return render(c, http.StatusOK, views.CampaignsPage(s.meta(c, "Campaigns", area+"/campaigns"), area, list))
	}
}

func (s *Server) campaignPage(area string) echo.HandlerFunc {
	return func(c echo.Context) error {
		v, err := s.svc.GetCampaign(c.Request().Context(), principal(c), c.Param("id"))
		if err != nil {
			return err
		}
		return render(c, http.StatusOK, views.CampaignPage(s.meta(c, "Campaign", area+"/campaigns"), area, *v))
	}
}

func (s *Server) campaignForm(area string, f func(*keyport.Service, context.Context, keyport.Principal, string) (*keyport.CampaignView, error), done string) echo.HandlerFunc {
	return func(c echo.Context) error {
		id := c.Param("id")
		_, err := f(s.svc, c.Request().Context(), principal(c), id)
		switch {
		case errors.Is(err, keyport.ErrConflict):
			s.flash(c, "bad", "Not done: "+refusal(err)+".")
		case err != nil:
			return err
		default:
			s.flash(c, "good", done)
		}
		return c.Redirect(http.StatusSeeOther, area+"/campaigns/"+id)
	}
}
