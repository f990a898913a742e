package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base32"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/pcsc"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/perso"
)

// `keyport demo` is `keyport serve` on a data directory of demo data: a
// batch of virtual modules personalized by keyport's own station, a handset
// agent for each module connected to the admin server over TLS-PSK, an
// issuer-admin account and an approved demo provider with a wrapping key and
// an API token. The modules talk to the station and the agents in this
// process (vcard.Card is a gp.Channel), or with --pcsc through pcscd and
// vpcd. Demo data is marked: the data directory holds demoMarkerName, which
// `keyport serve` refuses, and `keyport demo` refuses a directory holding
// anything else. The wiring is here only: agent, perso and vcard do not
// know each other.

// Demo names.
const (
	// demoMarkerName is the file that marks a data directory as demo data.
	demoMarkerName = "keyport-demo.json"
	// demoCredentialsName holds the demo accounts' credentials (0600).
	demoCredentialsName = "demo-credentials.json"
	// demoTokenName and demoKeyName are the provider's API token and
	// wrapping private key (0600), which `keyport sp script` reads.
	demoTokenName = "demo-provider-token"
	demoKeyName   = "demo-provider.pem"
	// DemoBatch is the batch of the demo modules.
	DemoBatch          = "demo"
	demoDefaultDataDir = "./var/demo"
	demoAdminEmail     = "admin@demo.keyport.example"
	demoProviderEmail  = "provider@demo.keyport.example"
	demoOperator       = "demo"
	// demoPackagePlaceholder stands for the key package the browser saved
	// in the printed `keyport sp script` line.
	demoPackagePlaceholder = "~/Downloads/keyport-EID-AID.jws.json"
)

// demoMarker is the content of the marker file.
type demoMarker struct {
	Demo    bool          `json:"demo"`
	Note    string        `json:"note"`
	Created time.Time     `json:"created"`
	Ready   bool          `json:"ready"` // setup finished
	Modules int           `json:"modules"`
	Domains int           `json:"domains"`
	EIDs    []keyport.EID `json:"eids,omitempty"`
}

// demoCredentials are the demo accounts, written 0600 to the data directory.
type demoCredentials struct {
	AdminEmail       string `json:"admin_email"`
	AdminPassword    string `json:"admin_password"`
	ProviderEmail    string `json:"provider_email"`
	ProviderPassword string `json:"provider_password"`
	ProviderToken    string `json:"provider_api_token"`
}

// demoRun is one `keyport demo`; cmdServe finds it in its context. Its
// methods do nothing on a nil *demoRun (plain `keyport serve`), except that
// configure refuses demo data.
type demoRun struct {
	modules, domains int
	pcsc             bool
	vpcd             string // address of the first vpcd reader (--pcsc)
	started          time.Time

	dir     string
	mark    demoMarker
	creds   demoCredentials
	cards   []*vcard.Card
	chans   []gp.Channel
	readers []*pcsc.Reader
	// sandboxEIDs are the provider sandbox's modules (sandbox.go).
	sandboxEIDs []keyport.EID
	ctx         context.Context
	cancel      context.CancelFunc
	wg          sync.WaitGroup
}

type demoKey struct{}

// demoOf returns the demo cmdServe runs for, or nil.
func demoOf(ctx context.Context) *demoRun {
	d, _ := ctx.Value(demoKey{}).(*demoRun)
	return d
}

func (d *demoRun) on() bool { return d != nil }

