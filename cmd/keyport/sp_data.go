package main

import (
	"context"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// providerKeys is the provider's current key set of one domain, in clear in
// this process only.
type providerKeys struct {
	EID  keyport.EID
	AID  keyport.AID
	KVN  int
	Keys map[keyport.KeyUsage][]byte
}

func (k *providerKeys) keySet() gp.KeySet {
	return gp.KeySet{KVN: byte(k.KVN), ENC: gp.AESKey(k.Keys[keyport.UsageENC]), MAC: gp.AESKey(k.Keys[keyport.UsageMAC])}
}

// keysFlags are the flags that name the provider's keys: a file `sp
// script --generate` wrote (wrapped to the provider's RSA key, --key) or
// clear JSON {"eid":…,"aid":…,"kvn":49,"keys":{"enc":hex,"mac":hex,"dek":hex}}.
type keysFlags struct {
	keys, key, eid, aid *string
	kvn                 *int
}

func bindKeysFlags(fs *flag.FlagSet) keysFlags {
	return keysFlags{
		keys: fs.String("keys", "", "the domain's current keys: the file `sp script --new-keys-out` wrote, or clear JSON {\"keys\":{\"enc\":…,\"mac\":…,\"dek\":…}}"),
		key:  fs.String("key", "", "the provider's private key (PEM) the keys file is wrapped to"),
		eid:  fs.String("eid", "", "the module's EID (default: the keys file's)"),
		aid:  fs.String("aid", "", "the domain's AID (default: the keys file's)"),
		kvn:  fs.Int("kvn", 0, "the keys' KVN (default: the keys file's, else 0x31)"),
	}
}

func (f keysFlags) load() (*providerKeys, error) {
	if *f.keys == "" {
		return nil, exitError{2, errors.New("--keys is required")}
	}
	b, err := os.ReadFile(*f.keys)
	if err != nil {
		return nil, err
	}
	var meta struct {
		EID     keyport.EID     `json:"eid"`
		AID     keyport.AID     `json:"aid"`
		KVN     int             `json:"kvn"`
		Wrapped json.RawMessage `json:"wrapped"`
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return nil, fmt.Errorf("%s: not a keys file: %w", *f.keys, err)
	}
	var priv *rsa.PrivateKey
	if len(meta.Wrapped) > 0 {
		if *f.key == "" {
			return nil, exitError{2, fmt.Errorf("%s holds wrapped keys: give --key, the private key they are wrapped to", *f.keys)}
		}
		if priv, err = loadPrivateKey(*f.key); err != nil {
			return nil, err
		}
	}
	keys, err := secondKeys(*f.keys, false, priv)
	if err != nil {
		return nil, err
	}
	pk := &providerKeys{EID: meta.EID, AID: meta.AID, KVN: meta.KVN, Keys: keys}
	if *f.eid != "" {
		pk.EID = keyport.EID(*f.eid)
	}
	if *f.aid != "" {
		pk.AID = keyport.AID(strings.ToUpper(*f.aid))
	}
	if *f.kvn != 0 {
		pk.KVN = *f.kvn
	}
	if pk.KVN == 0 {
		pk.KVN = 0x31
	}
	pk.AID = keyport.AID(strings.ToUpper(string(pk.AID)))
	if pk.AID == "" {
		return nil, exitError{2, errors.New("the domain's AID: give --aid (the keys file names none)")}
	}
	if _, err := hex.DecodeString(string(pk.AID)); err != nil || len(pk.AID) < 10 || len(pk.AID) > 32 {
		return nil, exitError{2, fmt.Errorf("AID %q is not 5 to 16 bytes in hex", pk.AID)}
	}
	return pk, nil
}

// cmdSPData is `keyport sp data put|get|read`: the provider's data objects
// in its domain (DESIGN.md flow 9, gp/dataobj.go), pushed through
// card-link in an SCP03 session at level 33 under its own keys.
func cmdSPData(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return exitError{2, errors.New("usage: keyport sp data put|get|read …")}
	}
	switch args[0] {
	case "put", "get":
		return cmdSPDataScript(ctx, args[0], args[1:])
	case "read":
		return cmdSPDataRead(args[1:])
	}
	return exitError{2, fmt.Errorf("keyport sp data %s: want put, get or read", args[0])}
}

