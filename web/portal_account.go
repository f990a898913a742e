package web

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/a-h/templ"
	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/web/views"
)

// render writes a templ component as the response: the one way pages are
// rendered (STYLE.md, templ with echo).
func render(c echo.Context, status int, cmp templ.Component) error {
	c.Response().Header().Set(echo.HeaderContentType, echo.MIMETextHTMLCharsetUTF8)
	c.Response().WriteHeader(status)
	return cmp.Render(c.Request().Context(), c.Response())
}

// formErrors turns a use case's error into messages next to form fields.
// Errors that are not the user's input return ok == false and go to the
// error page instead.
func formErrors(err error, fieldAlias map[string]string) (views.Errors, bool) {
	var ie *keyport.InvalidError
	if errors.As(err, &ie) {
		f := ie.Field
		if a, ok := fieldAlias[f]; ok {
			f = a
		}
		return views.Errors{f: ie.Reason}, true
	}
	if errors.Is(err, keyport.ErrConflict) {
		return views.Errors{"": conflictMessage(err)}, true
	}
	return nil, false
}

func conflictMessage(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, "conflict: "); i >= 0 {
		msg = msg[i+len("conflict: "):]
	}
	return "Nothing was changed: " + msg + "."
}

func (s *Server) linkBase(c echo.Context) string {
	if s.opts.PublicURL != "" {
		return strings.TrimRight(s.opts.PublicURL, "/")
	}
	return c.Scheme() + "://" + c.Request().Host
}

func (s *Server) home(c echo.Context) error {
	su := pageUser(c)
	switch {
	case su == nil:
		return c.Redirect(http.StatusSeeOther, "/login")
	case su.User.Admin:
		return c.Redirect(http.StatusSeeOther, "/admin")
	}
	return c.Redirect(http.StatusSeeOther, "/portal")
}

func (s *Server) signUpForm(c echo.Context) error {
	return render(c, http.StatusOK, views.SignUpPage(s.meta(c, "Sign up", "/signup"), views.SignUpForm{Kind: "bank"}, nil))
}

// errTooMany is the answer over a sign-up, reset or verify rate limit.
var errTooMany = echo.NewHTTPError(http.StatusTooManyRequests,
	"Too many requests from your network address or for this e-mail address. Wait a quarter of an hour and try again.")

func (s *Server) signUp(c echo.Context) error {
	f := keyport.SignUp{Organisation: c.FormValue("organisation"), Kind: keyport.ProviderKind(c.FormValue("kind")),
		Contact: c.FormValue("contact"), Email: c.FormValue("email"), Password: c.FormValue("password")}
	form := views.SignUpForm{Organisation: f.Organisation, Kind: string(f.Kind), Contact: f.Contact, Email: f.Email}
	// The network first: a client over its limit adds no address key.
	if !s.mails.allow(time.Now(), append(clientKeys("signup:", c), keyOf("signup:"+emailKey(f.Email)))...) {
		return errTooMany
	}
	if errs := f.Validate(); len(errs) > 0 {
		e := views.Errors{}
		for _, ie := range errs {
			e[ie.Field] = ie.Reason
		}
		return render(c, http.StatusUnprocessableEntity, views.SignUpPage(s.meta(c, "Sign up", "/signup"), form, e))
	}
	// An address that has an account is answered as a sign-up: its owner
	// gets a message, the form tells nobody (keyport.ErrAddressTaken).
	if _, err := s.svc.SignUpProvider(c.Request().Context(), f, s.linkBase(c)); err != nil && !errors.Is(err, keyport.ErrAddressTaken) {
		if e, ok := formErrors(err, nil); ok {
			return render(c, http.StatusUnprocessableEntity, views.SignUpPage(s.meta(c, "Sign up", "/signup"), form, e))
		}
		return err
	}
	// The next page names the address: carried in a one-minute cookie
	// (not the URL, which ends up in history and access logs).
	s.setCookie(c, signUpCookie, url.QueryEscape(strings.ToLower(strings.TrimSpace(f.Email))), time.Minute, http.SameSiteLaxMode)
	return c.Redirect(http.StatusSeeOther, "/signup/done")
}

