package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/gp"
)

// maxRelaySteps bounds the steps of one relayed session.
const maxRelaySteps = 16

// cmdAppRelay is `keyport app relay`: it plays the provider's mobile app
// on the live data path. It opens a channel to --aid through the handset's
// access control enforcer with the app's certificate (refused unless an
// access rule names it: exit status 3), then relays the provider's server
// (`keyport sp serve`, --server) to the domain: POST the answers, send the
// C-APDUs it gets on the channel, until the server says done (relay
// protocol in relay.go). The app sees ciphertext only.
func cmdAppRelay(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("keyport app relay", flag.ContinueOnError)
	socket := fs.String("socket", "", "the enforcer's Unix socket (keyport agent --app-socket)")
	certFile := fs.String("cert", "", "the app's signing certificate, PEM or DER")
	aidHex := fs.String("aid", "", "AID of the provider's security domain, hex")
	pkg := fs.String("package", "", "the app's package name (only rules naming a package look at it)")
	server := fs.String("server", "", "the provider's server, https://HOST:PORT (keyport sp serve)")
	caFile := fs.String("ca", "", "CA certificates (PEM) to trust for --server instead of the system's")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *socket == "" || *certFile == "" || *aidHex == "" || !strings.HasPrefix(*server, "https://") {
		return exitError{2, errors.New("usage: keyport app relay --socket PATH --cert app.pem --aid AID --server https://HOST:PORT [--ca ca.pem]")}
	}
	aid, err := hex.DecodeString(*aidHex)
	if err != nil {
		return exitError{2, fmt.Errorf("--aid %q is not hex", *aidHex)}
	}
	cert, err := os.ReadFile(*certFile)
	if err != nil {
		return err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if *caFile != "" {
		b, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(b) {
			return exitError{2, fmt.Errorf("--ca %s holds no PEM certificate", *caFile)}
		}
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true}}
	defer hc.CloseIdleConnections()
	c, err := ace.DialApp(ctx, *socket)
	if err != nil {
		return fmt.Errorf("the enforcer's socket: %w", err)
	}
	defer c.Close()
	rep, err := c.Open(cert, aid, *pkg)
	if err != nil {
		return appRefusal(err)
	}
	fmt.Fprintf(stdout, "channel %d to %X\n", rep.Channel, aid)
	req := keyport.RelayRequest{Responses: []string{}}
	url := strings.TrimSuffix(*server, "/") + "/v1/relay"
	for range maxRelaySteps {
		rr, cmds, err := relayStep(ctx, hc, url, req)
		if err != nil {
			return err
		}
		if rr.Done {
			fmt.Fprintf(stdout, "server: %s\n", rr.Result)
			if err := c.CloseChannel(); err != nil {
				return appRefusal(err)
			}
			return nil
		}
		req = keyport.RelayRequest{Session: rr.Session, Responses: []string{}}
		for _, cmd := range cmds {
			r, err := c.Transmit(cmd.Bytes())
			if err != nil {
				return appRefusal(err)
			}
			req.Responses = append(req.Responses, strings.ToUpper(hex.EncodeToString(r)))
			if len(r) < 2 || gp.SW(uint16(r[len(r)-2])<<8|uint16(r[len(r)-1])) != gp.SWOK {
				break
			}
		}
	}
	return fmt.Errorf("the server did not finish the session in %d steps", maxRelaySteps)
}

// relayStep posts one step to the provider's server.
func relayStep(ctx context.Context, hc *http.Client, url string, req keyport.RelayRequest) (keyport.RelayReply, []gp.Command, error) {
	b, _ := json.Marshal(req)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(b))
	if err != nil {
		return keyport.RelayReply{}, nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(hr)
	if err != nil {
		return keyport.RelayReply{}, nil, fmt.Errorf("the provider's server: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, keyport.MaxRelayBody+1))
	if err != nil {
		return keyport.RelayReply{}, nil, err
	}
	if len(body) > keyport.MaxRelayBody {
		return keyport.RelayReply{}, nil, fmt.Errorf("the provider's server answered more than %d bytes", keyport.MaxRelayBody)
	}
	rr, cmds, err := keyport.ParseRelayReply(body)
	if resp.StatusCode != http.StatusOK {
		msg := rr.Error
		if err != nil {
			msg = resp.Status
		}
		return rr, nil, fmt.Errorf("the provider's server refused the session: %s", msg)
	}
	return rr, cmds, err
}
