package vcard

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
)

// DefaultEID is the EID a new module gets when none is given: a valid EID
// (mod 97 == 1) from pySim's tests (PROTOCOLS.md §5).
const DefaultEID = "89049032123451234512345678901235"

// Options configure Run: which module to serve and where.
type Options struct {
	// StatePath is the module's state file. Run loads it, or creates a new
	// module there when it does not exist.
	StatePath string
	// EID is the EID of a new module (DefaultEID if empty). It is ignored
	// when StatePath exists.
	EID string
	// VPCDAddr is the vpcd driver's address (DefaultVPCDAddr if empty).
	VPCDAddr string
	// MaxAuthFailures is how many consecutive failed authentications lock a
	// key set (DefaultMaxAuthFailures if 0).
	MaxAuthFailures int
}

// Run creates or loads the module described by opts and serves it to vpcd
// until ctx is cancelled. It is `keyport vcard`.
func Run(ctx context.Context, opts Options) error {
	if opts.StatePath == "" {
		return errors.New("vcard: a state file is required")
	}
	cfg := Config{StatePath: opts.StatePath, MaxAuthFailures: opts.MaxAuthFailures}
	card, err := Load(opts.StatePath, cfg)
	if errors.Is(err, fs.ErrNotExist) {
		eid := opts.EID
		if eid == "" {
			eid = DefaultEID
		}
		card, err = New(eid, cfg)
	}
	if err != nil {
		return err
	}
	return Serve(ctx, card, opts.VPCDAddr)
}

// Main parses `keyport vcard` arguments (--state FILE [--eid E]
// [--vpcd HOST:PORT] [--max-auth-failures N]) and runs the module until ctx
// is cancelled.
func Main(ctx context.Context, args []string) error {
	fset := flag.NewFlagSet("vcard", flag.ContinueOnError)
	var opts Options
	fset.StringVar(&opts.StatePath, "state", "", "module state file (created if missing)")
	fset.StringVar(&opts.EID, "eid", "", "EID of a new module (default "+DefaultEID+")")
	fset.StringVar(&opts.VPCDAddr, "vpcd", DefaultVPCDAddr, "vpcd address")
	fset.IntVar(&opts.MaxAuthFailures, "max-auth-failures", DefaultMaxAuthFailures, "failed authentications that lock a key set")
	if err := fset.Parse(args); err != nil {
		return fmt.Errorf("vcard: %w", err)
	}
	if fset.NArg() > 0 {
		return fmt.Errorf("vcard: unexpected argument %q", fset.Arg(0))
	}
	if opts.StatePath == "" {
		fmt.Fprintln(os.Stderr, "usage: keyport vcard --state FILE [--eid EID] [--vpcd HOST:PORT]")
		return errors.New("vcard: --state is required")
	}
	return Run(ctx, opts)
}
