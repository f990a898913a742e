package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/sandbox"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/perso"
	"github.com/keyport/keyport/store"
)

// The provider sandbox (README, "Provider sandbox") is wired here: a second
// keyport.Service over its own SQLite file and SoftHSM token under
// <data-dir>/sandbox, a shared pool of virtual modules (vcard) personalized
// by keyport's own station, an admin server of its own on a loopback port,
// a handset agent per module in this process, the fault book's wrappers
// between agent and card and between agent and server, and a delivery
// worker sending its webhooks. Production rows are only read.

// Sandbox names.
const (
	sandboxDirName    = "sandbox"
	sandboxMarkerName = "sandbox.json"
	sandboxFaultsName = "faults.json"
	sandboxBatch      = "sandbox"
	sandboxTokenLabel = "keyport-sandbox"
	sandboxOperator   = "sandbox"
)

// sandboxFlags are serve's sandbox settings.
type sandboxFlags struct {
	on               bool
	hsm              string // the sandbox's token; default a SoftHSM token beside the default one
	modules, domains int
	expiry           time.Duration
}

func bindSandboxFlags(fs *flag.FlagSet) (*sandboxFlags, error) {
	sf := &sandboxFlags{}
	on, err := env("SANDBOX", "")
	if err != nil {
		return nil, err
	}
	h, err := env("SANDBOX_HSM", "")
	if err != nil {
		return nil, err
	}
	fs.BoolVar(&sf.on, "sandbox", on == "1" || on == "true", "also serve the provider sandbox: virtual modules with faults, under /api/v1/sandbox and /portal/sandbox, its state in <data-dir>/sandbox (KEYPORT_SANDBOX=1)")
	fs.StringVar(&sf.hsm, "sandbox-hsm", h, "the sandbox's own PKCS#11 token (RFC 7512 URI; KEYPORT_SANDBOX_HSM); default a SoftHSM token labelled "+sandboxTokenLabel+" beside the default token, which needs --hsm unset")
	fs.IntVar(&sf.modules, "sandbox-modules", 3, "virtual modules in the sandbox's shared pool (the first time)")
	fs.IntVar(&sf.domains, "sandbox-domains", 4, "unassigned domains on each sandbox module (the first time)")
	fs.DurationVar(&sf.expiry, "sandbox-expiry", 10*time.Minute, "how long a sandbox job waits for its module before it expires")
	return sf, nil
}

// sandboxMarker is <data-dir>/sandbox/sandbox.json.
type sandboxMarker struct {
	Sandbox bool          `json:"sandbox"`
	Note    string        `json:"note"`
	Ready   bool          `json:"ready"`
	Domains int           `json:"domains"`
	EIDs    []keyport.EID `json:"eids,omitempty"`
}

// sandboxRun is the running sandbox.
type sandboxRun struct {
	app   *app
	book  *sandbox.Book
	sb    *keyport.Sandbox
	cards []*vcard.Card
	eids  []keyport.EID
	// adminAddr is where the sandbox's admin server listens.
	adminAddr string
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	srv       *cardlink.AdminServer
}

// sandboxOptions are what tests change.
type sandboxOptions struct {
	// WebhookHTTP, if set, sends the sandbox's webhooks (tests: a client
	// that trusts the test receiver's certificate).
	WebhookHTTP *http.Client
	// Tick is the delivery worker's period (default 1 s).
	Tick time.Duration
	// Backoff is the first retry delay of wake-ups (default 2 s).
	Backoff time.Duration
}

