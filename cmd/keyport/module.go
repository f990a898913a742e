package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/keyport/keyport"
)

// cmdModulePSK writes a module's TLS-PSK for the handset agent
// (keyport.ExportHandsetPSK says why that file exists at all).
func cmdModulePSK(ctx context.Context, args []string) error {
	var out, opName *string
	cfg, fs, err := parseCommand("module psk", args, func(fs *flag.FlagSet) {
		opName = operatorFlag(fs)
		out = fs.String("out", "", "file to write the PSK to, hex, mode 0600 (required; never overwritten)")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 1 || *out == "" {
		return exitError{2, errors.New("usage: keyport module psk EID --out FILE")}
	}
	eid, err := keyport.ParseEID(fs.Arg(0))
	if err != nil {
		return err
	}
	op, err := operator(*opName)
	if err != nil {
		return err
	}
	a, err := open(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer a.Close()

	// The file first: an export that cannot be written is not exported.
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w (a PSK file is never overwritten)", err)
	}
	psk, err := a.svc.ExportHandsetPSK(ctx, op, eid)
	if errors.Is(err, keyport.ErrApprovalRequired) {
		f.Close()
		os.Remove(*out)
		return fileApproval(ctx, a, op, keyport.ActionPSKExport, string(eid), nil)
	}
	if err == nil {
		_, err = fmt.Fprintln(f, hex.EncodeToString(psk))
	}
	if err != nil {
		f.Close()
		os.Remove(*out)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "PSK of module %s written to %s (identity %s); the export is in the audit log\n", eid, *out, eid)
	return nil
}
