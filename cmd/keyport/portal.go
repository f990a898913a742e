package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/keyport/keyport/web"
	"github.com/keyport/keyport/web/views"
)

// portalFlags are serve's settings for the browser portal.
type portalFlags struct {
	publicURL       string
	insecureCookies bool
	smtpURL         string
}

// bindPortalFlags registers the portal's flags on serve's flag set.
func bindPortalFlags(fs *flag.FlagSet) (*portalFlags, error) {
	pf := &portalFlags{}
	pub, err := env("PUBLIC_URL", "")
	if err != nil {
		return nil, err
	}
	insecure, err := env("DEV_INSECURE_COOKIES", "")
	if err != nil {
		return nil, err
	}
	smtpURL, err := env("SMTP_URL", "")
	if err != nil {
		return nil, err
	}
	fs.StringVar(&pf.publicURL, "public-url", pub, "the portal's address as users reach it, for e-mail links and as the passkey (WebAuthn) relying party: a host name, https or http://localhost (KEYPORT_PUBLIC_URL); default http://<addr>")
	fs.BoolVar(&pf.insecureCookies, "dev-insecure-cookies", insecure == "1" || insecure == "true",
		"development only: session cookies without Secure, so plain http://127.0.0.1 works (KEYPORT_DEV_INSECURE_COOKIES=1); refused on any non-loopback --addr")
	fs.StringVar(&pf.smtpURL, "smtp-url", smtpURL,
		"send account e-mail via SMTP: smtp://user:pass@host:587?from=keyport@example.com (KEYPORT_SMTP_URL, KEYPORT_SMTP_URL_FILE); without it e-mail is not sent (with --dev-insecure-cookies: printed to stderr)")
	return pf, nil
}

// webOptions builds the portal's options, refusing insecure cookies unless
// the server listens on a loopback address only.
func (pf *portalFlags) webOptions(a *app) (web.Options, error) {
	o := web.Options{Log: a.log, SpoolDir: a.cfg.DataDir, PublicURL: pf.publicURL, InsecureCookies: pf.insecureCookies}
	if o.PublicURL == "" {
		o.PublicURL = defaultPublicURL(a.cfg.Addr)
	}
	if pf.insecureCookies {
		host, _, err := net.SplitHostPort(a.cfg.Addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return o, fmt.Errorf("serve: --dev-insecure-cookies is for http://127.0.0.1 only; --addr is %s", a.cfg.Addr)
		}
		a.log.Warn("portal cookies are not Secure (development mode, loopback only)")
	}
	switch {
	case pf.smtpURL != "":
		m, err := newSMTPMailer(pf.smtpURL)
		if err != nil {
			return o, err
		}
		a.svc.Mailer = m
	case pf.insecureCookies:
		// Development on loopback without a mail server: each e-mail, link
		// included, is printed to stderr once, and stored nowhere.
		a.svc.Mailer = &devMailer{w: stderr}
		a.log.Warn("no --smtp-url: e-mails are printed to stderr (development mode, loopback only)")
	default:
		a.log.Warn("no --smtp-url: e-mails are not sent, and their links are lost (the outbox keeps them without links)")
	}
	h := a.hsm
	a.svc.Sealer = h // TOTP secrets are sealed by the HSM
	o.HSMStatus = func(ctx context.Context) (views.HSMStatus, error) {
		st, err := h.Status(ctx)
		if err != nil {
			return views.HSMStatus{}, err
		}
		out := views.HSMStatus{Token: st.Token, OAEPHash: st.OAEPHash}
		for _, k := range st.Keys {
			out.Keys = append(out.Keys, views.HSMKey{Label: k.Label, Class: k.Class, Type: k.Type})
		}
		return out, nil
	}
	return o, nil
}

// devMailer is the development Mailer: it prints each e-mail, link
// included, to the server's stderr once. It is used only with
// --dev-insecure-cookies (loopback only) and no --smtp-url.
type devMailer struct {
	mu sync.Mutex
	w  io.Writer
}

// Send prints the message.
func (m *devMailer) Send(_ context.Context, to, subject, body string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, err := fmt.Fprintf(m.w, "\n--- e-mail (development mode: printed, not sent) ---\nTo: %s\nSubject: %s\n\n%s\n--- end of e-mail ---\n\n", to, subject, body)
	return err
}

