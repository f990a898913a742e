package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/agent/ace/acetest"
	"github.com/keyport/keyport/gp"
)

// testCA makes a CA and a server certificate it signs for 127.0.0.1, and
// writes ca.pem, server.pem and server.key into dir.
func testCA(t *testing.T, dir, name string) (caFile, certFile, keyFile string) {
	t.Helper()
	mk := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	caKey, srvKey := mk(), mk()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ = x509.ParseCertificate(caDER)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "sp serve"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(srvKey)
	caFile, certFile, keyFile = filepath.Join(dir, name+"-ca.pem"), filepath.Join(dir, name+"-server.pem"), filepath.Join(dir, name+"-server.key")
	os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return caFile, certFile, keyFile
}

// liveHandset is a handset whose SSD holds the provider's keys and data,
// with `keyport agent --app-socket` and `keyport sp serve` running.
type liveHandset struct {
	hs           *acetest.Handset
	keys         acetest.ProviderKeys
	data         []byte
	socket, url  string
	ca, dataOut  string
	appA, appB   acetest.App
	certA, certB string
	logs         *syncBuffer
	stopAgent    func()
	stopSPServe  func()
}

func newLiveHandset(t *testing.T) *liveHandset {
	t.Helper()
	lh := &liveHandset{hs: acetest.NewHandset(t), logs: &syncBuffer{}}
	// The agent and sp serve log from their goroutines.
	stderr = lh.logs
	lh.keys = acetest.ProviderKeys{KVN: 0x31, ENC: make([]byte, 16), MAC: make([]byte, 16), DEK: make([]byte, 16)}
	for _, k := range [][]byte{lh.keys.ENC, lh.keys.MAC, lh.keys.DEK} {
		rand.Read(k)
	}
	lh.hs.Issuer.Personalize(acetest.SSDAID, lh.keys)
	for i := 0; len(lh.data) < 600; i++ {
		lh.data = fmt.Appendf(lh.data, "loyalty card %03d: 1200 points, valid 2027-12\n", i)
	}
	lh.data = lh.data[:600]
	lh.hs.Issuer.StoreDataObjects(acetest.SSDAID, lh.keys, []gp.DGI{
		{Tag: 0x0101, Data: lh.data[:236]}, {Tag: 0x0102, Data: lh.data[236:472]}, {Tag: 0x0103, Data: lh.data[472:]}})

	dir := t.TempDir()
	lh.appA, lh.appB = acetest.NewApp(t, "A"), acetest.NewApp(t, "B")
	lh.certA, lh.certB = filepath.Join(dir, "a.pem"), filepath.Join(dir, "b.pem")
	os.WriteFile(lh.certA, lh.appA.PEM, 0o600)
	os.WriteFile(lh.certB, lh.appB.PEM, 0o600)
	keysFile := filepath.Join(dir, "keys.json")
	kj, _ := json.Marshal(map[string]any{"aid": hex.EncodeToString(acetest.SSDAID), "kvn": 0x31, "keys": map[string]string{
		"enc": hex.EncodeToString(lh.keys.ENC), "mac": hex.EncodeToString(lh.keys.MAC), "dek": hex.EncodeToString(lh.keys.DEK)}})
	os.WriteFile(keysFile, kj, 0o600)
	lh.url, lh.ca, lh.dataOut, lh.stopSPServe = startSPServe(t, lh.logs, keysFile, 3)

	lh.socket = filepath.Join(dir, "run", "se.sock")
	lh.stopAgent = startAgent(t, "--reader", lh.hs.Env.Reader, "--app-socket", lh.socket)
	return lh
}

// startAgent runs `keyport agent` with args until the test ends or the
// returned function is called; it waits for the app socket (the value of
// --app-socket in args).
func startAgent(t *testing.T, args ...string) func() {
	t.Helper()
	socket := ""
	for i, a := range args {
		if a == "--app-socket" && i+1 < len(args) {
			socket = args[i+1]
		}
	}
	actx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(actx, append([]string{"agent"}, args...)) }()
	stop := sync1(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	t.Cleanup(stop)
	waitSocket(t, socket, done)
	return stop
}

