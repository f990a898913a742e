package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keyport/keyport"
)

// Dual control on the command line: `keyport approval list|request|approve|
// execute|cancel`. The operator (--operator, default the OS user) is the
// admin of each step; two operators are two admins.

// exitApprovalPending is the exit status of a command whose operation now
// waits for another admin's approval.
const exitApprovalPending = 4

func cmdApproval(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return exitError{2, errors.New("usage: keyport approval list|request|approve|execute|cancel …")}
	}
	switch args[0] {
	case "list":
		return cmdApprovalList(ctx, args[1:])
	case "request":
		return cmdApprovalRequest(ctx, args[1:])
	case "approve", "cancel":
		return cmdApprovalStep(ctx, args[0], args[1:])
	case "execute":
		return cmdApprovalExecute(ctx, args[1:])
	}
	return exitError{2, fmt.Errorf("unknown approval command %q", args[0])}
}

func cmdApprovalList(ctx context.Context, args []string) error {
	a, _, err := command(ctx, "approval list", args, false, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	list, err := a.svc.ListApprovals(ctx, cli, 200)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tOPERATION\tTARGET\tREQUESTED BY\tAPPROVED BY\tSTATE\tEXPIRES")
	now := a.svc.Clock()
	for _, r := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Action, r.Target, r.RequestedBy,
			strings.Join(r.Approvers, ","), r.StateAt(now), r.ExpiresAt.Format(time.RFC3339))
	}
	return tw.Flush()
}