// cmdDemo parses the demo's own flags and serves the demo; every other flag
// is serve's.
func cmdDemo(ctx context.Context, args []string) error {
	d := &demoRun{started: time.Now()}
	fset := flag.NewFlagSet("keyport demo", flag.ContinueOnError)
	fset.IntVar(&d.modules, "modules", 3, "virtual modules in the demo batch")
	fset.IntVar(&d.domains, "domains", 4, "unassigned domains (SSDs) on each module")
	fset.BoolVar(&d.pcsc, "pcsc", false, "reach the modules through pcscd and vpcd (one vpcd reader a module) instead of in this process")
	fset.StringVar(&d.vpcd, "vpcd", vcard.DefaultVPCDAddr, "with --pcsc: vpcd address of the first reader; module n uses the port after module n-1's")
	fset.SetOutput(stderr)
	own, rest := splitDemoArgs(fset, args)
	if slices.ContainsFunc(rest, func(a string) bool { return a == "-h" || a == "-help" || a == "--help" }) {
		fmt.Fprintln(stderr, "usage: keyport demo [--modules N] [--domains N] [--pcsc [--vpcd HOST:PORT]] [the flags of keyport serve]")
		fset.PrintDefaults()
		fmt.Fprintln(stderr, "and those of keyport serve (default --data-dir "+demoDefaultDataDir+"):")
	}
	if err := fset.Parse(own); err != nil {
		return exitError{2, err}
	}
	if d.modules < 1 || d.modules > 20 {
		return exitError{2, fmt.Errorf("demo: --modules must be 1 to 20, got %d", d.modules)}
	}
	if d.domains < 1 || d.domains > perso.MaxDomains {
		return exitError{2, fmt.Errorf("demo: --domains must be 1 to %d, got %d", perso.MaxDomains, d.domains)}
	}
	if _, set := os.LookupEnv("KEYPORT_DATA_DIR"); !set && !slices.ContainsFunc(rest, isDataDirFlag) {
		rest = append([]string{"--data-dir", demoDefaultDataDir}, rest...)
	}
	return cmdServe(context.WithValue(ctx, demoKey{}, d), rest)
}

func isDataDirFlag(a string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
	return strings.HasPrefix(a, "-") && name == "data-dir"
}

// splitDemoArgs takes the flags fset knows out of args (with their values)
// and returns them apart from the rest.
func splitDemoArgs(fset *flag.FlagSet, args []string) (own, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return own, append(rest, args[i:]...)
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := fset.Lookup(name)
		if !strings.HasPrefix(a, "-") || f == nil {
			rest = append(rest, a)
			continue
		}
		own = append(own, a)
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); hasValue || (ok && b.IsBoolFlag()) {
			continue
		}
		if i+1 < len(args) {
			i++
			own = append(own, args[i])
		}
	}
	return own, rest
}

func readDemoMarker(dir string) (*demoMarker, error) {
	b, err := os.ReadFile(filepath.Join(dir, demoMarkerName))
	if err != nil {
		return nil, err
	}
	m, err := parseDemoMarker(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, demoMarkerName), err)
	}
	return m, nil
}

// parseDemoMarker reads a marker file's content; a marker of a finished
// setup names as many modules as it has EIDs, each a valid EID.
func parseDemoMarker(b []byte) (*demoMarker, error) {
	var m demoMarker
	if err := json.Unmarshal(b, &m); err != nil || !m.Demo {
		return nil, errors.New("not a keyport demo marker")
	}
	if m.Modules < 1 || m.Modules > 20 || m.Domains < 1 || m.Domains > perso.MaxDomains {
		return nil, fmt.Errorf("the demo marker names %d modules of %d domains", m.Modules, m.Domains)
	}
	if m.Ready && len(m.EIDs) != m.Modules {
		return nil, fmt.Errorf("the demo marker names %d modules but %d EIDs", m.Modules, len(m.EIDs))
	}
	for _, e := range m.EIDs {
		if _, err := keyport.ParseEID(string(e)); err != nil {
			return nil, fmt.Errorf("the demo marker: %w", err)
		}
	}
	return &m, nil
}

func (d *demoRun) writeMarker() error {
	b, _ := json.MarshalIndent(d.mark, "", "  ")
	tmp := filepath.Join(d.dir, demoMarkerName+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(d.dir, demoMarkerName))
}

