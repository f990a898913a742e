package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
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
	var reader, batch, isdKeys, msisdn, msisdnFile *string
	var domains *int
	cfg, fs, op, err := parseOperatorCommand("perso", args, func(fs *flag.FlagSet) {
		reader = fs.String("reader", "", "PC/SC reader holding the module (its full name, or the start of exactly one name)")
		batch = fs.String("batch", "", "batch the module joins (keyport batch create NAME, without --export-to)")
		domains = fs.Int("domains", 8, "number of SSDs to create")
		isdKeys = fs.String("isd-keys", string(perso.ISDKeysDefault),
			"the ISD's keys before perso: default (the public GP test keys, replaced by HSM-derived ones) or derived (already replaced)")
		msisdn = fs.String("msisdn", "", "the module's MSISDN (E.164), by which keyport reaches it with a trigger SMS")
		msisdnFile = fs.String("msisdn-file", "", "file of \"EID MSISDN\" lines: the MSISDN of whichever module is in the reader (over --msisdn)")
	})
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return exitError{2, fmt.Errorf("perso: unexpected argument %q", fs.Arg(0))}
	}
	if _, err := keyport.NormalizeMSISDN(*msisdn); err != nil {
		return exitError{2, fmt.Errorf("perso: --msisdn: %w", err)}
	}
	var msisdns map[keyport.EID]string
	if *msisdnFile != "" {
		if msisdns, err = readMSISDNFile(*msisdnFile); err != nil {
			return exitError{2, err}
		}
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
		Batch: *batch, Domains: *domains, ISDKeys: perso.ISDKeys(*isdKeys), MSISDN: *msisdn, MSISDNs: msisdns})
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
	if rep.OTAKeysLoaded {
		fmt.Fprintf(stdout, "  OTA key set %02X loaded (KIc, KID, DEK generated in the HSM)\n", keyport.OTAKVN)
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

// readMSISDNFile reads "EID MSISDN" lines (blank lines and # comments
// skipped); every EID and MSISDN is checked.
func readMSISDNFile(path string) (map[keyport.EID]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[keyport.EID]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: want \"EID MSISDN\"", path, i+1)
		}
		eid, err := keyport.ParseEID(f[0])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		n, err := keyport.NormalizeMSISDN(f[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, i+1, err)
		}
		if _, dup := out[eid]; dup {
			return nil, fmt.Errorf("%s:%d: EID %s appears twice", path, i+1, eid)
		}
		out[eid] = n
	}
	return out, nil
}