func cmdApprovalRequest(ctx context.Context, args []string) error {
	var reason, maker, prefix, ttl *string
	cfg, fs, op, err := parseOperatorCommand("approval request", args, func(fs *flag.FlagSet) {
		reason = fs.String("reason", "", "why (shown to the approvers, kept in the audit trail)")
		maker = fs.String("manufacturer-pem", "", "batch.transport-export: the manufacturer's RSA public key (PEM file)")
		prefix = fs.String("aid-prefix", "", "batch.transport-export: SSD AID prefix (hex)")
		ttl = fs.String("ttl", "", "admin.token-create: the token's lifetime, e.g. 720h")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return exitError{2, fmt.Errorf("usage: keyport approval request OPERATION TARGET [--reason R] (operations: %s)", actionList())}
	}
	params := map[string]string{}
	if *maker != "" {
		b, err := os.ReadFile(*maker)
		if err != nil {
			return err
		}
		params["manufacturer_pem"] = string(b)
	}
	if *prefix != "" {
		params["aid_prefix"] = strings.ToUpper(*prefix)
	}
	if *ttl != "" {
		params["ttl"] = *ttl
	}
	a, err := open(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer a.Close()
	r, err := a.svc.RequestApproval(ctx, op, keyport.ApprovalAction(fs.Arg(0)), fs.Arg(1), params, *reason)
	if err != nil {
		return err
	}
	printRequested(r)
	return nil
}

func actionList() string {
	var s []string
	for _, a := range keyport.ApprovalActions {
		s = append(s, string(a))
	}
	return strings.Join(s, ", ")
}

func printRequested(r *keyport.ApprovalRequest) {
	if r.State == keyport.ApprovalApproved {
		fmt.Fprintf(stdout, "request %s (%s %s) is approved (dual control is off); run: keyport approval execute %s\n", r.ID, r.Action, r.Target, r.ID)
		return
	}
	fmt.Fprintf(stdout, "request %s (%s %s) waits for %d more admin(s): another operator runs\n    keyport approval approve %s --operator NAME\nthen you run\n    keyport approval execute %s\n(it expires %s)\n",
		r.ID, r.Action, r.Target, r.Required-1-len(r.Approvers), r.ID, r.ID, r.ExpiresAt.Format(time.RFC3339))
}

func cmdApprovalStep(ctx context.Context, step string, args []string) error {
	cfg, fs, op, err := parseOperatorCommand("approval "+step, args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return exitError{2, fmt.Errorf("usage: keyport approval %s ID [--operator NAME]", step)}
	}
	a, err := open(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer a.Close()
	if step == "cancel" {
		if err := a.svc.CancelApproval(ctx, op, fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "request %s cancelled\n", fs.Arg(0))
		return nil
	}
	r, err := a.svc.ApproveRequest(ctx, op, fs.Arg(0))
	if err != nil {
		return err
	}
	switch r.State {
	case keyport.ApprovalExecuted:
		fmt.Fprintf(stdout, "request %s approved and done (%s %s)\n", r.ID, r.Action, r.Target)
	case keyport.ApprovalApproved:
		fmt.Fprintf(stdout, "request %s approved; its requester (%s) executes it: keyport approval execute %s\n", r.ID, r.RequestedBy, r.ID)
	default:
		fmt.Fprintf(stdout, "request %s: approval recorded, %d more needed\n", r.ID, r.Required-1-len(r.Approvers))
	}
	return nil
}

// cmdApprovalExecute runs an approved request and writes what it released:
// to --out (mode 0600, never overwritten), which a PSK and a transport key
// need; a token goes to stdout when --out is not given.
func cmdApprovalExecute(ctx context.Context, args []string) error {
	var out *string
	cfg, fs, op, err := parseOperatorCommand("approval execute", args, func(fs *flag.FlagSet) {
		out = fs.String("out", "", "file for the released PSK (hex), transport key (JSON) or token; mode 0600, never overwritten")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return exitError{2, errors.New("usage: keyport approval execute ID [--out FILE] [--operator NAME]")}
	}
	a, err := open(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer a.Close()
	r, err := a.svc.GetApproval(ctx, op, fs.Arg(0))
	if err != nil {
		return err
	}
	if r.Action != keyport.ActionAdminToken && r.Action != keyport.ActionProviderApprove && *out == "" {
		return exitError{2, fmt.Errorf("%s releases a secret: give --out FILE", r.Action)}
	}
	if *out == "" {
		res, err := a.svc.ExecuteApproval(ctx, op, fs.Arg(0))
		if err != nil {
			return err
		}
		if text, _ := releasedText(r, res); text != "" {
			fmt.Fprint(stdout, text)
		}
		fmt.Fprintf(stderr, "request %s executed\n", r.ID)
		return nil
	}
	var what string
	err = releaseToFile(*out, func() (string, error) {
		res, err := a.svc.ExecuteApproval(ctx, op, fs.Arg(0))
		if err != nil {
			return "", err
		}
		var text string
		text, what = releasedText(r, res)
		return text, nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "request %s executed: %s written to %s\n", r.ID, what, *out)
	return nil
}

// releasedText is what executing r released, as the file's text, and a
// phrase naming it.
func releasedText(r *keyport.ApprovalRequest, res *keyport.ApprovalResult) (text, what string) {
	switch {
	case res.PSK != nil:
		return hex.EncodeToString(res.PSK) + "\n", "the PSK of module " + r.Target
	case res.Transport != nil:
		b, _ := json.MarshalIndent(res.Transport, "", "  ")
		return string(b) + "\n", fmt.Sprintf("batch %s created; its transport key (KCV %s), wrapped for the manufacturer,", r.Target, res.Transport.KCV)
	case res.Token != "":
		return res.Token + "\n", "the admin token " + r.Target
	}
	return "", ""
}

// releaseToFile writes what release returns to a new file at path, mode
// 0600, never overwriting one (O_EXCL: nor a symbolic link planted at
// path, dangling or not). The file is made first, so that a secret that
// cannot be written is not released; if release or the write fails, the
// file goes. Every secret keyport writes to a file the user names goes
// through it.
func releaseToFile(path string, release func() (string, error)) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w (the file is never overwritten)", err)
	}
	text, err := release()
	if err == nil {
		_, err = f.WriteString(text)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// writeNewSecret writes b, a secret in hand, to a new file at path as
// releaseToFile does.
func writeNewSecret(path string, b []byte) error {
	return releaseToFile(path, func() (string, error) { return string(b), nil })
}

// fileApproval is what a guarded command does under dual control: it files
// the request and stops with exitApprovalPending.
func fileApproval(ctx context.Context, a *app, op keyport.Principal, action keyport.ApprovalAction, target string, params map[string]string) error {
	r, err := a.svc.RequestApproval(ctx, op, action, target, params, "")
	if err != nil {
		return err
	}
	printRequested(r)
	return exitError{exitApprovalPending, fmt.Errorf("%s %s needs another admin's approval: request %s filed", action, target, r.ID)}
}