func parseDGI(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 16, 16)
	if err != nil || !gp.IsDataObject(uint16(n)) {
		return 0, exitError{2, fmt.Errorf("--dgi %q: a data object is a DGI %04X..%04X in hex", s, gp.DataObjectFirst, gp.DataObjectLast)}
	}
	return uint16(n), nil
}

// cmdSPDataScript builds a put or get data script. Without --portal it
// writes the script (the POST body; keep it for `sp data read`); with
// --portal it submits it, waits for the job, verifies the card's answer
// under the keys and, for get, writes the data.
func cmdSPDataScript(ctx context.Context, op string, args []string) error {
	fs := flag.NewFlagSet("keyport sp data "+op, flag.ContinueOnError)
	kf := bindKeysFlags(fs)
	dgiS := fs.String("dgi", "0101", "the first data object (DGI in hex, 0100..1FFF)")
	in := fs.String("in", "", "put: the data to store (split over consecutive DGIs of at most 236 bytes)")
	count := fs.Int("count", 1, "get: how many consecutive data objects to read")
	counter := fs.Int("counter", -1, "the domain's sequence counter as keyport reports it (default with --portal: asked)")
	portal := fs.String("portal", "", "keyport's URL: submit the script, wait for the card's answer and verify it")
	tokenFile := fs.String("token-file", "", "the provider's API token (default $KEYPORT_API_TOKEN)")
	wait := fs.Duration("wait", 5*time.Minute, "with --portal: how long to wait for the module")
	out := fs.String("out", "", "the script (without --portal), or the data read (get with --portal; mode 0600); default standard output")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	pk, err := kf.load()
	if err != nil {
		return err
	}
	first, err := parseDGI(*dgiS)
	if err != nil {
		return err
	}
	var cmds []gp.Command
	var dgis []uint16
	switch op {
	case "put":
		if *in == "" {
			return exitError{2, errors.New("usage: keyport sp data put --keys K [--key sp.pem] --dgi 0101 --in FILE (--counter N | --portal URL)")}
		}
		data, err := os.ReadFile(*in)
		if err != nil {
			return err
		}
		var objs []gp.DGI
		for off := 0; off < len(data) || off == 0; off += gp.MaxDataObject {
			end := min(off+gp.MaxDataObject, len(data))
			objs = append(objs, gp.DGI{Tag: first + uint16(len(objs)), Data: data[off:end]})
			if end == len(data) {
				break
			}
		}
		if last := int(first) + len(objs) - 1; last > int(gp.DataObjectLast) || len(objs) > keyport.MaxScriptAPDUs-2 {
			return exitError{2, fmt.Errorf("%d bytes need %d data objects from %04X: at most %d per script, up to %04X", len(data), len(objs), first, keyport.MaxScriptAPDUs-2, gp.DataObjectLast)}
		}
		if cmds, err = gp.StoreDataObjects(objs); err != nil {
			return err
		}
		for _, o := range objs {
			dgis = append(dgis, o.Tag)
		}
	case "get":
		if *count < 1 || *count > keyport.MaxScriptAPDUs-2 || int(first)+*count-1 > int(gp.DataObjectLast) {
			return exitError{2, fmt.Errorf("--count %d: 1 to %d objects, up to %04X", *count, keyport.MaxScriptAPDUs-2, gp.DataObjectLast)}
		}
		for i := range *count {
			dgis = append(dgis, first+uint16(i))
			cmds = append(cmds, gp.GetDataObject(first+uint16(i)))
		}
	}
	var pc *portalClient
	domainPath := domainAPIPath(pk.EID, pk.AID)
	if *portal != "" {
		if pk.EID == "" {
			return exitError{2, errors.New("--portal needs the module's EID: --eid (the keys file names none)")}
		}
		if pc, err = newPortalClient(*portal, *tokenFile, "--portal"); err != nil {
			return err
		}
		if *counter < 0 {
			if *counter, err = pc.counter(ctx, pk.EID, pk.AID); err != nil {
				return err
			}
		}
	} else if *counter < 0 {
		return exitError{2, errors.New("give --counter (the domain's sequence counter keyport reports) or --portal")}
	}
	req, err := keyport.DataScript(pk.AID, pk.KVN, *counter, pk.Keys, cmds)
	if err != nil {
		return err
	}
	if pc == nil {
		b, _ := json.MarshalIndent(req, "", "  ")
		return writeOut(*out, append(b, '\n'), false)
	}
	var job keyport.JobView
	if err := pc.call(ctx, http.MethodPost, domainPath+"/data-scripts", req, &job, http.StatusCreated); err != nil {
		return resync(err)
	}
	fmt.Fprintf(stderr, "data job %s queued; waiting for the module\n", job.ID)
	deadline := time.Now().Add(*wait)
	for !job.State.Final() {
		if time.Now().After(deadline) {
			return fmt.Errorf("job %s is still %s after %s", job.ID, job.State, *wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if err := pc.call(ctx, http.MethodGet, "/jobs/"+job.ID, nil, &job, http.StatusOK); err != nil {
			return err
		}
	}
	if job.State != keyport.JobDone || job.Result == nil {
		cause := job.LastError
		if job.Result != nil && job.Result.Cause != "" {
			cause = job.Result.Cause
		}
		return fmt.Errorf("job %s is %s: %s", job.ID, job.State, cause)
	}
	data, err := readData(pk, req, *job.Result)
	if err != nil {
		return err
	}
	if op == "put" {
		fmt.Fprintf(stdout, "stored %d bytes in DGI %s of %s; the card's answer verified under KVN %02X\n", dataLen(cmds), keyport.DGIRange(dgis), pk.AID, pk.KVN)
		return nil
	}
	return writeOut(*out, data, true)
}

func dataLen(cmds []gp.Command) int {
	n := 0
	for _, c := range cmds {
		if ds, err := gp.ParseDGIs(c.Data); err == nil {
			for _, d := range ds {
				n += len(d.Data)
			}
		}
	}
	return n
}

// readData verifies a data job's answer under the provider's keys and
// returns what its GET DATA commands read, in order.
func readData(pk *providerKeys, req keyport.DataScriptRequest, res keyport.ScriptResult) ([]byte, error) {
	answers, err := keyport.ReadDataAnswers(pk.AID, pk.keySet(), req, res)
	if err != nil {
		return nil, err
	}
	var data []byte
	for i, s := range req.APDUs[2:] {
		b, _ := hex.DecodeString(s)
		c, err := gp.ParseCommand(b)
		if err != nil || c.INS != gp.INSGetData {
			continue
		}
		v, err := gp.ParseDataObject(uint16(c.P1)<<8|uint16(c.P2), answers[i].Data)
		if err != nil {
			return nil, err
		}
		data = append(data, v...)
	}
	return data, nil
}

// cmdSPDataRead is `keyport sp data read --keys K --script S --job J`: it
// verifies, offline, the answer a data job's result (GET /api/v1/jobs/{id})
// holds for the script S (what `sp data get` wrote) and writes the data.
func cmdSPDataRead(args []string) error {
	fs := flag.NewFlagSet("keyport sp data read", flag.ContinueOnError)
	kf := bindKeysFlags(fs)
	scriptPath := fs.String("script", "", "the script as submitted")
	jobPath := fs.String("job", "", "the job as GET /api/v1/jobs/{id} returned it")
	out := fs.String("out", "", "write the data here (mode 0600) instead of standard output")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	if *scriptPath == "" || *jobPath == "" {
		return exitError{2, errors.New("usage: keyport sp data read --keys K [--key sp.pem] --script S --job J")}
	}
	pk, err := kf.load()
	if err != nil {
		return err
	}
	var req keyport.DataScriptRequest
	var job keyport.JobView
	for path, v := range map[string]any{*scriptPath: &req, *jobPath: &job} {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if job.Result == nil {
		return fmt.Errorf("job %s (%s) holds no answer yet", job.ID, job.State)
	}
	data, err := readData(pk, req, *job.Result)
	if err != nil {
		return err
	}
	return writeOut(*out, data, true)
}

// writeOut writes b to standard output, or to path: when b is secret (a
// card's data in the clear), a new file of mode 0600 that is never
// overwritten and no link is followed to (writeNewSecret); else of mode 0644.
func writeOut(path string, b []byte, secret bool) error {
	if path == "" {
		_, err := stdout.Write(b)
		return err
	}
	if secret {
		return writeNewSecret(path, b)
	}
	return os.WriteFile(path, b, 0o644)
}
