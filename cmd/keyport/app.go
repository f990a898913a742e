package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/user"
	"strings"
	"unicode"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/hsm"
	"github.com/keyport/keyport/store"
)

// app is a wired keyport: configuration, store, HSM and the service.
type app struct {
	cfg   config
	log   *slog.Logger
	store *store.Store
	hsm   *hsm.HSM
	svc   *keyport.Service
	// tokenCreated is true when this run created the default SoftHSM token.
	tokenCreated bool
	// adminAddr is the address the card-link admin server listens on, once
	// serve has started it ("" when there is none).
	adminAddr string
	// sms is the SMS trigger once the SMPP link is configured (smpp.go).
	sms *smsTriggerBox
	// use is the database's use lock, held shared until Close.
	use *store.UseLock
}

// newFlags returns a flag set with the common flags bound to cfg.
func newFlags(name string, cfg *config) (*flag.FlagSet, error) {
	fs := flag.NewFlagSet("keyport "+name, flag.ContinueOnError)
	return fs, cfg.bind(fs)
}

func parse(fs *flag.FlagSet, cfg *config, args []string) error {
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	return cfg.finish()
}

// parseArgs parses flags wherever they stand among the positional arguments
// ("keyport import FILE --batch b1" as well as "keyport import --batch b1
// FILE"); after it, fs.Args() holds the positional arguments in order. A
// "--" ends the flags.
func parseArgs(fs *flag.FlagSet, args []string) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return exitError{2, err}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return fs.Parse(append([]string{"--"}, pos...))
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// open connects the store and the HSM. With migrate, pending migrations
// are applied; otherwise an out-of-date schema is refused.
func open(ctx context.Context, cfg config, migrate bool) (*app, error) {
	return openHolding(ctx, cfg, migrate, nil)
}

// openHolding is open for a caller that holds the database's use lock
// already (serve, store.HoldForServe): the app keeps it and closes it with
// the store, instead of taking a second one. nil: open takes its own.
func openHolding(ctx context.Context, cfg config, migrate bool, use *store.UseLock) (*app, error) {
	a := &app{cfg: cfg, log: newLogger(cfg, stderr)}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	uri := cfg.HSM
	if uri == "" {
		var err error
		if uri, a.tokenCreated, err = defaultToken(cfg.DataDir); err != nil {
			return nil, err
		}
	}
	// The database's use lock, shared, from before the store opens (and
	// migrates) until it has closed (Close): a restore is refused while
	// any command uses the database, and a command while a restore runs.
	if use == nil {
		var err error
		if use, err = holdForUse(ctx, cfg.DB); err != nil {
			return nil, err
		}
	}
	st, err := store.OpenOptions{Migrate: migrate}.Open(ctx, cfg.DB)
	if err != nil {
		use.Close()
		return nil, err
	}
	h, err := hsm.Open(ctx, hsm.Config{URI: uri, OAEPHash: keyport.OAEPHash(cfg.OAEPHash), PoolSize: cfg.HSMSessions,
		Exclusive: st.Exclusive})
	if err != nil {
		st.Close()
		use.Close()
		return nil, err
	}
	a.use = use
	a.store, a.hsm = st, h
	a.svc = &keyport.Service{Store: st, Custody: h, Link: h, Log: a.log, Writes: st.Group(),
		Claims: st.ClaimCommits(), DualControl: keyport.DualControl{Admins: cfg.DualControl}}
	return a, nil
}

// holdForUse takes the use lock of the database dsn names, shared, for a
// command (store.HoldForUse); exit status 5 while a restore runs.
func holdForUse(ctx context.Context, dsn string) (*store.UseLock, error) {
	use, err := store.HoldForUse(ctx, dsn)
	if errors.Is(err, store.ErrInUse) {
		return nil, exitError{5, err}
	}
	return use, err
}

func (a *app) Close() {
	if a.hsm != nil {
		a.hsm.Close()
	}
	if a.store != nil {
		a.store.Close()
	}
	if a.use != nil {
		a.use.Close()
	}
}

// parseCommand parses a command's arguments: the common flags plus those
// flags adds.
func parseCommand(name string, args []string, flags func(*flag.FlagSet)) (config, *flag.FlagSet, error) {
	var cfg config
	fs, err := newFlags(name, &cfg)
	if err != nil {
		return cfg, nil, err
	}
	if flags != nil {
		flags(fs)
	}
	return cfg, fs, parse(fs, &cfg, args)
}

