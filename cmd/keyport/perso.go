package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/pcsc"
	"github.com/keyport/keyport/perso"
)

// cmdPerso is `keyport perso`: the issuer personalization station for one
// module in a PC/SC reader (DESIGN.md flow 1; perso.Station.Personalize).
// Running it again on the same module finishes an interrupted run and does
// nothing on a finished one.
func cmdPerso(ctx context.Context, args []string) error {
	var cfg config
	fs, err := newFlags("perso", &cfg)
	if err != nil {
		return err
	}
	reader := fs.String("reader", "", "PC/SC reader holding the module (its full name, or the start of exactly one name)")
	batch := fs.String("batch", "", "batch the module joins (keyport batch create NAME, without --export-to)")
	domains := fs.Int("domains", 8, "number of SSDs to create")
	opName := operatorFlag(fs)
	isdKeys := fs.String("isd-keys", string(perso.ISDKeysDefault),
		"the ISD's keys before perso: default (the public GP test keys, replaced by HSM-derived ones) or derived (already replaced)")
	if err := parse(fs, &cfg, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return exitError{2, fmt.Errorf("perso: unexpected argument %q", fs.Arg(0))}
	}
	op, err := operator(*opName)
	if err != nil {
		return err
	}
	if *batch == "" {
		return exitError{2, errors.New("usage: keyport perso --reader NAME --batch B [--domains N] [--isd-keys default|derived]")}
	}
	if *reader == "" {
		names, err := pcsc.Readers()
		if err != nil {
			return err
		}
		return exitError{2, fmt.Errorf("perso: --reader is required; attached readers: %q", names)}
	}
	a, err := open(ctx, cfg, true)
	if err != nil {
		return err
	}
	defer a.Close()
	card, err := pcsc.Open(ctx, *reader)
	if err != nil {
		return err
	}
	defer card.Close()
	rep, err := a.station().Personalize(ctx, op, card, perso.Request{
		Batch: *batch, Domains: *domains, ISDKeys: perso.ISDKeys(*isdKeys)})
	if err != nil {
		if rep != nil && rep.APDUs > 0 {
			fmt.Fprintf(stderr, "perso stopped after %d commands; run it again to finish the module\n", rep.APDUs)
		}
		return err
	}
	printPersoReport(rep)
	return nil
}

func printPersoReport(rep *perso.Report) {
	switch {
	case rep.AlreadyRegistered:
		fmt.Fprintf(stdout, "module %s was personalized already; card and store agree\n", rep.EID)
	default:
		fmt.Fprintf(stdout, "module %s personalized: ISD %s", rep.EID, rep.ISDAID)
		if rep.ISDKeysReplaced {
			fmt.Fprintf(stdout, ", test keys replaced by derived key set 0x%02X", keyport.PersoISDKVN)
		}
		fmt.Fprintln(stdout)
	}
	for _, d := range rep.Domains {
		var did []string
		if d.Created {
			did = append(did, "created")
		}
		if d.KeysLoaded {
			did = append(did, "keys loaded")
		}
		if len(did) == 0 {
			did = append(did, "present")
		}
		fmt.Fprintf(stdout, "  SSD %s  KVN 0x%02X  KCV enc %s mac %s dek %s  counter %d  (%s)\n", d.AID, keyport.FirstKVN,
			d.KCV[keyport.UsageENC], d.KCV[keyport.UsageMAC], d.KCV[keyport.UsageDEK], d.SeqCounter, strings.Join(did, ", "))
	}
	fmt.Fprintf(stdout, "%d commands in %v\n", rep.APDUs, rep.Duration.Round(1e6))
}

// station is the personalization station wired to the app's use cases and
// HSM; it logs where the service does.
func (a *app) station() *perso.Station { return &perso.Station{Service: a.svc, Keys: a.hsm} }