// checkDatabase refuses, for plain serve, a database that holds the demo's
// accounts: demo data that left its marked directory (a demo backup
// restored into production, or --db pointed at a demo's file). The demo's
// credentials are written in its directory and printed, so a server that
// serves them lets anyone who saw a demo in. The accounts' addresses are
// under example. (RFC 2606), where no real user can have one.
func (d *demoRun) checkDatabase(ctx context.Context, a *app) error {
	if d != nil {
		return nil
	}
	for _, email := range []string{demoAdminEmail, demoProviderEmail} {
		_, err := a.store.GetUserByEmail(ctx, email)
		if errors.Is(err, keyport.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		return exitError{2, fmt.Errorf("serve: the database holds the demo account %s: it is demo data (made by keyport demo, whose credentials are public), which serve refuses; serve a database of your own, or run keyport demo on the demo's directory", email)}
	}
	return nil
}

// configure checks the data directory before anything is opened. Without a
// demo (keyport serve) it refuses a directory marked as demo data. For the
// demo it refuses a directory holding anything but demo data and other
// databases or tokens than the directory's own, marks a new directory, and
// turns dual control off and the admin server on (on a loopback port of
// its own unless --admin-addr says otherwise).
func (d *demoRun) configure(cfg *config) error {
	_, err := os.Stat(filepath.Join(cfg.DataDir, demoMarkerName))
	marked := err == nil
	if d == nil {
		if marked {
			return exitError{2, fmt.Errorf("serve: %s holds demo data (made by keyport demo; marked by %s), which serve refuses: run `keyport demo` (make demo) on it, or give serve another --data-dir",
				cfg.DataDir, demoMarkerName)}
		}
		return nil
	}
	if !cfg.storeInDataDir() {
		return exitError{2, errors.New("demo: keyport demo keeps its own SQLite file and SoftHSM token in --data-dir; --db and --hsm (KEYPORT_DB, KEYPORT_HSM) are refused")}
	}
	d.dir = cfg.DataDir
	if marked {
		m, err := readDemoMarker(cfg.DataDir)
		if err != nil {
			return err
		}
		if !m.Ready {
			return exitError{2, fmt.Errorf("demo: an earlier keyport demo stopped during its setup; %s holds demo data only: remove it and run keyport demo again", cfg.DataDir)}
		}
		if m.Modules != d.modules || m.Domains != d.domains {
			fmt.Fprintf(stderr, "keyport demo: %s was set up with %d modules of %d domains; serving those\n", cfg.DataDir, m.Modules, m.Domains)
			d.modules, d.domains = m.Modules, m.Domains
		}
		d.mark = *m
	} else {
		entries, err := os.ReadDir(cfg.DataDir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if len(entries) > 0 {
			return exitError{2, fmt.Errorf("demo: %s holds data that is not demo data (it has no %s): keyport demo refuses it; give it a new or empty --data-dir (default %s)",
				cfg.DataDir, demoMarkerName, demoDefaultDataDir)}
		}
		if d.pcsc {
			if _, err := d.vpcdReaders(); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return err
		}
		d.mark = demoMarker{Demo: true, Note: "demo data made by keyport demo: keyport serve refuses this directory",
			Created: time.Now().UTC(), Modules: d.modules, Domains: d.domains}
		if err := d.writeMarker(); err != nil {
			return err
		}
	}
	cfg.DualControl = 1
	if cfg.AdminAddr == "" {
		cfg.AdminAddr = "127.0.0.1:0"
	}
	return nil
}

// vpcdReaders lists the vpcd readers, in the order of their ports, and
// checks there is one for every module.
func (d *demoRun) vpcdReaders() ([]string, error) {
	names, err := pcsc.Readers()
	if err != nil {
		return nil, fmt.Errorf("demo --pcsc: %w (start pcscd with the vsmartcard-vpcd driver, or run the demo without --pcsc)", err)
	}
	var vpcd []string
	for _, n := range names {
		if strings.HasPrefix(n, "Virtual PCD") {
			vpcd = append(vpcd, n)
		}
	}
	slices.Sort(vpcd)
	if len(vpcd) < d.modules {
		return nil, exitError{2, fmt.Errorf("demo --pcsc: %d modules need %d vpcd readers, pcscd has %d (%q): use --modules %d",
			d.modules, d.modules, len(vpcd), names, len(vpcd))}
	}
	return vpcd[:d.modules], nil
}

func (d *demoRun) operator() keyport.Principal {
	return keyport.Principal{Admin: true, Operator: true, Name: demoOperator}
}

// setUp runs after the store and the HSM are open: it loads (or, the first
// time, makes) the virtual modules and attaches them, and the first time
// personalizes them and creates the accounts.
func (d *demoRun) setUp(ctx context.Context, a *app) error {
	if d == nil {
		return nil
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if err := d.attachModules(ctx); err != nil {
		return err
	}
	if d.mark.Ready {
		b, err := os.ReadFile(filepath.Join(d.dir, demoCredentialsName))
		if err != nil {
			return err
		}
		return json.Unmarshal(b, &d.creds)
	}
	t0 := time.Now()
	// The provider's RSA key takes a while: make it meanwhile.
	keyc := make(chan *rsa.PrivateKey, 1)
	go func() {
		k, err := rsa.GenerateKey(rand.Reader, 3072)
		if err != nil {
			k = nil
		}
		keyc <- k
	}()
	// The accounts are made while the station personalizes the modules.
	accounts := make(chan error, 1)
	go func() { accounts <- d.accounts(ctx, a, keyc) }()
	if err := d.personalize(ctx, a); err != nil {
		<-accounts
		return err
	}
	a.log.Info("demo modules personalized", "modules", len(d.chans), "domains", d.domains, "took", time.Since(t0).Round(time.Millisecond))
	if err := <-accounts; err != nil {
		return err
	}
	d.mark.Ready = true
	if err := d.writeMarker(); err != nil {
		return err
	}
	a.log.Info("demo set up", "took", time.Since(t0).Round(time.Millisecond))
	return nil
}

// personalize creates the demo batch and personalizes every module in it
// with keyport's own station, as `keyport perso` does.
func (d *demoRun) personalize(ctx context.Context, a *app) error {
	op := d.operator()
	if _, _, err := a.svc.CreateBatch(ctx, op, DemoBatch, "", nil); err != nil {
		return err
	}
	d.mark.EIDs = nil
	for i, ch := range d.chans {
		rep, err := a.station().Personalize(ctx, op, ch, perso.Request{Batch: DemoBatch, Domains: d.domains})
		if err != nil {
			return fmt.Errorf("demo: personalizing module %d: %w", i+1, err)
		}
		d.mark.EIDs = append(d.mark.EIDs, rep.EID)
	}
	return nil
}

// attachModules loads the modules' state files (making new modules the
// first time) and gives each a channel: the card itself, or with --pcsc
// its vpcd reader, served by the card from this process.
func (d *demoRun) attachModules(ctx context.Context) error {
	dir := filepath.Join(d.dir, "modules")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for i := range d.modules {
		path := filepath.Join(dir, fmt.Sprintf("module-%d.json", i+1))
		card, err := vcard.Load(path, vcard.Config{StatePath: path})
		if errors.Is(err, fs.ErrNotExist) {
			card, err = vcard.New(demoEID(i+1), vcard.Config{StatePath: path})
		}
		if err != nil {
			return fmt.Errorf("demo: module %d: %w", i+1, err)
		}
		d.cards = append(d.cards, card)
	}
	if !d.pcsc {
		for _, c := range d.cards {
			d.chans = append(d.chans, c)
		}
		return nil
	}
	readers, err := d.vpcdReaders()
	if err != nil {
		return err
	}
	host, portText, err := net.SplitHostPort(d.vpcd)
	port, perr := strconv.Atoi(portText)
	if err != nil || perr != nil {
		return exitError{2, fmt.Errorf("demo: --vpcd %q is not host:port", d.vpcd)}
	}
	for i, card := range d.cards {
		addr := net.JoinHostPort(host, strconv.Itoa(port+i))
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			vcard.Serve(d.ctx, card, addr)
		}()
		r, err := openWhenInserted(ctx, readers[i])
		if err != nil {
			return fmt.Errorf("demo: module %d in %q (vpcd %s): %w", i+1, readers[i], addr, err)
		}
		d.readers = append(d.readers, r)
		d.chans = append(d.chans, r)
	}
	return nil
}

// openWhenInserted opens the reader once the module has connected to vpcd.
func openWhenInserted(ctx context.Context, reader string) (*pcsc.Reader, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := pcsc.Open(ctx, reader)
		if err == nil || !errors.Is(err, pcsc.ErrNoCard) || time.Now().After(deadline) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// accounts creates the issuer admin and the approved demo provider (signed
// up, its address confirmed, approved), registers its wrapping key and makes
// its API token; the credentials go to 0600 files in the data directory.
func (d *demoRun) accounts(ctx context.Context, a *app, keyc <-chan *rsa.PrivateKey) error {
	op := d.operator()
	var err error
	d.creds.AdminEmail, d.creds.ProviderEmail = demoAdminEmail, demoProviderEmail
	if d.creds.AdminPassword, err = a.svc.AddAdminUser(ctx, op, demoAdminEmail); err != nil {
		return err
	}
	d.creds.ProviderPassword = demoPassword()
	mails := &demoMailbox{}
	saved := a.svc.Mailer
	a.svc.Mailer = mails
	prov, err := a.svc.SignUpProvider(ctx, keyport.SignUp{Organisation: "Demo Bank (demo data)", Kind: keyport.KindBank,
		Contact: "Demo Provider", Email: demoProviderEmail, Password: d.creds.ProviderPassword}, "http://demo.invalid")
	a.svc.Mailer = saved
	if err != nil {
		return err
	}
	token, err := mails.token()
	if err != nil {
		return err
	}
	if _, err := a.svc.VerifyEmail(ctx, token); err != nil {
		return err
	}
	if err := a.svc.SetProviderStatus(ctx, op, prov.ID, keyport.ProviderApproved); err != nil {
		return err
	}
	p := keyport.Principal{ProviderID: prov.ID, Name: demoProviderEmail}
	key := <-keyc
	if key == nil {
		return errors.New("demo: could not generate the provider's RSA key")
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if _, err := a.svc.RegisterWrappingKey(ctx, p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})); err != nil {
		return err
	}
	priv, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeSecretFile(filepath.Join(d.dir, demoKeyName), string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: priv}))); err != nil {
		return err
	}
	if d.creds.ProviderToken, _, err = a.svc.CreateAPIToken(ctx, p, "demo"); err != nil {
		return err
	}
	if err := writeSecretFile(filepath.Join(d.dir, demoTokenName), d.creds.ProviderToken+"\n"); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(d.creds, "", "  ")
	return writeSecretFile(filepath.Join(d.dir, demoCredentialsName), string(b)+"\n")
}

