package web

import (
	_ "embed"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// REST twins of the portal's provider pages, so that a provider's server can
// do whatever its staff do in the browser (issue 5): list wrapping keys,
// manage API tokens, set the webhook, read its own audit trail.

//go:embed openapi.json
var openAPIDocument []byte

// serveOpenAPI serves the hand-written OpenAPI 3.1 document of /api/v1.
func serveOpenAPI(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.Blob(http.StatusOK, "application/json", openAPIDocument)
}

func (s *Server) portalAPIRoutes(api *echo.Group) {
	api.GET("/wrapping-keys", s.apiListWrappingKeys)
	api.GET("/tokens", s.apiListTokens)
	api.POST("/tokens", s.apiCreateToken)
	api.DELETE("/tokens/:id", s.apiRevokeToken)
	api.GET("/webhook", s.apiGetWebhook)
	api.PUT("/webhook", s.apiSetWebhook)
	api.GET("/audit", s.apiMyAudit)
}

func (s *Server) apiListWrappingKeys(c echo.Context) error {
	ks, err := s.svc.ListWrappingKeys(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	type key struct {
		ID        string    `json:"id"`
		SHA256    string    `json:"sha256"`
		Bits      int       `json:"bits"`
		CreatedAt time.Time `json:"created_at"`
	}
	out := []key{}
	for _, k := range ks {
		out = append(out, key{k.ID, k.SHA256, k.Bits, k.CreatedAt})
	}
	return c.JSON(http.StatusOK, map[string]any{"wrapping_keys": out})
}

type tokenJSON struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at"`
}

func (s *Server) apiListTokens(c echo.Context) error {
	ts, err := s.svc.ListAPITokens(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	out := []tokenJSON{}
	for _, t := range ts {
		out = append(out, tokenJSON{t.ID, t.Name, t.CreatedAt, t.RevokedAt})
	}
	return c.JSON(http.StatusOK, map[string]any{"tokens": out})
}

func (s *Server) apiCreateToken(c echo.Context) error {
	var in struct {
		Name string `json:"name"`
	}
	if err := readJSON(c, &in); err != nil {
		return err
	}
	token, t, err := s.svc.CreateAPIToken(c.Request().Context(), principal(c), in.Name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"id": t.ID, "name": t.Name, "created_at": t.CreatedAt, "token": token})
}

func (s *Server) apiRevokeToken(c echo.Context) error {
	if err := s.svc.RevokeAPIToken(c.Request().Context(), principal(c), c.Param("id")); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) apiGetWebhook(c echo.Context) error {
	p := principal(c)
	if p.ProviderID == "" {
		return keyport.ErrForbidden
	}
	prov, err := s.svc.GetProvider(c.Request().Context(), p, p.ProviderID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"url": prov.WebhookURL})
}

func (s *Server) apiSetWebhook(c echo.Context) error {
	if principal(c).ProviderID == "" {
		return keyport.ErrForbidden // before the body, as for claims: an admin has no webhook
	}
	var in struct {
		URL *string `json:"url"`
	}
	if err := readJSON(c, &in); err != nil {
		return err
	}
	if in.URL == nil {
		// A PUT without the field would silently remove the webhook.
		return keyport.Invalid("url", `give the webhook's https URL, or "" for none`)
	}
	u, err := s.svc.SetWebhook(c.Request().Context(), principal(c), *in.URL)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"url": u})
}

func (s *Server) apiMyAudit(c echo.Context) error {
	limit, _ := strconv.Atoi(c.QueryParam("limit"))
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	evs, err := s.svc.MyAudit(c.Request().Context(), principal(c), limit)
	if err != nil {
		return err
	}
	if evs == nil {
		evs = []keyport.AuditEvent{}
	}
	return c.JSON(http.StatusOK, map[string]any{"events": evs})
}
