package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// Issuer admin console (/admin).

// HSMStatusFunc reports the HSM's token and keys for the admin console; the
// command wires it to the hsm package (web imports no other adapter).
type HSMStatusFunc func(ctx context.Context) (views.HSMStatus, error)

func (s *Server) adminDashboard(c echo.Context) error {
	ctx := c.Request().Context()
	p := principal(c)
	st, err := s.svc.Stats(ctx, p)
	if err != nil {
		return err
	}
	provs, err := s.svc.ListProviders(ctx, p)
	if err != nil {
		return err
	}
	a := views.AdminStats{Stats: st}
	for _, pr := range provs {
		if pr.Status == keyport.ProviderPending {
			a.Pending++
		}
	}
	if err := s.svc.Custody.Health(ctx); err != nil {
		a.HSMError = "the token does not answer"
	}
	return render(c, http.StatusOK, views.AdminDashboard(s.meta(c, "Dashboard", "/admin"), a))
}

func (s *Server) batchesPage(c echo.Context) error {
	bs, err := s.svc.ListBatches(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.BatchesPage(s.meta(c, "Batches", "/admin/batches"), bs, views.BatchForm{}, "", nil))
}

func (s *Server) createBatch(c echo.Context) error {
	ctx := c.Request().Context()
	p := principal(c)
	f := views.BatchForm{Name: c.FormValue("name"), AIDPrefix: c.FormValue("aid_prefix")}
	var prefix keyport.AID
	var err error
	if f.AIDPrefix != "" {
		prefix, err = keyport.ParseAID(f.AIDPrefix)
	}
	var export *keyport.TransportKeyExport
	if err == nil {
		if pemText := c.FormValue("manufacturer"); pemText != "" {
			pub, perr := keyport.ParsePublicKeyPEM([]byte(pemText))
			if err = perr; err == nil {
				_, export, err = s.svc.CreateBatch(ctx, p, f.Name, prefix, pub)
			}
			if errors.Is(err, keyport.ErrApprovalRequired) {
				// The transport key would leave the HSM: ask for approval.
				r, rerr := s.svc.RequestApproval(ctx, p, keyport.ActionTransportExport, f.Name,
					map[string]string{"manufacturer_pem": pemText, "aid_prefix": string(prefix)}, "")
				if err = rerr; err == nil {
					s.flash(c, "good", "Creating imported batch "+f.Name+" exports its transport key, so it needs another admin: request "+r.ID+" is waiting on the Dual control page.")
					return c.Redirect(http.StatusSeeOther, "/admin/approvals")
				}
			}
		} else {
			_, export, err = s.svc.CreateBatch(ctx, p, f.Name, prefix, nil)
		}
	}
	status, exportText := http.StatusCreated, ""
	var e views.Errors
	if err != nil {
		var ok bool
		if e, ok = formErrors(err, nil); !ok {
			return err
		}
		status = http.StatusUnprocessableEntity
	} else if export != nil {
		// Shown in the POST's response: the manufacturer needs it once.
		b, _ := json.MarshalIndent(export, "", "  ")
		exportText = string(b)
		f = views.BatchForm{}
	} else {
		s.flash(c, "good", "Batch "+f.Name+" created; its key-encryption key is in the HSM.")
		return c.Redirect(http.StatusSeeOther, "/admin/batches")
	}
	bs, err := s.svc.ListBatches(ctx, p)
	if err != nil {
		return err
	}
	return render(c, status, views.BatchesPage(s.meta(c, "Batches", "/admin/batches"), bs, f, exportText, e))
}

// importBatch imports an uploaded manufacturer file. The page's script
// shows the upload's progress; the import itself validates the whole file
// before storing anything.
func (s *Server) importBatch(c echo.Context) error {
	extendDeadlines(c, importDeadline)
	ctx := c.Request().Context()
	name := c.Param("name")
	fh, err := c.FormFile("file")
	if err != nil {
		s.flash(c, "bad", "Choose the manufacturer's JSON Lines file to import.")
		return c.Redirect(http.StatusSeeOther, "/admin/batches")
	}
	src, err := fh.Open()
	if err != nil {
		return err
	}
	defer src.Close()
	f, done, err := spoolBody(s.opts.SpoolDir, "keyport-import-*.jsonl", src)
	if err != nil {
		return err
	}
	defer done()
	if err := stillAuthenticated(c); err != nil {
		return err
	}
	n, err := s.svc.ImportModules(ctx, principal(c), name, f, keyport.VerifyMode(c.FormValue("verify")))
	var imp *keyport.ImportErrors
	var ie *keyport.InvalidError
	switch {
	case errors.As(err, &imp):
		s.flash(c, "bad", "Import rejected, nothing stored: "+imp.Error())
	case errors.As(err, &ie):
		s.flash(c, "bad", "Import rejected, nothing stored: "+ie.Error())
	case errors.Is(err, keyport.ErrConflict):
		s.flash(c, "bad", "Import rejected, nothing stored: "+err.Error())
	case err != nil:
		return err
	default:
		s.flash(c, "good", fmt.Sprintf("Imported %s into batch %s.", views.Plural(int64(n), "module", "modules"), name))
	}
	return c.Redirect(http.StatusSeeOther, "/admin/batches")
}

