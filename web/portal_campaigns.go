package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode"

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
		g.POST("/campaigns", s.startCampaignPage(area))
		g.GET("/campaigns/:id", s.campaignPage(area))
		g.POST("/campaigns/:id/pause", s.campaignForm(area, (*keyport.Service).PauseCampaign, "Paused: nothing more is queued."))
		g.POST("/campaigns/:id/resume", s.campaignForm(area, (*keyport.Service).ResumeCampaign, "Resumed."))
		g.POST("/campaigns/:id/cancel", s.campaignForm(area, (*keyport.Service).CancelCampaign, "Cancelled: its queued jobs are cancelled; jobs already sent run out."))
	}
}

func (s *Server) campaignsPage(area string) echo.HandlerFunc {
	return func(c echo.Context) error {
		return s.renderCampaigns(c, area, http.StatusOK, views.CampaignForm{}, nil)
	}
}

func (s *Server) renderCampaigns(c echo.Context, area string, status int, f views.CampaignForm, e views.Errors) error {
	ctx := c.Request().Context()
	list, err := s.svc.ListCampaigns(ctx, principal(c), 0)
	if err != nil {
		return err
	}
	var owners map[string]string
	if area == "/admin" {
		if owners, err = s.providerNames(ctx); err != nil {
			return err
		}
	}
	return render(c, status, views.CampaignsPage(s.meta(c, "Campaigns", area+"/campaigns"), area, list, owners, f, e))
}

// campaignFormFields maps the use case's field names to the form's; a
// field the form does not show is reported above the form.
var campaignFormFields = map[string]string{"op": "op", "rate": "rate", "module_cap": "module_cap", "busy": "busy",
	"targets": "target", "targets.all_personalized": "target", "targets.eids": "eids", "targets.batch": "batch",
	"targets.aid": "aid", "params": "rule", "certificate_sha256": "hash", "certificate_sha1": "hash", "certificate": "hash",
	"certificate_pem": "certificate_pem", "android_package": "android_package", "apdu": "apdu", "eids": "eids"}

// campaignShownFields are the form's fields that show their own message.
var campaignShownFields = []string{"op", "target", "eids", "batch", "aid", "rate", "module_cap", "rule", "hash",
	"certificate_pem", "android_package", "apdu"}

// startCampaignPage starts a campaign from the form (CreateCampaign, as
// POST …/campaigns does) and shows it; bad input comes back with the form
// as it was sent, and nothing is stored.
func (s *Server) startCampaignPage(area string) echo.HandlerFunc {
	return func(c echo.Context) error {
		f := views.CampaignForm{Op: c.FormValue("op"), Target: c.FormValue("target"), EIDs: c.FormValue("eids"),
			Batch: strings.TrimSpace(c.FormValue("batch")), AID: strings.TrimSpace(c.FormValue("aid")),
			Rate: strings.TrimSpace(c.FormValue("rate")), ModuleCap: strings.TrimSpace(c.FormValue("module_cap")), Busy: c.FormValue("busy")}
		req, err := campaignFromForm(c, &f)
		var camp *keyport.Campaign
		if err == nil {
			camp, err = s.svc.CreateCampaign(c.Request().Context(), principal(c), req, nil)
		}
		if e, ok := formErrors(err, campaignFormFields); ok {
			for k, msg := range e {
				if k != "" && !slices.Contains(campaignShownFields, k) {
					delete(e, k)
					e[""] = k + ": " + msg
				}
			}
			return s.renderCampaigns(c, area, http.StatusUnprocessableEntity, f, e)
		}
		if refused(err) {
			s.flash(c, "bad", "Not started: "+refusal(err)+".")
			return c.Redirect(http.StatusSeeOther, area+"/campaigns")
		}
		if err != nil {
			return err
		}
		s.flash(c, "good", fmt.Sprintf("Campaign %s started over %s.", camp.ID, views.Plural(int64(camp.Total), "domain", "domains")))
		return c.Redirect(http.StatusSeeOther, area+"/campaigns/"+camp.ID)
	}
}

// campaignFromForm reads the form into the API's request.
func campaignFromForm(c echo.Context, f *views.CampaignForm) (keyport.CampaignRequest, error) {
	req := keyport.CampaignRequest{Op: keyport.CampaignOp(f.Op), Busy: f.Busy}
	for _, n := range []struct {
		field, v string
		to       *int
	}{{"rate", f.Rate, &req.Rate}, {"module_cap", f.ModuleCap, &req.ModuleCap}} {
		if n.v == "" {
			continue
		}
		v, err := strconv.Atoi(n.v)
		if err != nil {
			return req, keyport.Invalid(n.field, "a whole number")
		}
		*n.to = v
	}
	switch f.Target {
	case "", "eids":
		req.Targets.EIDs = strings.FieldsFunc(f.EIDs, func(r rune) bool { return r == ',' || unicode.IsSpace(r) })
		if len(req.Targets.EIDs) == 0 {
			return req, keyport.Invalid("eids", "name at least one EID, one a line")
		}
	case "batch":
		req.Targets.Batch, req.Targets.AID = f.Batch, keyport.AID(strings.ToUpper(f.AID))
		if f.Batch == "" {
			return req, keyport.Invalid("batch", "name the batch")
		}
	case "all":
		req.Targets.AllPersonalized = true
	default:
		return req, keyport.Invalid("target", "choose which domains")
	}
	if req.Op == keyport.CampaignRuleAdd || req.Op == keyport.CampaignRuleRemove {
		rf, rule, err := accessRuleForm(c)
		f.Rule = rf
		if err != nil {
			return req, err
		}
		if req.Params, err = json.Marshal(rule); err != nil {
			return req, err
		}
	}
	return req, nil
}

func (s *Server) campaignPage(area string) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx := c.Request().Context()
		v, err := s.svc.GetCampaign(ctx, principal(c), c.Param("id"))
		if err != nil {
			return err
		}
		// The console names the provider whose campaign it is; the portal
		// shows only its own.
		var owner string
		if area == "/admin" && v.Provider != "" {
			names, err := s.providerNames(ctx)
			if err != nil {
				return err
			}
			owner = views.OwnerName(names, v.Provider)
		}
		return render(c, http.StatusOK, views.CampaignPage(s.meta(c, "Campaign", area+"/campaigns"), area, *v, owner))
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
