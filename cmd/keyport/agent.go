package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/pcsc"
)

// cmdAgent is `keyport agent`: the handset agent for the module in a PC/SC
// reader (DESIGN.md flow 8). It waits on the admin server's wake-up channel
// (or polls with --poll) and runs GP Amendment B admin sessions, relaying
// the scripts' APDUs to the module. With --app-socket it is also the
// handset's access control enforcer: apps (keyport app) ask it for logical
// channels to applets, which the module's ARA-M rules grant or refuse.
// Either part may run alone.
func cmdAgent(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyport agent", flag.ContinueOnError)
	reader := fs.String("reader", "", "PC/SC reader of the module (full name or a unique prefix)")
	server := fs.String("server", "", "admin server host:port (KEYPORT_ADMIN_ADDR of keyport serve)")
	identity := fs.String("psk-identity", "", "the module's TLS-PSK identity (its EID)")
	pskFile := fs.String("psk-file", "", "file holding the module's TLS-PSK in hex")
	poll := fs.Duration("poll", 0, "open a session every DURATION instead of waiting for wake-ups")
	once := fs.Bool("once", false, "run one admin session now and exit")
	uri := fs.String("uri", agent.DefaultAdminURI, "admin URI of the first POST (session parameter 8C)")
	appSocket := fs.String("app-socket", "", "also serve apps' channel requests (access control enforcer) on this Unix socket; its directory must be mode 0700")
	smsFrom := fs.String("sms-from", "", "play the handset's modem: take the module's SMS from this handset file (the test SMSC's --handset) instead of long-polling; the admin server is the one the card's OPEN CHANNEL names")
	smsMO := fs.String("sms-mo", "", "with --sms-from: append the card's proofs of receipt to this spool (the test SMSC's --mo-spool)")
	msisdn := fs.String("msisdn", "", "with --sms-from: the module's MSISDN (E.164)")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *smsFrom != "" {
		return agentSMS(ctx, *reader, *identity, *pskFile, *msisdn, *smsFrom, *smsMO, *uri)
	}
	admin := *server != "" || *identity != "" || *pskFile != ""
	if *reader == "" || (admin && (*server == "" || *identity == "" || *pskFile == "")) || (!admin && *appSocket == "") {
		return exitError{2, errors.New("usage: keyport agent --reader NAME [--server HOST:PORT --psk-identity ID --psk-file F [--poll 30s | --once]] [--app-socket PATH]\n       keyport agent --reader NAME --psk-identity ID --psk-file F --sms-from FILE --msisdn N [--sms-mo FILE]")}
	}
	if *once && *appSocket != "" {
		return exitError{2, errors.New("--once runs one admin session and exits; it does not go with --app-socket")}
	}
	var psk []byte
	if admin {
		var err error
		if psk, err = readPSKFile(*pskFile); err != nil {
			return err
		}
	}
	card, err := pcsc.Open(ctx, *reader)
	if err != nil {
		return err
	}
	defer card.Close()
	log := newLogger(config{LogFormat: "text"}, stderr)
	if *appSocket != "" {
		l, err := ace.ListenAppSocket(*appSocket)
		if err != nil {
			return err
		}
		enf := ace.NewEnforcer(card, log)
		fmt.Fprintf(stderr, "keyport agent: access control enforcer for the module in %q on %s\n", card.Name(), *appSocket)
		if !admin {
			return enf.Serve(ctx, l)
		}
		// The enforcer stops with the admin agent, whichever way it ends.
		enfCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- enf.Serve(enfCtx, l) }()
		defer func() { stop(); <-done }()
	}
	a := agent.New(agent.Config{Server: *server, Identity: *identity, PSK: psk, AdminURI: *uri, Poll: *poll,
		Log: log}, card)
	if *once {
		rep, err := a.Session(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "admin session done: %d script(s) %v, %d resume(s)\n", rep.Scripts, rep.Statuses, rep.Resumed)
		return nil
	}
	fmt.Fprintf(stderr, "keyport agent: module %s in %q, admin server %s (%s)\n", *identity, card.Name(), *server,
		map[bool]string{true: "polling every " + poll.String(), false: "waiting for wake-ups"}[*poll > 0])
	return a.Run(ctx)
}

func readPSKFile(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	psk, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil || len(psk) == 0 {
		return nil, fmt.Errorf("%s: the PSK file must hold the key in hex", path)
	}
	return psk, nil
}

// agentSMS is `keyport agent --sms-from`: the handset's modem and BIP stack
// for a module reached by SMS. Each OTA SMS for the MSISDN goes to the card
// as ENVELOPE (SMS-PP DOWNLOAD), its proof of receipt back as a
// mobile-originated SMS; an OPEN CHANNEL the card then asks for opens the
// TLS-PSK session to the admin server it names. No long poll.
func agentSMS(ctx context.Context, reader, identity, pskFile, msisdn, from, mo, uri string) error {
	n, err := keyport.NormalizeMSISDN(msisdn)
	if reader == "" || identity == "" || pskFile == "" || msisdn == "" {
		return exitError{2, errors.New("usage: keyport agent --reader NAME --psk-identity ID --psk-file F --sms-from FILE --msisdn N [--sms-mo FILE]")}
	}
	if err != nil {
		return exitError{2, err}
	}
	psk, err := readPSKFile(pskFile)
	if err != nil {
		return err
	}
	card, err := pcsc.Open(ctx, reader)
	if err != nil {
		return err
	}
	defer card.Close()
	log := newLogger(config{LogFormat: "text"}, stderr)
	a := agent.New(agent.Config{Identity: identity, PSK: psk, AdminURI: uri, Log: log}, card)
	var sink agent.SMSSink
	if mo != "" {
		sink = agent.MOFile{Path: mo, MSISDN: n}
	}
	fmt.Fprintf(stderr, "keyport agent: module %s in %q, SMS for %s from %s\n", identity, card.Name(), n, from)
	return a.RunSMS(ctx, &agent.HandsetFile{Path: from, MSISDN: n}, sink)
}
