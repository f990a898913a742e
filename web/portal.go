package web

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// Provider pages (/portal). Each handler acts as the signed-in provider's
// principal; the service checks ownership of every object, and objects of
// other providers look exactly like objects that do not exist.

func (s *Server) dashboard(c echo.Context) error {
	su := pageUser(c)
	if su.User.Admin {
		return c.Redirect(http.StatusSeeOther, "/admin")
	}
	if su.Principal.ProviderID == "" {
		return render(c, http.StatusOK, views.PendingPage(s.meta(c, "Status", "/portal"), su.Provider))
	}
	ds, err := s.svc.ListDomains(c.Request().Context(), su.Principal)
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.Dashboard(s.meta(c, "Your domains", "/portal"), su.Provider, ds))
}

func (s *Server) keysPage(c echo.Context) error {
	keys, err := s.svc.ListWrappingKeys(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.KeysPage(s.meta(c, "Wrapping keys", "/portal/keys"), keys, "", nil))
}

// maxPEMUpload bounds an uploaded public key file.
const maxPEMUpload = 64 << 10

func (s *Server) registerKey(c echo.Context) error {
	ctx := c.Request().Context()
	p := principal(c)
	pemText := c.FormValue("pem")
	data := []byte(pemText)
	if fh, err := c.FormFile("file"); err == nil && fh.Size > 0 {
		f, err := fh.Open()
		if err != nil {
			return err
		}
		defer f.Close()
		if data, err = io.ReadAll(io.LimitReader(f, maxPEMUpload+1)); err != nil {
			return err
		}
		if len(data) > maxPEMUpload {
			data = nil
		}
	}
	var err error
	if len(strings.TrimSpace(string(data))) == 0 {
		err = keyport.Invalid("public_key", "paste a PEM public key or choose its file")
	} else {
		var k *keyport.WrappingKey
		if k, err = s.svc.RegisterWrappingKey(ctx, p, data); err == nil {
			s.flash(c, "good", fmt.Sprintf("Key %s registered (%d bits). Fingerprint SHA-256 %s: compare it with your HSM's.",
				k.ID, k.Bits, views.Fingerprint(k.SHA256)))
			return c.Redirect(http.StatusSeeOther, "/portal/keys")
		}
	}
	e, ok := formErrors(err, nil)
	if !ok {
		return err
	}
	keys, lerr := s.svc.ListWrappingKeys(ctx, p)
	if lerr != nil {
		return lerr
	}
	return render(c, http.StatusUnprocessableEntity, views.KeysPage(s.meta(c, "Wrapping keys", "/portal/keys"), keys, pemText, e))
}

func (s *Server) lookupPage(c echo.Context) error {
	m := s.meta(c, "Find a module", "/portal/modules")
	raw := c.QueryParam("eid")
	if raw == "" {
		return render(c, http.StatusOK, views.LookupPage(m, "", nil, nil))
	}
	v, status, e, err := s.lookup(c, raw)
	if err != nil {
		return err
	}
	return render(c, status, views.LookupPage(m, raw, v, e))
}

// lookup finds a module for the caller, turning a bad or unknown EID into
// a message next to the field.
func (s *Server) lookup(c echo.Context, raw string) (*keyport.ModuleView, int, views.Errors, error) {
	eid, err := keyport.ParseEID(raw)
	if err == nil {
		var v *keyport.ModuleView
		if v, err = s.svc.LookupModule(c.Request().Context(), principal(c), eid); err == nil {
			return v, http.StatusOK, nil, nil
		}
		if errors.Is(err, keyport.ErrNotFound) {
			return nil, http.StatusNotFound, views.Errors{"eid": "No module with this EID is registered with this issuer."}, nil
		}
	}
	if e, ok := formErrors(err, nil); ok {
		return nil, http.StatusUnprocessableEntity, e, nil
	}
	return nil, 0, nil, err
}

func (s *Server) claimForm(c echo.Context) error {
	f, err := claimTarget(c.QueryParam("eid"), c.QueryParam("aid"))
	if err != nil {
		return err
	}
	f.IdempotencyKey = keyport.NewID("web")
	keys, err := s.svc.ListWrappingKeys(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.ClaimPage(s.meta(c, "Claim a domain", "/portal/modules"), f, keys, nil))
}

func claimTarget(rawEID, rawAID string) (views.ClaimForm, error) {
	eid, err := keyport.ParseEID(rawEID)
	if err != nil {
		return views.ClaimForm{}, err
	}
	aid, err := keyport.ParseAID(rawAID)
	if err != nil {
		return views.ClaimForm{}, err
	}
	return views.ClaimForm{EID: eid, AID: aid}, nil
}

