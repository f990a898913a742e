package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
	"github.com/keyport/keyport/web"
)

func cmdServe(ctx context.Context, args []string) error {
	var cfg config
	fs, err := newFlags("serve", &cfg)
	if err != nil {
		return err
	}
	migrate := fs.Bool("migrate", true, "apply pending database migrations at start")
	portal, err := bindPortalFlags(fs)
	if err != nil {
		return err
	}
	hooks, err := bindCardLinkFlags(fs)
	if err != nil {
		return err
	}
	sandboxCfg, err := bindSandboxFlags(fs)
	if err != nil {
		return err
	}
	if err := parse(fs, &cfg, args); err != nil {
		return err
	}
	demo := demoOf(ctx) // nil unless keyport demo runs serve
	if err := demo.configure(&cfg); err != nil {
		return err
	}
	// The database's use lock, shared with the other servers (replicas),
	// from before the store migrates until after it has closed: a
	// restore is refused while any server holds it, and serve while a
	// restore does.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return err
	}
	held, err := store.HoldForServe(ctx, cfg.DB)
	if errors.Is(err, store.ErrInUse) {
		return exitError{5, err}
	}
	if err != nil {
		return err
	}
	defer held.Close()
	a, err := openHolding(ctx, cfg, *migrate, held)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := demo.checkDatabase(ctx, a); err != nil {
		return err
	}
	created, err := a.hsm.Init(ctx)
	if err != nil {
		return err
	}
	for _, l := range created {
		a.log.Info("hsm key created", "label", l)
	}
	if legacy, err := a.hsm.LegacyKeys(ctx); err != nil {
		return err
	} else if !legacy.Empty() {
		return errors.New("the token holds master keys that derive card keys (made before keys were wrapped at rest): run `keyport hsm init` once to migrate them, then serve")
	}
	if err := checkKeys(ctx, a); err != nil {
		return err
	}
	if err := demo.setUp(ctx, a); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return err
	}
	if a.svc.DualControl.Off() {
		a.log.Warn("dual control is off (--dual-control 1, development): one admin alone may export module PSKs and transport keys, create admin tokens and approve providers")
	}
	warnSharedMSISDNs(ctx, a.log, a.store)
	if err := firstRunAdminToken(ctx, a); err != nil {
		return err
	}
	a.svc.Metrics = web.NewServiceMetrics()
	// The SMPP link first: card-link's delivery worker triggers through it.
	stopSMPP, err := startSMPP(a)
	if err != nil {
		return err
	}
	defer stopSMPP()
	stopCardLink, admin, err := startCardLink(ctx, a, hooks)
	if err != nil {
		return err
	}
	defer stopCardLink()
	defer startCampaigns(ctx, a)()
	defer startImportSweep(ctx, a)()
	webOpts, err := portal.webOptions(a)
	if err != nil {
		return err
	}
	if admin != nil {
		webOpts.AdminListener = admin.Accepting
	}
	webOpts.Ready = readyChecks(a)
	if sandboxCfg.on || demo.on() {
		sb, err := startSandbox(ctx, a, sandboxCfg, hooks, sandboxOptions{})
		if err != nil {
			return err
		}
		defer sb.Close()
		webOpts.Sandbox = sb.sb
		if demo.on() {
			demo.sandboxEIDs = sb.eids
		}
	}
	stopMetrics, err := startMetrics(a, admin)
	if err != nil {
		return err
	}
	defer stopMetrics()
	webOpts.Demo = demo.on()
	stopDemo, err := demo.start(ctx, a, ln.Addr().String())
	if err != nil {
		return err
	}
	defer stopDemo()
	srv := &http.Server{Handler: web.New(a.svc, webOpts), ReadHeaderTimeout: web.ReadHeaderTimeout,
		ReadTimeout: web.ReadTimeout, WriteTimeout: web.WriteTimeout, IdleTimeout: web.IdleTimeout,
		MaxHeaderBytes: web.MaxHeaderBytes}
	a.log.Info("keyport serving", "addr", "http://"+ln.Addr().String(), "db", redactDSN(cfg.DB))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	var lost error
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	case <-held.Lost():
		// A restore took (or may have taken) the database while the
		// lock's PostgreSQL session was gone: stop rather than serve
		// stale state.
		lost = held.Err()
		a.log.Error("the database's use lock was lost: stopping", "err", lost)
	}
	shut, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	a.svc.Drain() // the e-mails still being sent after their answers
	if lost != nil {
		return exitError{5, lost}
	}
	a.log.Info("keyport stopped")
	return nil
}