func (s *Server) adminModulesPage(c echo.Context) error {
	m := s.meta(c, "Modules", "/admin/modules")
	raw := c.QueryParam("eid")
	if raw == "" {
		return render(c, http.StatusOK, views.AdminModulesPage(m, "", nil, nil, nil))
	}
	v, status, e, err := s.lookup(c, raw)
	if err != nil {
		return err
	}
	var owners map[string]string
	if v != nil {
		if owners, err = s.providerNames(c.Request().Context()); err != nil {
			return err
		}
	}
	return render(c, status, views.AdminModulesPage(m, raw, v, owners, e))
}

func (s *Server) providersPage(c echo.Context) error {
	ctx, p := c.Request().Context(), principal(c)
	ps, err := s.svc.ListProviders(ctx, p)
	if err != nil {
		return err
	}
	hs, err := s.svc.WebhookHealth(ctx, p)
	if err != nil {
		return err
	}
	health := make(map[string]keyport.WebhookHealth, len(hs))
	for _, h := range hs {
		health[h.ProviderID] = h
	}
	emails, err := s.svc.ProviderEmails(ctx, p, ps)
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.ProvidersPage(s.meta(c, "Providers", "/admin/providers"), ps, emails, health))
}

func (s *Server) setProviderStatus(status keyport.ProviderStatus) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, id := c.Request().Context(), c.Param("id")
		prov, err := s.svc.GetProvider(ctx, principal(c), id)
		if err != nil {
			return err
		}
		name := prov.Name + " (" + id + ")"
		err = s.svc.SetProviderStatus(ctx, principal(c), id, status)
		if errors.Is(err, keyport.ErrEmailUnconfirmed) {
			s.flash(c, "bad", prov.Name+" cannot be approved yet: "+prov.Email+" is not confirmed. The provider must follow the link keyport mailed to it (or ask for a new one by signing in).")
			return c.Redirect(http.StatusSeeOther, "/admin/providers")
		}
		if errors.Is(err, keyport.ErrApprovalRequired) {
			// Under dual control the button asks for the approval instead.
			r, rerr := s.svc.RequestApproval(c.Request().Context(), principal(c), keyport.ActionProviderApprove, id, nil, "")
			if rerr != nil {
				return rerr
			}
			s.flash(c, "good", "Approving "+name+" needs another admin: request "+r.ID+" is waiting on the Dual control page.")
			return c.Redirect(http.StatusSeeOther, "/admin/approvals")
		}
		if err != nil {
			return err
		}
		s.flash(c, "good", prov.Name+" is now "+string(status)+".")
		return c.Redirect(http.StatusSeeOther, "/admin/providers")
	}
}

func (s *Server) adminAuditPage(c echo.Context) error {
	return s.renderAdminAudit(c, nil)
}

func (s *Server) renderAdminAudit(c echo.Context, r *views.VerifyResult) error {
	evs, err := s.svc.RecentAudit(c.Request().Context(), principal(c), 200)
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.AdminAuditPage(s.meta(c, "Audit log", "/admin/audit"), evs, r))
}

// adminVerifyAudit shows the verification's outcome in the POST's response:
// it is a report, not a change to redirect away from.
func (s *Server) adminVerifyAudit(c echo.Context) error {
	rep, err := s.svc.VerifyAudit(c.Request().Context())
	var broken *keyport.AuditBroken
	switch {
	case errors.As(err, &broken):
		return s.renderAdminAudit(c, &views.VerifyResult{Row: broken.Seq, Reason: broken.Reason})
	case err != nil:
		return err
	}
	return s.renderAdminAudit(c, &views.VerifyResult{OK: true, Events: rep.Events, Checkpoints: rep.Checkpoints, Keyed: rep.Keyed})
}