// startSandbox opens and starts the sandbox of production app prod.
func startSandbox(ctx context.Context, prod *app, sf *sandboxFlags, hooks *cardLinkFlags, o sandboxOptions) (*sandboxRun, error) {
	if sf.modules < 1 || sf.modules > 20 {
		return nil, exitError{2, fmt.Errorf("serve: --sandbox-modules must be 1 to 20, got %d", sf.modules)}
	}
	if sf.domains < 1 || sf.domains > perso.MaxDomains {
		return nil, exitError{2, fmt.Errorf("serve: --sandbox-domains must be 1 to %d, got %d", perso.MaxDomains, sf.domains)}
	}
	if sf.expiry <= 0 {
		return nil, exitError{2, errors.New("serve: --sandbox-expiry must be positive")}
	}
	dir := filepath.Join(prod.cfg.DataDir, sandboxDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	uri := sf.hsm
	if uri == "" {
		if prod.cfg.HSM != "" {
			return nil, exitError{2, errors.New("serve: --sandbox with --hsm needs --sandbox-hsm (KEYPORT_SANDBOX_HSM): the sandbox keeps its keys in a token of its own")}
		}
		var err error
		if uri, err = sandboxToken(dir); err != nil {
			return nil, err
		}
	}
	log := prod.log.With("sandbox", true)
	st, err := store.OpenOptions{Migrate: true}.Open(ctx, filepath.Join(dir, "keyport.db"))
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	h, err := hsm.Open(ctx, hsm.Config{URI: uri, OAEPHash: keyport.OAEPHash(prod.cfg.OAEPHash), PoolSize: prod.cfg.HSMSessions,
		Exclusive: st.Exclusive})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	a := &app{cfg: prod.cfg, log: log, store: st, hsm: h}
	a.cfg.DataDir, a.cfg.DB, a.cfg.HSM = dir, filepath.Join(dir, "keyport.db"), uri
	book, err := sandbox.Open(filepath.Join(dir, sandboxFaultsName))
	if err != nil {
		a.Close()
		return nil, err
	}
	backoff := o.Backoff
	if backoff <= 0 {
		backoff = 2 * time.Second
	}
	a.svc = &keyport.Service{Store: st, Custody: h, Link: h, Log: log, Writes: st.Group(),
		DualControl:   keyport.DualControl{Admins: 1},
		SandboxFaults: book,
		Delivery: keyport.DeliveryPolicy{Expiry: sf.expiry, Backoff: backoff, MaxBackoff: 30 * time.Second,
			Lease: 3 * time.Second, DevLoopbackWebhooks: hooks.loopbackHooks}}
	r := &sandboxRun{app: a, book: book}
	if err := r.setUp(ctx, sf); err != nil {
		a.Close()
		return nil, err
	}
	r.sb = &keyport.Sandbox{Prod: prod.svc, Box: a.svc, Modules: func() []keyport.EID { return r.eids }}
	if err := r.start(ctx, hooks, o); err != nil {
		a.Close()
		return nil, err
	}
	log.Info("provider sandbox", "modules", len(r.eids), "dir", dir, "admin_addr", r.adminAddr)
	return r, nil
}

// sandboxToken makes sure the sandbox's SoftHSM token exists beside the
// default token (SoftHSM reads one configuration a process) and returns
// its URI. Its PINs are in 0600 files in the sandbox directory.
func sandboxToken(dir string) (string, error) {
	if _, _, err := defaultToken(filepath.Dir(dir)); err != nil {
		return "", err
	}
	module, err := findSoftHSM()
	if err != nil {
		return "", err
	}
	pinFile := filepath.Join(dir, "user.pin")
	if _, err := os.Stat(pinFile); errors.Is(err, fs.ErrNotExist) {
		pin, so := randomPIN(), randomPIN()
		if err := hsm.InitToken(module, sandboxTokenLabel, so, pin); err != nil {
			return "", fmt.Errorf("sandbox token: %w", err)
		}
		if err := writeSecretFile(pinFile, pin); err != nil {
			return "", err
		}
		if err := writeSecretFile(filepath.Join(dir, "so.pin"), so); err != nil {
			return "", err
		}
	}
	return (&hsm.URI{Token: sandboxTokenLabel, ModulePath: module, PINSource: pinFile}).String(), nil
}

func (r *sandboxRun) operator() keyport.Principal {
	return keyport.Principal{Admin: true, Operator: true, Name: sandboxOperator}
}

// setUp loads the sandbox's modules, making and personalizing them the
// first time.
func (r *sandboxRun) setUp(ctx context.Context, sf *sandboxFlags) error {
	a := r.app
	if _, err := a.hsm.Init(ctx); err != nil {
		return err
	}
	markerPath := filepath.Join(a.cfg.DataDir, sandboxMarkerName)
	var mark sandboxMarker
	if b, err := os.ReadFile(markerPath); err == nil {
		if err := json.Unmarshal(b, &mark); err != nil || !mark.Sandbox {
			return fmt.Errorf("sandbox: %s is not a sandbox marker", markerPath)
		}
		if !mark.Ready {
			return fmt.Errorf("sandbox: an earlier setup of %s stopped half-way: remove that directory (sandbox data only) and serve again", a.cfg.DataDir)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	modDir := filepath.Join(a.cfg.DataDir, "modules")
	if err := os.MkdirAll(modDir, 0o700); err != nil {
		return err
	}
	n := sf.modules
	if mark.Ready {
		n = len(mark.EIDs)
	}
	for i := range n {
		path := filepath.Join(modDir, fmt.Sprintf("module-%d.json", i+1))
		card, err := vcard.Load(path, vcard.Config{StatePath: path})
		if errors.Is(err, fs.ErrNotExist) && !mark.Ready {
			card, err = vcard.New(sandboxEID(i+1), vcard.Config{StatePath: path})
		}
		if err != nil {
			return fmt.Errorf("sandbox: module %d: %w", i+1, err)
		}
		r.cards = append(r.cards, card)
		r.eids = append(r.eids, keyport.EID(card.EID()))
	}
	if mark.Ready {
		return nil
	}
	mark = sandboxMarker{Sandbox: true, Note: "provider sandbox data (keyport serve --sandbox): virtual modules only", Domains: sf.domains}
	op := r.operator()
	if _, _, err := a.svc.CreateBatch(ctx, op, sandboxBatch, "", nil); err != nil && !errors.Is(err, keyport.ErrConflict) {
		return err
	}
	st := &perso.Station{Service: a.svc, Keys: a.hsm}
	for i, card := range r.cards {
		rep, err := st.Personalize(ctx, op, card, perso.Request{Batch: sandboxBatch, Domains: sf.domains})
		if err != nil {
			return fmt.Errorf("sandbox: personalizing module %d: %w", i+1, err)
		}
		mark.EIDs = append(mark.EIDs, rep.EID)
	}
	mark.Ready = true
	b, _ := json.MarshalIndent(mark, "", "  ")
	return os.WriteFile(markerPath, append(b, '\n'), 0o600)
}

// sandboxEID is the EID of sandbox module n: 89049032, 9s, n in six digits
// and the check digits (mod 97 == 1); demo EIDs have zeros instead.
func sandboxEID(n int) string { return numberedEID("890490329999999999999999", n) }

// start runs the sandbox's admin server, delivery worker and agents.
func (r *sandboxRun) start(ctx context.Context, hooks *cardLinkFlags, o sandboxOptions) error {
	a := r.app
	hub := cardlink.NewWakeHub()
	a.svc.Trigger = hub
	runCtx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	d := &cardlink.Dispatcher{Service: a.svc, Log: a.log, WebhookTimeout: hooks.webhookTimeout, HTTP: o.WebhookHTTP, Tick: o.Tick}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		d.Run(runCtx)
	}()
	r.srv = cardlink.NewAdminServer(cardlink.AdminServerConfig{Service: a.svc, Wake: hub, Log: a.log,
		WakeCheck: 250 * time.Millisecond, WakeWait: 10 * time.Second})
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", r.srv.TLSConfig())
	if err != nil {
		r.stop()
		return err
	}
	r.adminAddr = ln.Addr().String()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			a.log.Error("sandbox admin server", "err", err)
		}
	}()
	for i, card := range r.cards {
		eid := r.eids[i]
		psk, err := a.svc.ExportHandsetPSK(ctx, r.operator(), eid)
		if err != nil {
			r.stop()
			return fmt.Errorf("sandbox: PSK of module %s: %w", eid, err)
		}
		tc := &tlspsk.ClientConfig{Identity: string(eid), PSK: psk}
		addr := r.adminAddr
		dial := func(ctx context.Context) (net.Conn, error) {
			c, err := tlspsk.Dial(ctx, "tcp", addr, tc)
			if err != nil {
				return nil, err
			}
			return c, nil
		}
		ag := agent.New(agent.Config{Server: addr, Identity: string(eid), PSK: psk, Retries: 2, Retry: 100 * time.Millisecond,
			Dial: r.book.Dial(eid, dial), Log: a.log.With("agent", string(eid))}, r.book.Channel(eid, card))
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			ag.Run(runCtx)
		}()
	}
	return nil
}

// stop ends the agents, the worker and the admin server, then closes the
// sandbox's store and token.
func (r *sandboxRun) stop() {
	if r.cancel != nil {
		r.cancel()
	}
	if r.srv != nil {
		r.srv.Close()
	}
	r.wg.Wait()
}

// Close stops the sandbox and closes its store and token.
func (r *sandboxRun) Close() {
	r.stop()
	r.app.Close()
}
