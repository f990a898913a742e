package web

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// accessRulePages are the provider's access-rule pages of a domain.
func (s *Server) accessRulePages(pr *echo.Group) {
	pr.GET("/domains/:eid/:aid/access-rules", s.accessRulesPage)
	pr.POST("/domains/:eid/:aid/access-rules", s.addAccessRulePage)
	pr.POST("/domains/:eid/:aid/access-rules/:id/delete", s.deleteAccessRulePage)
}

func (s *Server) accessRulesPage(c echo.Context) error {
	return s.renderAccessRules(c, http.StatusOK, views.AccessRuleForm{}, nil)
}

func (s *Server) renderAccessRules(c echo.Context, status int, f views.AccessRuleForm, e views.Errors) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	ctx, p := c.Request().Context(), principal(c)
	d, err := s.svc.GetDomain(ctx, p, eid, aid)
	if err != nil {
		return err
	}
	if d.OwnerID != p.ProviderID {
		return keyport.ErrNotFound
	}
	rules, err := s.svc.ListAccessRules(ctx, p, eid, aid)
	if err != nil {
		return err
	}
	return render(c, status, views.AccessRulesPage(s.meta(c, "App access "+string(aid), "/portal"), d, rules, f, e))
}

// accessRuleForm turns the page's form into the API's request.
func accessRuleForm(c echo.Context) (views.AccessRuleForm, keyport.AccessRuleRequest, error) {
	f := views.AccessRuleForm{Certificate: c.FormValue("certificate"), Hash: strings.TrimSpace(c.FormValue("hash")),
		Package: strings.TrimSpace(c.FormValue("package")), APDU: c.FormValue("apdu"), Filters: c.FormValue("filters"),
		NFC: c.FormValue("nfc") == "1", CarrierPrivileges: c.FormValue("carrier") == "1"}
	req := keyport.AccessRuleRequest{CertificatePEM: strings.TrimSpace(f.Certificate), AndroidPackage: f.Package}
	if f.Hash != "" {
		if len(strings.ReplaceAll(f.Hash, ":", "")) == 40 {
			req.CertificateSHA1 = f.Hash
		} else {
			req.CertificateSHA256 = f.Hash
		}
	}
	switch f.APDU {
	case "", keyport.APDUAlways:
		req.APDU = json.RawMessage(`"always"`)
	case keyport.APDUNever:
		req.APDU = json.RawMessage(`"never"`)
	case "filters":
		var fs []keyport.APDUFilter
		for _, tok := range strings.Fields(f.Filters) {
			h, m, ok := strings.Cut(tok, "/")
			if !ok {
				return f, req, keyport.Invalid("apdu", "write each filter as header/mask, e.g. 80CA0000/FFFF0000")
			}
			fs = append(fs, keyport.APDUFilter{Header: h, Mask: m})
		}
		b, _ := json.Marshal(fs)
		req.APDU = b
	default:
		return f, req, keyport.Invalid("apdu", "choose every command, no command or the filters")
	}
	if f.NFC {
		req.NFC = &f.NFC
	}
	if f.CarrierPrivileges {
		req.CarrierPrivileges = &f.CarrierPrivileges
	}
	return f, req, nil
}

// accessRuleFields shows the API's field names on the form's fields.
var accessRuleFields = map[string]string{"certificate_sha256": "hash", "certificate_sha1": "hash", "certificate": "hash"}

func (s *Server) addAccessRulePage(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	f, req, err := accessRuleForm(c)
	if err == nil {
		_, _, err = s.svc.RequestAccessRule(c.Request().Context(), principal(c), eid, aid, req)
	}
	if err != nil {
		var inv *keyport.InvalidError
		if errors.As(err, &inv) && strings.HasPrefix(inv.Field, "apdu") {
			err = keyport.Invalid("apdu", "%s", inv.Error())
		}
		e, ok := formErrors(err, accessRuleFields)
		if !ok {
			return err
		}
		return s.renderAccessRules(c, http.StatusUnprocessableEntity, f, e)
	}
	s.flash(c, "good", "Rule queued: keyport stores it on the module at its next admin session and shows it ACTIVE once the card confirms.")
	return c.Redirect(http.StatusSeeOther, "/portal/domains/"+string(eid)+"/"+string(aid)+"/access-rules")
}

func (s *Server) deleteAccessRulePage(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	if _, _, err := s.svc.DeleteAccessRule(c.Request().Context(), principal(c), eid, aid, c.Param("id")); err != nil {
		if e, ok := formErrors(err, nil); ok {
			return s.renderAccessRules(c, http.StatusConflict, views.AccessRuleForm{}, e)
		}
		return err
	}
	s.flash(c, "good", "Rule deletion queued: the app keeps its access until the module confirms.")
	return c.Redirect(http.StatusSeeOther, "/portal/domains/"+string(eid)+"/"+string(aid)+"/access-rules")
}