// signUpCookie carries the address just signed up with to /signup/done.
const signUpCookie = "kp_signup"

func (s *Server) signUpDone(c echo.Context) error {
	email := ""
	if ck, err := c.Cookie(signUpCookie); err == nil {
		email, _ = url.QueryUnescape(ck.Value)
		s.setCookie(c, signUpCookie, "", -1, http.SameSiteLaxMode)
	}
	return render(c, http.StatusOK, views.SignUpDone(s.meta(c, "Check your e-mail", ""), email))
}

func (s *Server) verifyForm(c echo.Context) error {
	return render(c, http.StatusOK, views.VerifyPage(s.meta(c, "Confirm your e-mail address", ""), c.QueryParam("token"), nil))
}

func (s *Server) verify(c echo.Context) error {
	token := c.FormValue("token")
	if !s.mails.allow(time.Now(), clientKeys("verify:", c)...) {
		return errTooMany
	}
	if _, err := s.svc.VerifyEmail(c.Request().Context(), token); err != nil {
		if e, ok := formErrors(err, map[string]string{"token": ""}); ok {
			return render(c, http.StatusUnprocessableEntity, views.VerifyPage(s.meta(c, "Confirm your e-mail address", ""), token, e))
		}
		return err
	}
	s.flash(c, "good", "Your e-mail address is confirmed. Sign in to continue.")
	return c.Redirect(http.StatusSeeOther, "/login")
}

func (s *Server) loginForm(c echo.Context) error {
	if pageUser(c) != nil {
		return c.Redirect(http.StatusSeeOther, "/")
	}
	return render(c, http.StatusOK, views.LoginPage(s.meta(c, "Sign in", "/login"), views.LoginForm{Next: safeNext(c.QueryParam("next"))}, nil))
}