func (s *Server) claim(c echo.Context) error {
	ctx := c.Request().Context()
	p := principal(c)
	f, err := claimTarget(c.FormValue("eid"), c.FormValue("aid"))
	if err != nil {
		return err
	}
	f.WrappingKeyID = c.FormValue("wrapping_key_id")
	f.IdempotencyKey = c.FormValue("idempotency_key")
	cl, _, err := s.svc.Claim(ctx, p, keyport.ClaimRequest{EID: f.EID, AID: f.AID, WrappingKeyID: f.WrappingKeyID,
		IdempotencyKey: f.IdempotencyKey})
	if err == nil {
		s.flash(c, "good", "Domain "+string(cl.AID)+" is yours. Download its key package below.")
		return c.Redirect(http.StatusSeeOther, "/portal/domains/"+string(cl.EID)+"/"+string(cl.AID))
	}
	status := http.StatusUnprocessableEntity
	var e views.Errors
	switch {
	case errors.Is(err, keyport.ErrConflict):
		status = http.StatusConflict
		f.Taken = true
		e = views.Errors{"": "This domain is no longer free: another provider claimed it first. Nothing was changed; " +
			"go back to the module and pick another domain."}
	case errors.Is(err, keyport.ErrNotFound):
		return err
	default:
		var ok bool
		if e, ok = formErrors(err, nil); !ok {
			return err
		}
	}
	keys, lerr := s.svc.ListWrappingKeys(ctx, p)
	if lerr != nil {
		return lerr
	}
	f.IdempotencyKey = keyport.NewID("web")
	return render(c, status, views.ClaimPage(s.meta(c, "Claim a domain", "/portal/modules"), f, keys, e))
}

func (s *Server) domainPage(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	p := principal(c)
	d, err := s.svc.GetDomain(c.Request().Context(), p, eid, aid)
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.DomainPage(s.meta(c, "Domain "+string(aid), "/portal"), d, "", nil))
}

func (s *Server) tokensPage(c echo.Context) error {
	ts, err := s.svc.ListAPITokens(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	totp := pageUser(c).User.TOTPSealed != nil
	return render(c, http.StatusOK, views.TokensPage(s.meta(c, "API tokens", "/portal/tokens"), ts, nil, "", totp, nil))
}

// createToken makes a token only with the current password (and TOTP
// code) in the same form, as setWebhook does: a token outlives the
// session, so a stolen session alone cannot make itself one. It shows the
// new token in the response to the POST itself rather than after a
// redirect: it is shown once and must not travel in a URL or a cookie.
func (s *Server) createToken(c echo.Context) error {
	ctx := c.Request().Context()
	su := pageUser(c)
	name := c.FormValue("name")
	token, t, err := s.svc.CreateAPITokenReauth(ctx, su, reauthForm(c), name)
	var created *views.NewToken
	var e views.Errors
	status := http.StatusCreated
	if err != nil {
		var ok bool
		if e, status, ok = reauthErrors(err); !ok {
			return err
		}
	} else {
		created, name = &views.NewToken{Name: t.Name, Token: token}, ""
	}
	ts, err := s.svc.ListAPITokens(ctx, su.Principal)
	if err != nil {
		return err
	}
	return render(c, status, views.TokensPage(s.meta(c, "API tokens", "/portal/tokens"), ts, created, name, su.User.TOTPSealed != nil, e))
}

func (s *Server) revokeToken(c echo.Context) error {
	if err := s.svc.RevokeAPIToken(c.Request().Context(), principal(c), c.Param("id")); err != nil {
		return err
	}
	s.flash(c, "good", "Token revoked: requests with it are refused from now on.")
	return c.Redirect(http.StatusSeeOther, "/portal/tokens")
}

func (s *Server) webhookPage(c echo.Context) error {
	su := pageUser(c)
	return render(c, http.StatusOK, views.WebhookPage(s.meta(c, "Webhook", "/portal/webhook"), su.Provider.WebhookURL, su.User.TOTPSealed != nil, nil))
}

// setWebhook changes where events go only with the current password (and
// TOTP code) in the same form: a stolen session alone cannot redirect them.
func (s *Server) setWebhook(c echo.Context) error {
	su := pageUser(c)
	raw := c.FormValue("webhook_url")
	if _, err := s.svc.SetWebhookReauth(c.Request().Context(), su, reauthForm(c), raw); err != nil {
		if e, status, ok := reauthErrors(err); ok {
			return render(c, status, views.WebhookPage(s.meta(c, "Webhook", "/portal/webhook"), raw, su.User.TOTPSealed != nil, e))
		}
		return err
	}
	s.flash(c, "good", "Webhook saved.")
	return c.Redirect(http.StatusSeeOther, "/portal/webhook")
}

func (s *Server) myAuditPage(c echo.Context) error {
	evs, err := s.svc.MyAudit(c.Request().Context(), principal(c), 200)
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.MyAuditPage(s.meta(c, "Audit trail", "/portal/audit"), evs))
}