// demoMailbox keeps the verification message of the demo provider's
// sign-up, whose link the demo follows itself.
type demoMailbox struct{ body string }

func (m *demoMailbox) Send(_ context.Context, _, _, body string) error {
	m.body = body
	return nil
}

var demoTokenRE = regexp.MustCompile(`\?token=(\S+)`)

func (m *demoMailbox) token() (string, error) {
	t := demoTokenRE.FindStringSubmatch(m.body)
	if t == nil {
		return "", errors.New("demo: the sign-up sent no verification link")
	}
	return url.QueryUnescape(t[1])
}

// demoPassword is a random password of 24 characters.
func demoPassword() string {
	b := make([]byte, 15)
	rand.Read(b)
	return strings.ToLower(base32.StdEncoding.EncodeToString(b))
}

// demoEID is the EID of demo module n: 89049032, zeros, n in six digits
// and the two check digits that make it valid (mod 97 == 1).
func demoEID(n int) string { return numberedEID("890490320000000000000000", n) }

// numberedEID is the EID of module n of a synthetic series: the 24-digit
// prefix, n in six digits, and the check digits.
func numberedEID(prefix string, n int) string {
	base := fmt.Sprintf("%s%06d", prefix, n)
	cd, err := keyport.EIDCheckDigits(base)
	if err != nil {
		panic(err) // a constant prefix of the wrong length
	}
	return base + cd
}