// command is parseCommand, then open. The caller closes the app.
func command(ctx context.Context, name string, args []string, migrate bool, flags func(*flag.FlagSet)) (*app, *flag.FlagSet, error) {
	cfg, fs, err := parseCommand(name, args, flags)
	if err != nil {
		return nil, nil, err
	}
	a, err := open(ctx, cfg, migrate)
	return a, fs, err
}

// cli is the principal of commands that act on their own data (bench) and
// of tests; every command that changes an installation's state takes
// --operator instead (operatorFlag).
var cli = keyport.Principal{Admin: true, Operator: true, Name: "cli"}

// operatorFlag registers --operator on a command that changes state: who
// runs it, for the audit trail ("operator:NAME"); the default is the OS
// user running the command.
func operatorFlag(fs *flag.FlagSet) *string {
	def := ""
	if u, err := user.Current(); err == nil {
		def = u.Username
	}
	return fs.String("operator", def, "who runs this command, recorded in the audit trail (default: the OS user)")
}

// parseOperatorCommand is parseCommand for a command that changes state:
// it registers --operator beside flags and returns the operator's principal.
func parseOperatorCommand(name string, args []string, flags func(*flag.FlagSet)) (config, *flag.FlagSet, keyport.Principal, error) {
	var opName *string
	cfg, fs, err := parseCommand(name, args, func(fs *flag.FlagSet) {
		opName = operatorFlag(fs)
		if flags != nil {
			flags(fs)
		}
	})
	if err != nil {
		return cfg, fs, keyport.Principal{}, err
	}
	op, err := operator(*opName)
	return cfg, fs, op, err
}

// operator is the principal of a command run by the named operator on the
// server itself.
func operator(name string) (keyport.Principal, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 100 || strings.IndexFunc(name, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		return keyport.Principal{}, exitError{2, fmt.Errorf("--operator %q: give a name of 1 to 100 characters without spaces", name)}
	}
	return keyport.Principal{Admin: true, Operator: true, Name: name}, nil
}

func cmdMigrate(ctx context.Context, args []string) error {
	var cfg config
	fs, err := newFlags("migrate", &cfg)
	if err != nil {
		return err
	}
	if err := parse(fs, &cfg, args); err != nil {
		return err
	}
	use, err := holdForUse(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer use.Close()
	st, err := store.OpenOptions{Migrate: true}.Open(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer st.Close()
	fmt.Fprintln(stdout, "database is up to date")
	msg, err := sharedMSISDNs(ctx, st)
	if err != nil {
		return err
	}
	if msg != "" {
		fmt.Fprintln(stdout, "warning:", msg)
	}
	return nil
}

func cmdHSMInit(ctx context.Context, args []string) error {
	a, _, err := command(ctx, "hsm init", args, true, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	created, err := a.hsm.Init(ctx)
	if err != nil {
		return err
	}
	if len(created) == 0 {
		fmt.Fprintln(stdout, "hsm: every key exists already; nothing created")
	}
	for _, l := range created {
		fmt.Fprintln(stdout, "hsm: created", l)
	}
	mig, err := a.svc.MigrateKeys(ctx, cli, a.hsm)
	if mig != nil && mig.Modules > 0 {
		fmt.Fprintf(stdout, "hsm: migrated the keys of %d modules: %d PSKs sealed, %d ISD key sets and %d domains' first keys wrapped under the new KEKs\n",
			mig.Modules, mig.PSKs, mig.ISDKeySets, mig.Domains)
	}
	if mig != nil {
		for _, b := range mig.Batches {
			fmt.Fprintf(stdout, "hsm: batch %s now keeps its first keys under %s\n", b, hsm.BatchKEKLabel(b))
		}
		for _, l := range mig.Destroyed {
			fmt.Fprintln(stdout, "hsm: destroyed the old key", l)
		}
	}
	if err != nil {
		return fmt.Errorf("migrating the old keys stopped (run `keyport hsm init` again to go on; the old keys are kept until every row is moved): %w", err)
	}
	return checkKeys(ctx, a)
}

// checkKeys refuses a token whose keys under keyport's labels are not as
// keyport makes them (hsm.CheckKeys), and warns of each key made before
// keys were frozen.
func checkKeys(ctx context.Context, a *app) error {
	r, err := a.hsm.CheckKeys(ctx)
	if err != nil {
		return err
	}
	if err := r.Err(); err != nil {
		return err
	}
	for _, m := range r.Modifiable {
		a.log.Warn("hsm key made before keyport froze its keys' attributes: someone with the PIN can give it usages it was made without (README, Key custody)", "key", m)
	}
	return nil
}