func (s *Server) outboxPage(c echo.Context) error {
	msgs, err := s.svc.Outbox(c.Request().Context(), principal(c), c.QueryParam("topic"), 100)
	if err != nil {
		return err
	}
	emails := map[int64]keyport.EmailMessage{}
	for _, m := range msgs {
		var em keyport.EmailMessage
		if m.Topic == "email" && json.Unmarshal([]byte(m.Payload), &em) == nil {
			emails[m.ID] = em
		}
	}
	// Each recipient links to where the console shows them.
	ctx, p := c.Request().Context(), principal(c)
	recipients := map[string]string{}
	ps, err := s.svc.ListProviders(ctx, p)
	if err != nil {
		return err
	}
	for _, pr := range ps {
		recipients[pr.Email] = "/admin/providers#provider-" + pr.ID
	}
	us, err := s.svc.ListAdminUsers(ctx, p)
	if err != nil {
		return err
	}
	for _, u := range us {
		recipients[u.Email] = "/admin/users"
	}
	return render(c, http.StatusOK, views.OutboxPage(s.meta(c, "Outbox", "/admin/outbox"), msgs, emails, c.QueryParam("topic"), recipients))
}

func (s *Server) hsmPage(c echo.Context) error {
	ctx := c.Request().Context()
	st := views.HSMStatus{OAEPHash: string(s.svc.Custody.OAEPHash())}
	if s.opts.HSMStatus != nil {
		var err error
		if st, err = s.opts.HSMStatus(ctx); err != nil {
			st.HealthErr = err.Error()
		}
	}
	if err := s.svc.Custody.Health(ctx); err != nil {
		st.HealthErr = err.Error()
	} else if st.HealthErr == "" {
		st.Healthy = true
	}
	return render(c, http.StatusOK, views.HSMPage(s.meta(c, "HSM", "/admin/hsm"), st))
}

func (s *Server) adminTokensPage(c echo.Context) error {
	return s.renderAdminTokens(c, http.StatusOK, views.AdminTokensView{TTLDays: "90"}, nil)
}

func (s *Server) renderAdminTokens(c echo.Context, status int, v views.AdminTokensView, e views.Errors) error {
	ts, err := s.svc.ListAdminTokens(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	v.Tokens, v.Now = ts, time.Now()
	return render(c, status, views.AdminTokensPage(s.meta(c, "Admin API tokens", "/admin/tokens"), v, e))
}

// createAdminToken shows the new token in the POST's response, once (as
// createToken does for providers).
func (s *Server) createAdminToken(c echo.Context) error {
	v := views.AdminTokensView{Name: c.FormValue("name"), TTLDays: c.FormValue("ttl_days")}
	days, err := strconv.Atoi(strings.TrimSpace(v.TTLDays))
	if err != nil || days < 1 {
		return s.renderAdminTokens(c, http.StatusUnprocessableEntity, v, views.Errors{"ttl": "enter a number of days from 1 to 400"})
	}
	token, t, err := s.svc.CreateAdminToken(c.Request().Context(), principal(c), v.Name, time.Duration(days)*24*time.Hour)
	if err != nil {
		e, ok := formErrors(err, nil)
		if !ok {
			return err
		}
		return s.renderAdminTokens(c, http.StatusUnprocessableEntity, v, e)
	}
	return s.renderAdminTokens(c, http.StatusCreated, views.AdminTokensView{Created: &views.NewToken{Name: t.Name, Token: token}, TTLDays: "90"}, nil)
}

func (s *Server) revokeAdminToken(c echo.Context) error {
	if err := s.svc.RevokeAdminToken(c.Request().Context(), principal(c), c.Param("id")); err != nil {
		return err
	}
	s.flash(c, "good", "Token revoked: requests with it are refused from now on.")
	return c.Redirect(http.StatusSeeOther, "/admin/tokens")
}

func (s *Server) adminUsersPage(c echo.Context) error {
	us, err := s.svc.ListAdminUsers(c.Request().Context(), principal(c))
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.AdminUsersPage(s.meta(c, "Admin users", "/admin/users"), us))
}

func (s *Server) setAdminUserDisabled(disabled bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		u, err := s.svc.SetAdminUserDisabled(c.Request().Context(), principal(c), c.FormValue("email"), disabled)
		var ie *keyport.InvalidError
		switch {
		case errors.As(err, &ie):
			s.flash(c, "bad", upperFirst(ie.Reason)+".")
		case err != nil:
			return err
		case disabled:
			s.flash(c, "good", u.Email+" is disabled: signed out everywhere, and their API tokens are refused.")
		default:
			s.flash(c, "good", u.Email+" is enabled again.")
		}
		return c.Redirect(http.StatusSeeOther, "/admin/users")
	}
}

// providerNames maps every provider's ID to its name, for pages that name
// providers rather than show their IDs.
func (s *Server) providerNames(ctx context.Context) (map[string]string, error) {
	ps, err := s.svc.Store.ListProviders(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]string, len(ps))
	for _, p := range ps {
		names[p.ID] = p.Name
	}
	return names, nil
}
