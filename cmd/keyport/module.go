package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"

	"github.com/keyport/keyport"
)

// cmdModulePSK writes a module's TLS-PSK for the handset agent
// (keyport.ExportHandsetPSK says why that file exists at all).
func cmdModulePSK(ctx context.Context, args []string) error {
	var out *string
	cfg, fs, op, err := parseOperatorCommand("module psk", args, func(fs *flag.FlagSet) {
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
	a, err := open(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer a.Close()

	err = releaseToFile(*out, func() (string, error) {
		psk, err := a.svc.ExportHandsetPSK(ctx, op, eid)
		if err != nil {
			return "", err
		}
		return hex.EncodeToString(psk) + "\n", nil
	})
	if errors.Is(err, keyport.ErrApprovalRequired) {
		return fileApproval(ctx, a, op, keyport.ActionPSKExport, string(eid), nil)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "PSK of module %s written to %s (identity %s); the export is in the audit log\n", eid, *out, eid)
	return nil
}