func (s *Server) login(c echo.Context) error {
	f := views.LoginForm{Email: c.FormValue("email"), Next: safeNext(c.FormValue("next")), NeedTOTP: c.FormValue("totp") != ""}
	page := func(status int, e views.Errors) error {
		return render(c, status, views.LoginPage(s.meta(c, "Sign in", "/login"), f, e))
	}
	if !s.logins.allow(time.Now(), clientKeys("", c)...) {
		return page(http.StatusTooManyRequests, views.Errors{"": "Too many sign-in attempts from your network address. Wait five minutes and try again."})
	}
	res, err := s.svc.Login(c.Request().Context(), f.Email, c.FormValue("password"), c.FormValue("totp"))
	var locked *keyport.LockedError
	var pk *keyport.PasskeyRequiredError
	if errors.As(err, &locked) {
		// A locked account is answered as an unknown address: the page
		// does not tell who has an account; its owner was told by e-mail.
		err = keyport.ErrWrongLogin
	}
	switch {
	case errors.As(err, &pk):
		return s.passkeyStep(c, f, pk)
	case errors.Is(err, keyport.ErrTOTPRequired):
		f.NeedTOTP = true
		return page(http.StatusUnauthorized, views.Errors{"totp": "Enter the 6-digit code from your authenticator app, with your password again."})
	case errors.Is(err, keyport.ErrAccountDisabled):
		return page(http.StatusForbidden, views.Errors{"": "This account is disabled. Ask another administrator to enable it."})
	case errors.Is(err, keyport.ErrNotVerified):
		return page(http.StatusForbidden, views.Errors{"": "Confirm your e-mail address first: open the link in the message we sent you."})
	case errors.Is(err, keyport.ErrUnauthenticated):
		msg := strings.TrimPrefix(err.Error(), keyport.ErrUnauthenticated.Error()+": ")
		return page(http.StatusUnauthorized, views.Errors{"password": upperFirst(msg) + "."})
	case err != nil:
		return err
	}
	return s.signedIn(c, res.Token, f.Next)
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (s *Server) logout(c echo.Context) error {
	if token, ok := c.Get("session_token").(string); ok {
		if err := s.svc.Logout(c.Request().Context(), token); err != nil {
			return err
		}
	}
	s.setCookie(c, s.sessionCookie(), "", -1, http.SameSiteLaxMode)
	s.flash(c, "info", "You are signed out.")
	return c.Redirect(http.StatusSeeOther, "/login")
}

func (s *Server) resetForm(c echo.Context) error {
	return render(c, http.StatusOK, views.ResetRequestPage(s.meta(c, "Reset your password", ""), "", false, nil))
}

func (s *Server) resetRequest(c echo.Context) error {
	email := c.FormValue("email")
	// The network first: a client over its limit adds no address key.
	if !s.mails.allow(time.Now(), append(clientKeys("reset:", c), keyOf("reset:"+emailKey(email)))...) {
		return errTooMany
	}
	if err := s.svc.RequestPasswordReset(c.Request().Context(), email, s.linkBase(c)); err != nil {
		if e, ok := formErrors(err, nil); ok {
			return render(c, http.StatusUnprocessableEntity, views.ResetRequestPage(s.meta(c, "Reset your password", ""), email, false, e))
		}
		return err
	}
	return render(c, http.StatusOK, views.ResetRequestPage(s.meta(c, "Reset your password", ""), email, true, nil))
}

func (s *Server) resetConfirmForm(c echo.Context) error {
	return render(c, http.StatusOK, views.ResetConfirmPage(s.meta(c, "Choose a new password", ""), c.QueryParam("token"), nil))
}

func (s *Server) resetConfirm(c echo.Context) error {
	token := c.FormValue("token")
	if !s.mails.allow(time.Now(), clientKeys("reset-confirm:", c)...) {
		return errTooMany
	}
	if err := s.svc.ResetPassword(c.Request().Context(), token, c.FormValue("password")); err != nil {
		if e, ok := formErrors(err, map[string]string{"token": ""}); ok {
			return render(c, http.StatusUnprocessableEntity, views.ResetConfirmPage(s.meta(c, "Choose a new password", ""), token, e))
		}
		return err
	}
	s.flash(c, "good", "Your password is changed and the account unlocked. Sign in with the new password.")
	return c.Redirect(http.StatusSeeOther, "/login")
}

// ---- Sign-in security: TOTP and passkeys ----

// securityBase is the security page of the signed-in user: the console's
// for an admin, the provider portal's otherwise.
func securityBase(c echo.Context) string {
	if pageUser(c).User.Admin {
		return "/admin/security"
	}
	return "/portal/security"
}

// securityView is the page's state for the signed-in user.
func (s *Server) securityView(c echo.Context) (views.SecurityView, error) {
	su := pageUser(c)
	keys, err := s.svc.ListPasskeys(c.Request().Context(), su.User)
	if err != nil {
		return views.SecurityView{}, err
	}
	v := views.SecurityView{Base: securityBase(c), Admin: su.User.Admin, TOTPOn: su.User.TOTPSealed != nil, Passkeys: keys}
	if s.rpErr != nil {
		v.PasskeysOff = "Passkeys are not available on this installation: " + s.passkeysOff() + "."
	}
	return v, nil
}

func (s *Server) securityMeta(c echo.Context) views.Meta {
	return s.meta(c, "Sign-in security", securityBase(c))
}

func (s *Server) securityPage(c echo.Context) error {
	v, err := s.securityView(c)
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.SecurityPage(s.securityMeta(c), v, nil))
}