// smtpMailer sends account e-mail through an SMTP submission server with
// STARTTLS (smtp://, port 587) or implicit TLS (smtps://, port 465).
type smtpMailer struct {
	addr, host, from string
	auth             smtp.Auth
	implicitTLS      bool
}

func newSMTPMailer(raw string) (*smtpMailer, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "smtp" && u.Scheme != "smtps") || u.Hostname() == "" {
		return nil, errors.New("config: --smtp-url must look like smtp://user:pass@host:587?from=keyport@example.com")
	}
	m := &smtpMailer{host: u.Hostname(), from: u.Query().Get("from"), implicitTLS: u.Scheme == "smtps"}
	port := u.Port()
	if port == "" {
		port = map[bool]string{true: "465", false: "587"}[m.implicitTLS]
	}
	m.addr = net.JoinHostPort(m.host, port)
	if m.from == "" {
		return nil, errors.New("config: --smtp-url needs ?from=<sender address>")
	}
	if u.User != nil {
		pw, _ := u.User.Password()
		m.auth = smtp.PlainAuth("", u.User.Username(), pw, m.host)
	}
	return m, nil
}

// smtpExchangeTimeout bounds one message's SMTP exchange, dial excluded.
var smtpExchangeTimeout = 30 * time.Second

// Send delivers one plain-text message.
func (m *smtpMailer) Send(ctx context.Context, to, subject, body string) error {
	if strings.ContainsAny(to+subject, "\r\n") {
		return errors.New("smtp: header injection refused")
	}
	msg := "From: " + m.from + "\r\nTo: " + to + "\r\nSubject: " + subject + "\r\nDate: " + time.Now().UTC().Format(time.RFC1123Z) +
		"\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + strings.ReplaceAll(body, "\n", "\r\n")
	d := net.Dialer{Timeout: 10 * time.Second}
	var conn net.Conn
	var err error
	if m.implicitTLS {
		conn, err = (&tls.Dialer{NetDialer: &d, Config: &tls.Config{ServerName: m.host}}).DialContext(ctx, "tcp", m.addr)
	} else {
		conn, err = d.DialContext(ctx, "tcp", m.addr)
	}
	if err != nil {
		return fmt.Errorf("smtp: dial %s: %w", m.addr, err)
	}
	// The whole exchange is bounded: a server that stops answering does
	// not hold the message's sender (and keyport's shutdown) for ever.
	deadline := time.Now().Add(smtpExchangeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	c, err := smtp.NewClient(conn, m.host)
	if err != nil {
		conn.Close()
		return fmt.Errorf("smtp: %w", err)
	}
	defer c.Close()
	if !m.implicitTLS {
		if err := c.StartTLS(&tls.Config{ServerName: m.host}); err != nil {
			return fmt.Errorf("smtp: STARTTLS: %w", err)
		}
	}
	if m.auth != nil {
		if err := c.Auth(m.auth); err != nil {
			return fmt.Errorf("smtp: auth: %w", err)
		}
	}
	if err := c.Mail(m.from); err != nil {
		return fmt.Errorf("smtp: MAIL FROM: %w", err)
	}
	if err := c.Rcpt(to); err != nil {
		return fmt.Errorf("smtp: RCPT TO: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("smtp: DATA: %w", err)
	}
	if _, err := w.Write([]byte(msg)); err != nil {
		return fmt.Errorf("smtp: write: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("smtp: end of data: %w", err)
	}
	return c.Quit()
}

// cmdAdminUserAdd creates an issuer-admin user for the portal's console and
// prints its generated password once. The admin can change it with
// "Forgot your password?" (which needs SMTP, or development mode).
func cmdAdminUserAdd(ctx context.Context, args []string) error {
	cfg, fs, op, err := parseOperatorCommand("admin user add", args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return exitError{2, errors.New("usage: keyport admin user add EMAIL [--operator NAME]")}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	pw, err := a.svc.AddAdminUser(ctx, op, fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "admin user %s created; password (shown once): %s\n", fs.Arg(0), pw)
	return nil
}

// defaultPublicURL is the portal's address when --public-url is not given:
// http://<addr>, with a loopback address named localhost, so that on a
// development machine (`make run`) passkeys work: WebAuthn accepts plain
// HTTP only for localhost, and never an IP address as relying party.
func defaultPublicURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err == nil {
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return "http://" + net.JoinHostPort("localhost", port)
		}
	}
	return "http://" + addr
}
