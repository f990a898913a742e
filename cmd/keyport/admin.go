package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/keyport/keyport"
)

func cmdBatchCreate(ctx context.Context, args []string) error {
	var exportTo, out, prefix *string
	cfg, fs, op, err := parseOperatorCommand("batch create", args, func(fs *flag.FlagSet) {
		exportTo = fs.String("export-to", "", "manufacturer's RSA public key (PEM): makes an imported batch and exports its transport key")
		out = fs.String("out", "", "where to write the wrapped transport key JSON (default NAME-transport.json)")
		prefix = fs.String("aid-prefix", "", "SSD AID prefix for a batch keyport personalizes (hex)")
	})
	if err != nil {
		return err
	}
	name := fs.Arg(0)
	if name == "" || fs.NArg() > 1 {
		return exitError{2, errors.New("usage: keyport batch create NAME [--export-to manufacturer.pem] [--out FILE]")}
	}
	var aidPrefix keyport.AID
	if *prefix != "" {
		if aidPrefix, err = keyport.ParseAID(*prefix); err != nil {
			return err
		}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	if _, err := a.hsm.Init(ctx); err != nil {
		return err
	}
	if *exportTo == "" {
		b, _, err := a.svc.CreateBatch(ctx, op, name, aidPrefix, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "batch %s created (first keys generated at perso; its KEK is in the HSM)\n", b.Name)
		return nil
	}
	pemData, err := os.ReadFile(*exportTo)
	if err != nil {
		return err
	}
	pub, err := keyport.ParsePublicKeyPEM(pemData)
	if err != nil {
		return fmt.Errorf("--export-to %s: %w", *exportTo, err)
	}
	_, export, err := a.svc.CreateBatch(ctx, op, name, aidPrefix, pub)
	if errors.Is(err, keyport.ErrApprovalRequired) {
		return fileApproval(ctx, a, op, keyport.ActionTransportExport, name,
			map[string]string{"manufacturer_pem": string(pemData), "aid_prefix": string(aidPrefix)})
	}
	if err != nil {
		return err
	}
	path := *out
	if path == "" {
		path = name + "-transport.json"
	}
	b, _ := json.MarshalIndent(export, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "batch %s created (imported first keys); transport key KCV %s, wrapped for the manufacturer in %s\n", name, export.KCV, path)
	return nil
}

func cmdImport(ctx context.Context, args []string) error {
	var batch, verify *string
	cfg, fs, op, err := parseOperatorCommand("import", args, func(fs *flag.FlagSet) {
		batch = fs.String("batch", "", "batch name (required)")
		verify = fs.String("verify", "sample", "check KCVs in the HSM: all, sample or none")
	})
	if err != nil {
		return err
	}
	if *batch == "" || fs.NArg() != 1 {
		return exitError{2, errors.New("usage: keyport import --batch NAME [--verify all|sample|none] FILE")}
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	n, err := a.svc.ImportModules(ctx, op, *batch, f, keyport.VerifyMode(*verify))
	var ie *keyport.ImportErrors
	if errors.As(err, &ie) {
		for _, l := range ie.Lines {
			fmt.Fprintf(stderr, "%s:%d: %v\n", fs.Arg(0), l.Line, l.Err)
		}
		return fmt.Errorf("import rejected, nothing imported: %d bad line(s)", len(ie.Lines)+ie.More)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %d modules into batch %s\n", n, *batch)
	return nil
}

func cmdProviderAdd(ctx context.Context, args []string) error {
	var email, kind *string
	cfg, fs, op, err := parseOperatorCommand("provider add", args, func(fs *flag.FlagSet) {
		email = fs.String("email", "", "contact e-mail (required)")
		kind = fs.String("kind", "other", "bank, retailer, transit or other")
	})
	if err != nil {
		return err
	}
	name := fs.Arg(0)
	if name == "" || fs.NArg() > 1 || *email == "" {
		return exitError{2, errors.New(`usage: keyport provider add NAME --email E [--kind bank|retailer|transit|other]`)}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	p, token, err := a.svc.AddProvider(ctx, op, name, *email, keyport.ProviderKind(*kind))
	if err != nil {
		return err
	}
	if p.Status != keyport.ProviderApproved {
		fmt.Fprintf(stdout, "provider %s (%s) created, pending: its token works once another admin approves it.\nAPI token (shown once):\n%s\n", p.Name, p.ID, token)
		return fileApproval(ctx, a, op, keyport.ActionProviderApprove, p.ID, nil)
	}
	fmt.Fprintf(stdout, "provider %s (%s) created, approved.\nAPI token (shown once):\n%s\n", p.Name, p.ID, token)
	return nil
}

func cmdAdminToken(ctx context.Context, args []string) error {
	var name *string
	var ttl *time.Duration
	cfg, fs, op, err := parseOperatorCommand("admin token", args, func(fs *flag.FlagSet) {
		name = fs.String("name", "cli", "a name for the token, shown in the token list and the audit log")
		ttl = fs.Duration("ttl", keyport.DefaultAdminTokenTTL, "how long the token works (e.g. 720h); expired tokens are refused")
	})
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return exitError{2, errors.New("usage: keyport admin token [--name N] [--ttl D] [--operator NAME] | admin token list | admin token revoke ID")}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	token, t, err := a.svc.CreateAdminToken(ctx, op, *name, *ttl)
	if errors.Is(err, keyport.ErrApprovalRequired) {
		params := map[string]string{}
		if *ttl != 0 {
			params["ttl"] = ttl.String()
		}
		return fileApproval(ctx, a, op, keyport.ActionAdminToken, *name, params)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "admin token %s (%s) expires %s\n", t.ID, t.Name, t.ExpiresAt.Format(time.RFC3339))
	fmt.Fprintln(stdout, token)
	return nil
}

// cmdAdminTokenList prints every issuer-admin token: ID, name, owner,
// state, expiry and last use (never the token itself, which is not kept).
func cmdAdminTokenList(ctx context.Context, args []string) error {
	a, fs, err := command(ctx, "admin token list", args, true, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	if fs.NArg() > 0 {
		return exitError{2, errors.New("usage: keyport admin token list")}
	}
	ts, err := a.svc.ListAdminTokens(ctx, cli)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tNAME\tOWNER\tSTATE\tCREATED\tEXPIRES\tLAST USED")
	now := time.Now()
	for _, t := range ts {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, dash(t.Owner), keyport.AdminTokenState(t, now),
			t.CreatedAt.Format(time.RFC3339), timeOrDash(t.ExpiresAt), timeOrDash(t.LastUsedAt))
	}
	return w.Flush()
}

// cmdAdminTokenRevoke revokes one issuer-admin token by ID.
func cmdAdminTokenRevoke(ctx context.Context, args []string) error {
	cfg, fs, op, err := parseOperatorCommand("admin token revoke", args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return exitError{2, errors.New("usage: keyport admin token revoke ID [--operator NAME]")}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	if err := a.svc.RevokeAdminToken(ctx, op, fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "admin token %s revoked\n", fs.Arg(0))
	return nil
}

// cmdAdminUserDisable disables (or enables) an issuer-admin user.
func cmdAdminUserDisable(ctx context.Context, args []string, disabled bool) error {
	verb := map[bool]string{true: "disable", false: "enable"}[disabled]
	cfg, fs, op, err := parseOperatorCommand("admin user "+verb, args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return exitError{2, fmt.Errorf("usage: keyport admin user %s EMAIL [--operator NAME]", verb)}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	u, err := a.svc.SetAdminUserDisabled(ctx, op, fs.Arg(0), disabled)
	if err != nil {
		return err
	}
	if disabled {
		fmt.Fprintf(stdout, "admin user %s disabled: signed out everywhere; their API tokens are refused\n", u.Email)
	} else {
		fmt.Fprintf(stdout, "admin user %s enabled\n", u.Email)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func cmdAuditVerify(ctx context.Context, args []string) error {
	a, _, err := command(ctx, "audit verify", args, false, nil)
	if err != nil {
		return err
	}
	defer a.Close()
	r, err := a.svc.VerifyAudit(ctx)
	var broken *keyport.AuditBroken
	if errors.As(err, &broken) {
		return exitError{3, broken}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "audit chain verified: %d events, %d HSM checkpoints, head %x\n", r.Events, r.Checkpoints, r.Head)
	switch {
	case r.Keyed:
		fmt.Fprintf(stdout, "keyed head at row %d: the log ends there (compare with the row last recorded outside the database)\n", r.Events)
	case r.Events > 0:
		fmt.Fprintln(stdout, "no keyed head yet: these events were written before it existed, so deleting the last of them "+
			"(after the last checkpoint) would not be seen; the next audited action writes the head")
	}
	return nil
}
