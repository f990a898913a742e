package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

// Life-cycle buttons: the provider's domain page and the issuer's module
// page lock, unlock and release a domain through the same use cases as the
// REST API (LockDomain, RequestRelease). Each queues an issuer job; the
// domain's state changes only when the card confirms, so the answer is the
// job to follow, not a new state.

// lifecyclePages adds the provider's (pr) and the issuer's (ad) forms.
func (s *Server) lifecyclePages(pr, ad *echo.Group) {
	pr.POST("/domains/:eid/:aid/lock", s.lifecycleForm("lock", "/portal"))
	pr.POST("/domains/:eid/:aid/unlock", s.lifecycleForm("unlock", "/portal"))
	pr.POST("/domains/:eid/:aid/release", s.lifecycleForm("release", "/portal"))
	ad.POST("/domains/:eid/:aid/lock", s.lifecycleForm("lock", "/admin"))
	ad.POST("/domains/:eid/:aid/unlock", s.lifecycleForm("unlock", "/admin"))
	ad.POST("/domains/:eid/:aid/release", s.lifecycleForm("release", "/admin"))
}

// lifecycleForm runs one operation. A release needs the confirm box
// ticked: it destroys the domain's content and keys on the card. Refusals
// (another's domain, a state that does not allow it, an imported module)
// come back as a flash on the page the form was on; success goes to the
// job (provider) or the jobs list (issuer).
func (s *Server) lifecycleForm(op, area string) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, p := c.Request().Context(), principal(c)
		eid, aid, err := pathDomain(c)
		if err != nil {
			return err
		}
		back := area + "/domains/" + url.PathEscape(string(eid)) + "/" + url.PathEscape(string(aid))
		if area == "/admin" {
			back = "/admin/modules?eid=" + url.QueryEscape(string(eid))
		}
		if area == "/portal" {
			// Another provider's domain is not found, whatever the form says.
			if _, err := s.svc.GetDomain(ctx, p, eid, aid); err != nil {
				return err
			}
		}
		if s.releaseUnconfirmed(c, op) {
			return c.Redirect(http.StatusSeeOther, back)
		}
		j, err := s.svc.ChangeDomain(ctx, p, eid, aid, keyport.CardChange(op))
		if op == "release" && j != nil {
			err = nil // queued; an access-rule removal that was not is retried by the admin
		}
		switch {
		case errors.Is(err, keyport.ErrConflict) || errors.Is(err, keyport.ErrInvalid) || errors.Is(err, keyport.ErrForbidden):
			s.flash(c, "bad", "Not done, nothing was changed: "+refusal(err)+".")
			return c.Redirect(http.StatusSeeOther, back)
		case err != nil:
			return err
		}
		s.flash(c, "good", lifecycleQueued[op])
		if area == "/admin" {
			return c.Redirect(http.StatusSeeOther, "/admin/jobs")
		}
		return c.Redirect(http.StatusSeeOther, "/portal/jobs/"+j.Ref)
	}
}

// releaseUnconfirmed says, and flashes, that a release form came without
// its confirm box ticked: a release destroys the domain's content and keys
// on the card, so DomainLifeCycle's form asks first.
func (s *Server) releaseUnconfirmed(c echo.Context, op string) bool {
	if op != "release" || c.FormValue("confirm") == "yes" {
		return false
	}
	s.flash(c, "bad", "Not released: tick the box to confirm that the domain's content and keys are deleted on the card.")
	return true
}

var lifecycleQueued = map[string]string{
	"lock":    "Lock queued: the domain shows LOCKED once the card confirms it.",
	"unlock":  "Unlock queued: the domain returns to its state once the card confirms it.",
	"release": "Release queued: the domain is RELEASING until the card proves it was re-created with fresh keys.",
}

// refusal is the reason an error gives, without the sentinel's prefix.
func refusal(err error) string {
	msg := err.Error()
	for _, p := range []string{"conflict: ", "forbidden: ", "invalid input: "} {
		if i := strings.LastIndex(msg, p); i >= 0 {
			msg = msg[i+len(p):]
		}
	}
	return msg
}
