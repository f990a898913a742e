package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/keyport/keyport/cardlink/agent/ace"
)

// exitRefused is the exit status of `keyport app` when the enforcer
// refuses the channel or an APDU.
const exitRefused = 3

// cmdApp is `keyport app`: it plays a provider's mobile app talking to its
// applet through the handset's access control enforcer (`keyport agent
// --app-socket`): it opens a channel to --aid with the app's signing
// certificate, sends each --apdu in order and prints the answers, one line
// each, then closes the channel. A refusal by the enforcer is printed as
// the enforcer worded it and ends the command with status 3.
func cmdApp(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "relay" {
		return cmdAppRelay(ctx, args[1:])
	}
	fs := flag.NewFlagSet("keyport app", flag.ContinueOnError)
	socket := fs.String("socket", "", "the enforcer's Unix socket (keyport agent --app-socket)")
	certFile := fs.String("cert", "", "the app's signing certificate, PEM or DER")
	aidHex := fs.String("aid", "", "AID of the applet (security domain) to open a channel to, hex")
	pkg := fs.String("package", "", "the app's package name (only rules naming a package look at it)")
	var apdus [][]byte
	fs.Func("apdu", "command APDU in hex to send on the channel (repeatable, sent in order)", func(s string) error {
		b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
		if err != nil || len(b) < 4 {
			return fmt.Errorf("%q is not a command APDU in hex", s)
		}
		apdus = append(apdus, b)
		return nil
	})
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *socket == "" || *certFile == "" || *aidHex == "" {
		return exitError{2, errors.New("usage: keyport app --socket PATH --cert app.pem --aid AID [--apdu HEX ...]")}
	}
	aid, err := hex.DecodeString(*aidHex)
	if err != nil {
		return exitError{2, fmt.Errorf("--aid %q is not hex", *aidHex)}
	}
	cert, err := os.ReadFile(*certFile)
	if err != nil {
		return err
	}
	c, err := ace.DialApp(ctx, *socket)
	if err != nil {
		return fmt.Errorf("the enforcer's socket: %w", err)
	}
	defer c.Close()
	rep, err := c.Open(cert, aid, *pkg)
	if err != nil {
		return appRefusal(err)
	}
	fmt.Fprintf(stdout, "channel %d to %X: SELECT answered %s\n", rep.Channel, aid, strings.ToUpper(rep.Select))
	for _, a := range apdus {
		r, err := c.Transmit(a)
		if err != nil {
			return appRefusal(err)
		}
		fmt.Fprintf(stdout, "%X → %X\n", a, r)
	}
	if err := c.CloseChannel(); err != nil {
		return appRefusal(err)
	}
	return nil
}

// appRefusal gives the enforcer's refusals their exit status.
func appRefusal(err error) error {
	var ae *ace.AppError
	if errors.As(err, &ae) {
		return exitError{exitRefused, fmt.Errorf("enforcer refused (%s): %s", ae.Code, ae.Message)}
	}
	return err
}
