package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/keyport/keyport"
)

func cmdBatchCreate(ctx context.Context, args []string) error {
	var exportTo, out, prefix *string
	cfg, fs, err := parseCommand("batch create", args, func(fs *flag.FlagSet) {
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
		b, _, err := a.svc.CreateBatch(ctx, cli, name, aidPrefix, nil)
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
	_, export, err := a.svc.CreateBatch(ctx, cli, name, aidPrefix, pub)
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
	cfg, fs, err := parseCommand("import", args, func(fs *flag.FlagSet) {
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
	n, err := a.svc.ImportModules(ctx, cli, *batch, f, keyport.VerifyMode(*verify))
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
	cfg, fs, err := parseCommand("provider add", args, func(fs *flag.FlagSet) {
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
	p, token, err := a.svc.AddProvider(ctx, cli, name, *email, keyport.ProviderKind(*kind))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "provider %s (%s) created, approved.\nAPI token (shown once):\n%s\n", p.Name, p.ID, token)
	return nil
}

func cmdAdminToken(ctx context.Context, args []string) error {
	var name *string
	a, _, err := command(ctx, "admin token", args, true, func(fs *flag.FlagSet) {
		name = fs.String("name", "cli", "a name for the token, for the audit log")
	})
	if err != nil {
		return err
	}
	defer a.Close()
	token, err := a.svc.CreateAdminToken(ctx, *name)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, token)
	return nil
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
