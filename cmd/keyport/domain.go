package main

import (
	"context"
	"fmt"

	"github.com/keyport/keyport"
)

// cmdDomain is "keyport domain lock|unlock|release EID AID": the issuer's
// card changes of one domain, as the console's buttons and the API do
// (Service.ChangeDomain). The job is queued; the card
// confirms it in the module's next admin session, run by keyport serve.
func cmdDomain(ctx context.Context, verb string, args []string) error {
	cfg, fs, op, err := parseOperatorCommand("domain "+verb, args, nil)
	if err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return exitError{2, fmt.Errorf("usage: keyport domain %s EID AID [--operator NAME]", verb)}
	}
	eid, err := keyport.ParseEID(fs.Arg(0))
	if err != nil {
		return exitError{2, err}
	}
	aid, err := keyport.ParseAID(fs.Arg(1))
	if err != nil {
		return exitError{2, err}
	}
	a, err := open(ctx, cfg, false)
	if err != nil {
		return err
	}
	defer a.Close()
	j, err := a.svc.ChangeDomain(ctx, op, eid, aid, keyport.CardChange(verb))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s of %s/%s queued as job %s; the card confirms it in the module's next admin session (the job page or GET /api/v1/admin/jobs/%s shows it)\n",
		verb, eid, aid, j.Ref, j.Ref)
	return nil
}