func (s *Server) totpBegin(c echo.Context) error {
	su := pageUser(c)
	v, err := s.securityView(c)
	if err != nil {
		return err
	}
	m := s.securityMeta(c)
	en, err := s.svc.BeginTOTP(c.Request().Context(), su.User)
	if errors.Is(err, keyport.ErrUnavailable) {
		return render(c, http.StatusServiceUnavailable, views.SecurityPage(m, v,
			views.Errors{"": "Authenticator apps are not available on this installation (no HSM sealing key)."}))
	}
	if err != nil {
		return err
	}
	v.TOTP, v.Sealed = en, base64.StdEncoding.EncodeToString(en.Sealed)
	return render(c, http.StatusOK, views.SecurityPage(m, v, nil))
}

func (s *Server) totpConfirm(c echo.Context) error {
	su := pageUser(c)
	sealed, err := base64.StdEncoding.DecodeString(c.FormValue("sealed"))
	if err == nil {
		err = s.svc.ConfirmTOTP(c.Request().Context(), su.User, reauthForm(c), sealed, c.FormValue("code"))
	} else {
		err = keyport.Invalid("code", "the enrolment form was altered: start again")
	}
	if e, status, ok := reauthErrors(err); ok {
		v, verr := s.securityView(c)
		if verr != nil {
			return verr
		}
		// The enrolment form is gone (the user starts again), so what was
		// wrong in it is said above the page.
		return render(c, status, views.SecurityPage(s.securityMeta(c), v, aboveTheForm(e, "Set up the authenticator app again.")))
	}
	if err != nil {
		return err
	}
	s.flash(c, "good", "Authenticator app turned on: sign-in now asks for its code.")
	return c.Redirect(http.StatusSeeOther, securityBase(c))
}

func sessionToken(c echo.Context) string {
	t, _ := c.Get("session_token").(string)
	return t
}

// passkeyBegin starts a registration: the page comes back with the
// browser's options and a name field.
func (s *Server) passkeyBegin(c echo.Context) error {
	v, err := s.securityView(c)
	if err != nil {
		return err
	}
	m := s.securityMeta(c)
	if s.rpErr != nil {
		// The page says why; nothing was begun.
		return render(c, http.StatusConflict, views.SecurityPage(m, v, nil))
	}
	en, err := s.svc.BeginPasskeyEnrol(c.Request().Context(), s.rp, pageUser(c).User, reauthForm(c), sessionToken(c))
	if err != nil {
		if e, status, ok := reauthErrors(err); ok {
			v.ReauthFor = "passkey-add"
			return render(c, status, views.SecurityPage(m, v, e))
		}
		return err
	}
	v.Enrol = &views.PasskeyEnrol{Token: en.Token, Options: string(en.Options)}
	return render(c, http.StatusOK, views.SecurityPage(m, v, nil))
}

// passkeyFinish stores the passkey the browser created.
func (s *Server) passkeyFinish(c echo.Context) error {
	if s.rpErr != nil {
		v, err := s.securityView(c)
		if err != nil {
			return err
		}
		return render(c, http.StatusConflict, views.SecurityPage(s.securityMeta(c), v, nil))
	}
	pk, err := s.svc.FinishPasskeyEnrol(c.Request().Context(), s.rp, pageUser(c).User, sessionToken(c),
		c.FormValue("token"), c.FormValue("name"), c.FormValue("credential"))
	if err != nil {
		e, ok := formErrors(err, nil)
		if !ok {
			return err
		}
		v, verr := s.securityView(c)
		if verr != nil {
			return verr
		}
		return render(c, http.StatusUnprocessableEntity, views.SecurityPage(s.securityMeta(c), v, e))
	}
	msg := "Passkey “" + pk.Name + "” added: sign-in now asks for it after your password."
	if pageUser(c).User.Admin {
		msg = "Passkey “" + pk.Name + "” added: the console now asks for it after your password."
	}
	s.flash(c, "good", msg)
	return c.Redirect(http.StatusSeeOther, securityBase(c))
}

// passkeyRemovePage asks for the current password (and TOTP code) before
// a passkey goes.
func (s *Server) passkeyRemovePage(c echo.Context) error {
	su := pageUser(c)
	k, err := s.svc.Passkey(c.Request().Context(), su.User, c.Param("id"))
	if err != nil {
		return err
	}
	return render(c, http.StatusOK, views.PasskeyRemovePage(s.securityMeta(c), securityBase(c), *k, su.User.TOTPSealed != nil, nil))
}

