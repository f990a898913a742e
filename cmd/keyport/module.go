package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"

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

// cmdModuleSharedMSISDNs lists the MSISDNs several modules have (a
// database from before keyport refused a shared number), each with its
// modules: a proof of receipt from such a number is attributed to none of
// them, and none of them gets a trigger SMS (they are woken through the
// agents' wake-up channel), until an admin clears it on all but the
// module it reaches. It shows the numbers in full: it is the admin's list
// to act on, like the console.
func cmdModuleSharedMSISDNs(ctx context.Context, args []string) error {
	a, fs, err := command(ctx, "module shared-msisdns", args, false, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	if fs.NArg() > 0 {
		return exitError{2, errors.New("usage: keyport module shared-msisdns")}
	}
	shared, err := a.svc.SharedMSISDNs(ctx, cli)
	if err != nil {
		return err
	}
	if len(shared) == 0 {
		fmt.Fprintln(stdout, "no MSISDN is shared: each number reaches one module")
		return nil
	}
	w := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(w, "MSISDN\tMODULES")
	for _, sh := range shared {
		eids := make([]string, len(sh.EIDs))
		for i, e := range sh.EIDs {
			eids[i] = string(e)
		}
		more := ""
		if sh.More > 0 {
			more = fmt.Sprintf(" and %d more", sh.More)
		}
		fmt.Fprintf(w, "+%s\t%s%s\n", sh.MSISDN, strings.Join(eids, " "), more)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "proofs of receipt from these numbers are attributed to no module, and their modules get no trigger SMS (they are woken through the agents' wake-up channel): "+
		"clear each number on every module but the one it reaches (DELETE /api/v1/admin/modules/{eid}/msisdn)")
	return nil
}

// sharedMSISDNs says how many MSISDNs several modules have, and where
// they are listed; "" when there is none.
func sharedMSISDNs(ctx context.Context, st keyport.OTARepo) (string, error) {
	shared, err := st.SharedMSISDNs(ctx)
	if err != nil || len(shared) == 0 {
		return "", err
	}
	return fmt.Sprintf("%d MSISDN(s) are each the number of several modules (set before keyport refused a shared number): "+
		"proofs of receipt from them are attributed to no module, and their modules get no trigger SMS; `keyport module shared-msisdns` lists them", len(shared)), nil
}

// warnSharedMSISDNs logs sharedMSISDNs' warning, if any.
func warnSharedMSISDNs(ctx context.Context, log *slog.Logger, st keyport.OTARepo) {
	msg, err := sharedMSISDNs(ctx, st)
	switch {
	case err != nil:
		log.Warn("could not look for MSISDNs several modules have", "err", err)
	case msg != "":
		log.Warn(msg)
	}
}