// startSPServe runs `keyport sp serve` with the keys file, reading count
// objects from DGI 0101, on a loopback port with a certificate of a fresh
// test CA; it returns the server's URL, the CA file, the directory it keeps
// what it read in, and what stops it. It logs to logs (the commands'
// stderr).
func startSPServe(t *testing.T, logs *syncBuffer, keysFile string, count int) (url, ca, dataOut string, stop func()) {
	t.Helper()
	dir := t.TempDir()
	ca, cert, key := testCA(t, dir, "sp")
	dataOut = filepath.Join(dir, "read")
	os.Mkdir(dataOut, 0o700)
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"sp", "serve", "--keys", keysFile, "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key,
			"--dgi", "0101", "--count", fmt.Sprint(count), "--data-out", dataOut})
	}()
	stop = sync1(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sp serve: %v", err)
		}
	})
	t.Cleanup(stop)
	re := regexp.MustCompile(`url=(https://127\.0\.0\.1:[0-9]+)/v1/relay`)
	for {
		if m := re.FindStringSubmatch(logs.String()); m != nil {
			return m[1], ca, dataOut, stop
		}
		select {
		case err := <-done:
			t.Fatalf("sp serve exited: %v\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// sync1 runs f once, however often it is called.
func sync1(f func()) func() {
	done := false
	return func() {
		if !done {
			done = true
			f()
		}
	}
}

func (lh *liveHandset) relay(cert string) error {
	return run(context.Background(), []string{"app", "relay", "--socket", lh.socket, "--cert", cert, "--aid", hex.EncodeToString(acetest.SSDAID),
		"--server", lh.url, "--ca", lh.ca})
}

// TestLiveDataPathReadsTheDomainsDataThroughTheAppAndTheEnforcer is flow
// 9's live path: `keyport sp serve` (the provider's server, holding its
// keys) runs an SCP03 session at level 33 with the domain, relayed over
// HTTPS by `keyport app relay` (the provider's app) through the handset's
// enforcer (`keyport agent --app-socket`) to the virtual module in a
// pcscd+vpcd reader. The app the ARA-M rule names gets the data read; the
// other is refused with the enforcer's words; once the rule is deleted the
// first is refused too. The app never sees the data.
func TestLiveDataPathReadsTheDomainsDataThroughTheAppAndTheEnforcer(t *testing.T) {
	o := capture(t)
	lh := newLiveHandset(t)
	rule := gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: lh.appA.SHA256(), APDU: []byte{0x01}}
	lh.hs.Issuer.StoreRule(rule)

	out := kp(t, o, nil, "app", "relay", "--socket", lh.socket, "--cert", lh.certA, "--aid", hex.EncodeToString(acetest.SSDAID), "--server", lh.url, "--ca", lh.ca)
	if !regexp.MustCompile(`(?m)^channel [1-9][0-9]? to F0010203040501\nserver: read 600 bytes from DGI 0101\.\.0103 of F0010203040501\n$`).MatchString(out) {
		t.Fatalf("app relay A:\n%s", out)
	}
	files, _ := filepath.Glob(filepath.Join(lh.dataOut, "*.bin"))
	if len(files) != 1 {
		t.Fatalf("sp serve kept %d sessions' data", len(files))
	}
	if b, _ := os.ReadFile(files[0]); !bytes.Equal(b, lh.data) {
		t.Fatalf("sp serve read %q", b)
	}
	if strings.Contains(out, string(lh.data[:20])) || strings.Contains(strings.ToUpper(out), strings.ToUpper(hex.EncodeToString(lh.data[:20]))) {
		t.Fatal("the app saw the data")
	}

	var ee exitError
	if err := lh.relay(lh.certB); !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("app B: %v", err)
	}
	// A server certificate from another CA is refused by the app.
	otherCA, _, _ := testCA(t, t.TempDir(), "other")
	err := run(context.Background(), []string{"app", "relay", "--socket", lh.socket, "--cert", lh.certA, "--aid", hex.EncodeToString(acetest.SSDAID),
		"--server", lh.url, "--ca", otherCA})
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a server of another CA: %v", err)
	}

	lh.hs.Issuer.DeleteRule(rule)
	if err := lh.relay(lh.certA); !errors.As(err, &ee) || ee.code != exitRefused || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("app A after the rule's deletion: %v", err)
	}
	lh.stopSPServe()
	lh.stopAgent()
	if log := lh.logs.String(); !strings.Contains(log, "relay session read the data") || strings.Contains(log, string(lh.data[:20])) {
		t.Fatalf("sp serve log:\n%s", log)
	}
}