// start runs a handset agent for every module, connected to the admin
// server over TLS-PSK with the module's PSK (exported as `keyport module
// psk` does, audited), and prints what a newcomer needs. stop ends the
// agents and the modules.
func (d *demoRun) start(ctx context.Context, a *app, httpAddr string) (stop func(), err error) {
	if d == nil {
		return func() {}, nil
	}
	stop = func() {
		d.cancel()
		d.wg.Wait()
		for _, r := range d.readers {
			r.Close()
		}
	}
	if a.adminAddr == "" {
		stop()
		return nil, errors.New("demo: the card-link admin server is not running")
	}
	for i, card := range d.cards {
		eid := keyport.EID(card.EID())
		psk, err := a.svc.ExportHandsetPSK(ctx, d.operator(), eid)
		if err != nil {
			stop()
			return nil, fmt.Errorf("demo: PSK of module %s: %w", eid, err)
		}
		ag := agent.New(agent.Config{Server: a.adminAddr, Identity: string(eid), PSK: psk,
			Log: a.log.With("agent", string(eid))}, d.chans[i])
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			ag.Run(d.ctx)
		}()
	}
	d.printBanner(a, httpAddr)
	return stop, nil
}

// printBanner tells the newcomer where to go, with the credentials and the
// EIDs, and the one command of the second-key install.
func (d *demoRun) printBanner(a *app, httpAddr string) {
	base := defaultPublicURL(httpAddr)
	dir := displayPath(d.dir)
	how := "in this process"
	if d.pcsc {
		how = "through pcscd and vpcd"
	}
	w := stdout
	fmt.Fprintf(w, "\nkeyport demo: DEMO DATA ONLY, in %s (marked by %s; keyport serve refuses it)\n", dir, demoMarkerName)
	fmt.Fprintf(w, "Portal:         %s\n", base)
	fmt.Fprintf(w, "Provider:       %s  password %s  (Demo Bank, approved)\n", d.creds.ProviderEmail, d.creds.ProviderPassword)
	fmt.Fprintf(w, "Provider API token: %s  (also in %s)\n", d.creds.ProviderToken, filepath.Join(dir, demoTokenName))
	fmt.Fprintf(w, "Issuer admin:   %s  password %s  (console at %s/admin; choose your own at the first sign-in)\n", d.creds.AdminEmail, d.creds.AdminPassword, base)
	fmt.Fprintf(w, "Credentials:    %s (mode 0600)\n", filepath.Join(dir, demoCredentialsName))
	fmt.Fprintf(w, "Modules of batch %q, %d unassigned domains each, a handset agent each (%s):\n", DemoBatch, d.domains, how)
	for _, e := range d.mark.EIDs {
		fmt.Fprintf(w, "  EID %s\n", e)
	}
	fmt.Fprintf(w, "Sign in as the provider, find a module by its EID, claim a domain, download its key package, then\n")
	fmt.Fprintf(w, "install your second keys (builds the script from the package and submits it; the job page goes DONE):\n")
	fmt.Fprintf(w, "  %s\n", demoScriptLine(displayPath(os.Args[0]), dir, base))
	fmt.Fprintf(w, "(%s: the file your browser saved)\n", demoPackagePlaceholder)
	if len(d.sandboxEIDs) > 0 {
		fmt.Fprintf(w, "Provider sandbox (its own data; faults per module): %s/portal/sandbox, API /api/v1/sandbox\n", base)
		for _, e := range d.sandboxEIDs {
			fmt.Fprintf(w, "  sandbox module %s\n", e)
		}
	}
	fmt.Fprintf(w, "keyport demo started in %s\n\n", time.Since(d.started).Round(time.Millisecond))
}

// demoScriptLine is the `keyport sp script` line of the second-key install.
func demoScriptLine(bin, dir, base string) string {
	return fmt.Sprintf("%s sp script --package %s --key %s --generate --submit %s --token-file %s",
		bin, demoPackagePlaceholder, filepath.Join(dir, demoKeyName), base, filepath.Join(dir, demoTokenName))
}

// displayPath is p relative to the working directory when it lies below
// it ("./" kept for a program), else p.
func displayPath(p string) string {
	if !strings.ContainsRune(p, filepath.Separator) {
		return p
	}
	wd, err := os.Getwd()
	abs, aerr := filepath.Abs(p)
	if err != nil || aerr != nil {
		return p
	}
	rel, err := filepath.Rel(wd, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return p
	}
	if strings.HasPrefix(p, "./") && !strings.HasPrefix(rel, ".") {
		return "./" + rel
	}
	return rel
}