func (s *Server) passkeyRemove(c echo.Context) error {
	su := pageUser(c)
	err := s.svc.RemovePasskey(c.Request().Context(), su.User, reauthForm(c), c.Param("id"))
	if e, status, ok := reauthErrors(err); ok {
		k, kerr := s.svc.Passkey(c.Request().Context(), su.User, c.Param("id"))
		if kerr != nil {
			return kerr
		}
		return render(c, status, views.PasskeyRemovePage(s.securityMeta(c), securityBase(c), *k, su.User.TOTPSealed != nil, e))
	}
	if err != nil {
		return err
	}
	s.flash(c, "good", "Passkey removed: it cannot sign in to this account any more.")
	return c.Redirect(http.StatusSeeOther, securityBase(c))
}

// passkeysOff says why this installation has no relying party.
func (s *Server) passkeysOff() string {
	return strings.TrimPrefix(s.rpErr.Error(), "keyport: ")
}

// passkeyCookie holds the token of a sign-in ceremony between the password
// step and the passkey's answer.
func (s *Server) passkeyCookie() string {
	if s.opts.InsecureCookies {
		return "kp_passkey"
	}
	return "__Host-kp_passkey"
}

// passkeyStep answers a right password on an account with passkeys: the
// ceremony's token in a cookie, and the page that asks the authenticator.
func (s *Server) passkeyStep(c echo.Context, f views.LoginForm, pk *keyport.PasskeyRequiredError) error {
	s.setCookie(c, s.passkeyCookie(), pk.Token, keyport.PasskeyCeremonyLife, http.SameSiteStrictMode)
	st := views.PasskeyStep{Options: string(pk.Options(s.rp)), Next: f.Next, Email: f.Email, TOTP: pk.TOTP}
	if s.rpErr != nil {
		st.Off = "Passkeys are not available on this installation (" + s.passkeysOff() + "): the sign-in cannot be completed with one."
	}
	return render(c, http.StatusUnauthorized, views.PasskeyStepPage(s.meta(c, "Confirm with your passkey", "/login"), st, nil))
}

// passkeyLogin takes the authenticator's answer and opens the session.
func (s *Server) passkeyLogin(c echo.Context) error {
	f := views.LoginForm{Next: safeNext(c.FormValue("next"))}
	page := func(status int, e views.Errors) error {
		return render(c, status, views.LoginPage(s.meta(c, "Sign in", "/login"), f, e))
	}
	token := ""
	if ck, err := c.Cookie(s.passkeyCookie()); err == nil {
		token = ck.Value
	}
	// The ceremony works once, whatever the answer.
	s.setCookie(c, s.passkeyCookie(), "", -1, http.SameSiteStrictMode)
	if !s.logins.allow(time.Now(), clientKeys("", c)...) {
		return page(http.StatusTooManyRequests, views.Errors{"": "Too many sign-in attempts from your network address. Wait five minutes and try again."})
	}
	if s.rpErr != nil {
		return page(http.StatusConflict, views.Errors{"": "Passkeys are not available on this installation: " + s.passkeysOff() + "."})
	}
	res, err := s.svc.FinishPasskeySignIn(c.Request().Context(), s.rp, token, c.FormValue("credential"))
	var locked *keyport.LockedError
	switch {
	case errors.As(err, &locked):
		return page(http.StatusForbidden, views.Errors{"": upperFirst(locked.Error()) + "."})
	case errors.Is(err, keyport.ErrAccountDisabled):
		return page(http.StatusForbidden, views.Errors{"": "This account is disabled. Ask another administrator to enable it."})
	case errors.Is(err, keyport.ErrUnauthenticated):
		msg := strings.TrimPrefix(err.Error(), keyport.ErrUnauthenticated.Error()+": ")
		return page(http.StatusUnauthorized, views.Errors{"": upperFirst(msg) + "."})
	case err != nil:
		return err
	}
	return s.signedIn(c, res.Token, f.Next)
}