// firstRunAdminToken makes an issuer-admin token the first time keyport
// serves a data directory, so that a new installation can be used at once.
// The token goes to a file in the data directory (mode 0600), never to the
// log stream: only the file's path is printed.
func firstRunAdminToken(ctx context.Context, a *app) error {
	marker := filepath.Join(a.cfg.DataDir, "admin-token-issued")
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	// The token is owned by the OS user serving for the first time.
	op, err := operator("first-run")
	if err != nil {
		return err
	}
	if u, uerr := user.Current(); uerr == nil {
		if named, nerr := operator(u.Username); nerr == nil {
			op = named
		}
	}
	token, t, err := a.svc.CreateFirstAdminToken(ctx, op, "first-run")
	if errors.Is(err, keyport.ErrConflict) {
		// Admin tokens were made before the first serve (keyport admin
		// token): this is no first run.
		return os.WriteFile(marker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600)
	}
	if err != nil {
		return err
	}
	path := filepath.Join(a.cfg.DataDir, firstRunTokenFile)
	if err := writeSecretFile(path, token+"\n"); err != nil {
		return err
	}
	if err := os.WriteFile(marker, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return err
	}
	fmt.Fprintf(stderr, `
keyport is set up. An issuer-admin API token (expires %s) is in
    %s
(mode 0600; make more with "keyport admin token", list and revoke them with "keyport admin token list|revoke").

Try:  curl -s -H "Authorization: Bearer $(cat %s)" http://%s/api/v1/admin/audit
Add a provider:  %s provider add "Example Bank" --email ops@example.com --kind bank
Portal admin:    %s admin user add you@example.com   (then sign in at %s/login)
%s
`, t.ExpiresAt.Format("2006-01-02"), path, path, a.cfg.Addr, cliPrefix(&a.cfg), cliPrefix(&a.cfg), defaultPublicURL(a.cfg.Addr), cliSameStore(&a.cfg))
	return nil
}

// cliPrefix is how the command lines serve prints start: the environment
// that makes a CLI command act on this deployment as serve does, then the
// binary. The data directory always; dual control when serve runs with
// other than the default, since a provider added under the default waits
// for a second admin that a development setup (make run) does not have.
func cliPrefix(c *config) string {
	p := "KEYPORT_DATA_DIR=" + c.DataDir
	if c.DualControl != defaultDualControl {
		p += " KEYPORT_DUAL_CONTROL=" + strconv.Itoa(c.DualControl)
	}
	return p + " " + os.Args[0]
}

// cliSameStore is the line said under those command lines when serve was
// given its database or HSM: they are not printed (a database URL may hold
// a password), so the commands need them set as serve had them.
func cliSameStore(c *config) string {
	if c.storeInDataDir() {
		return ""
	}
	return "(run them with the KEYPORT_DB and KEYPORT_HSM this serve has: they are not printed, since a database URL may hold a password)\n"
}

// firstRunTokenFile is the first-run admin token's file in the data directory.
const firstRunTokenFile = "admin-token"

// writeSecretFile writes data to path readable by its owner only, also when
// the file was there before with a wider mode.
func writeSecretFile(path, data string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// redactDSN hides a password in a postgres URL for the log.
func redactDSN(dsn string) string {
	for i := 0; i+3 < len(dsn); i++ {
		if dsn[i:i+3] == "://" {
			rest := dsn[i+3:]
			for j := 0; j < len(rest); j++ {
				if rest[j] == '@' {
					for k := 0; k < j; k++ {
						if rest[k] == ':' {
							return dsn[:i+3] + rest[:k] + ":***" + rest[j:]
						}
					}
				}
				if rest[j] == '/' {
					break
				}
			}
		}
	}
	return dsn
}