// reauthForm is the current password and TOTP code a form that changes
// sign-in settings or the webhook, or makes an API token, carries
// (views.ReauthFields).
func reauthForm(c echo.Context) keyport.Reauth {
	return keyport.Reauth{Password: c.FormValue("current_password"), Code: c.FormValue("current_code")}
}

// reauthErrors turns a failed change into the form's messages: a wrong
// password or code (or other input) next to its field (422), a locked
// account above the form (403). ok is false for other errors.
func reauthErrors(err error) (views.Errors, int, bool) {
	var locked *keyport.LockedError
	if errors.As(err, &locked) {
		return views.Errors{"": upperFirst(locked.Error()) + ". Nothing was changed."}, http.StatusForbidden, true
	}
	if e, ok := formErrors(err, nil); ok {
		return e, http.StatusUnprocessableEntity, true
	}
	return nil, 0, false
}

// aboveTheForm moves the messages of fields a page no longer shows to the
// message above it, followed by what to do.
func aboveTheForm(e views.Errors, then string) views.Errors {
	var msgs []string
	for _, f := range []string{"", "code", "current_password", "current_code"} {
		if m, ok := e[f]; ok {
			msgs = append(msgs, strings.TrimSuffix(upperFirst(m), "."))
		}
	}
	return views.Errors{"": strings.Join(msgs, ". ") + ". " + then}
}

func (s *Server) totpDisable(c echo.Context) error {
	su := pageUser(c)
	err := s.svc.DisableTOTP(c.Request().Context(), su.User.ID, reauthForm(c))
	if e, status, ok := reauthErrors(err); ok {
		v, verr := s.securityView(c)
		if verr != nil {
			return verr
		}
		v.ReauthFor = "totp"
		return render(c, status, views.SecurityPage(s.securityMeta(c), v, e))
	}
	if err != nil {
		return err
	}
	msg := "Authenticator app turned off: sign-in asks for the password only."
	if keys, _ := s.svc.ListPasskeys(c.Request().Context(), su.User); len(keys) > 0 {
		msg = "Authenticator app turned off: sign-in asks for the password and a passkey."
	}
	s.flash(c, "good", msg)
	return c.Redirect(http.StatusSeeOther, securityBase(c))
}

func (s *Server) passwordPage(c echo.Context) error {
	m := s.meta(c, "Change your password", securityBase(c))
	if pageUser(c).MustChangePassword {
		m.FlashKind, m.Flash = "bad", "Your password was made for you when your account was created, so someone else has seen it. Choose your own to go on."
	}
	return render(c, http.StatusOK, views.PasswordPage(m, securityBase(c), pageUser(c).User.TOTPSealed != nil, nil))
}

func (s *Server) changePassword(c echo.Context) error {
	su := pageUser(c)
	session, _ := c.Get("session_token").(string)
	err := s.svc.ChangePassword(c.Request().Context(), su.User.ID, session, reauthForm(c), c.FormValue("password"))
	if e, status, ok := reauthErrors(err); ok {
		return render(c, status, views.PasswordPage(s.meta(c, "Change your password", securityBase(c)), securityBase(c), su.User.TOTPSealed != nil, e))
	}
	if err != nil {
		return err
	}
	s.flash(c, "good", "Your password is changed.")
	return c.Redirect(http.StatusSeeOther, securityBase(c))
}

// signedIn hands the browser its new session and sends it on to next (a
// path the sign-in form checked), or to / by default.
func (s *Server) signedIn(c echo.Context, token, next string) error {
	s.setCookie(c, s.sessionCookie(), token, keyport.SessionLifetime, http.SameSiteLaxMode)
	if next == "" {
		next = "/"
	}
	return c.Redirect(http.StatusSeeOther, next)
}
