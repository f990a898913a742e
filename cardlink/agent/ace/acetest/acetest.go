// Package acetest sets up what the access control enforcer's tests need: a
// private PC/SC stack with a virtual module in it, an issuer that manages
// the module the way it would over the air (SCP03 under the ISD keys on the
// basic channel: an SSD created with INSTALL, access rules stored in and
// deleted from the ARA-M with STORE DATA), an enforcer serving a socket in
// a private directory, and apps' signing certificates.
package acetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"path/filepath"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/pcsc"
	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// SSDAID is the provider's security domain the tests open channels to.
var SSDAID = mustHex("F0010203040501")

// The SD package the module instantiates SSDs from (PROTOCOLS.md §1.4).
var (
	ssdELF    = mustHex("A0000001515350")
	ssdModule = mustHex("A000000151535041")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// Handset is a module in a PC/SC reader with an SSD, its issuer, and the
// reader connection the enforcer uses.
type Handset struct {
	Env    *pcsctest.Env
	Card   *pcsctest.CardProcess
	Reader *pcsc.Reader // the enforcer's connection
	Issuer *Issuer
}

// NewHandset starts pcscd, vpcd and a fresh virtual module, connects to it,
// and has the issuer create SSDAID. Everything stops with the test.
//
// The module runs in a child process, as a secure element is not part of
// the handset's software: in the same process, its goroutine would compete
// for the Go scheduler with the enforcer's, which waits in a cgo call
// (pcsc-lite) for the module's answer, and APDUs would stall for
// milliseconds now and then. The test binary's TestMain must call
// pcsctest.MaybeRunCard.
func NewHandset(t testing.TB) *Handset {
	t.Helper()
	env := pcsctest.Start(t, pcsctest.Options{})
	card := env.StartCardProcess(t, filepath.Join(t.TempDir(), "module.json"), vcard.DefaultEID, 0)
	r, err := pcsc.Open(context.Background(), env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	iss, err := pcsc.Open(context.Background(), env.Reader)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iss.Close() })
	hs := &Handset{Env: env, Card: card, Reader: r, Issuer: &Issuer{t: t, card: iss}}
	hs.Issuer.CreateSSD(SSDAID)
	return hs
}

// Serve runs an enforcer on the handset's reader, listening on a socket in
// a fresh private directory, and returns it with the socket's path.
func (hs *Handset) Serve(t testing.TB) (*ace.Enforcer, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "se", "app.sock")
	l, err := ace.ListenAppSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	enf := ace.NewEnforcer(hs.Reader, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); enf.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return enf, path
}

// Issuer manages the module on its basic channel, through a PC/SC
// connection of its own, with SCP03 under the ISD's default test keys.
type Issuer struct {
	t    testing.TB
	card gp.Channel
}

// session selects aid and opens SCP03 at level 33 with the ISD keys (aid is
// the ISD, or the ARA-M, whose associated SD is the ISD).
func (is *Issuer) session(aid []byte) *gp.Host {
	is.t.Helper()
	return is.sessionWith(aid, gp.KeySet{KVN: vcard.DefaultKVN, ENC: gp.AESKey(vcard.DefaultKey), MAC: gp.AESKey(vcard.DefaultKey)})
}

// sessionWith selects aid and opens SCP03 at level 33 with ks.
func (is *Issuer) sessionWith(aid []byte, ks gp.KeySet) *gp.Host {
	is.t.Helper()
	ctx := context.Background()
	h := gp.NewHost(is.card)
	if _, found, err := h.Select(ctx, aid); err != nil || !found {
		is.t.Fatalf("issuer: SELECT %X: found=%v %v", aid, found, err)
	}
	hs, err := gp.NewHostSession(ks, nil)
	if err != nil {
		is.t.Fatal(err)
	}
	if _, err := h.InitializeUpdate(ctx, hs); err != nil {
		is.t.Fatalf("issuer: INITIALIZE UPDATE: %v", err)
	}
	if err := h.ExternalAuthenticate(ctx, 0x33); err != nil {
		is.t.Fatalf("issuer: EXTERNAL AUTHENTICATE: %v", err)
	}
	return h
}

func (is *Issuer) send(h *gp.Host, c gp.Command) {
	is.t.Helper()
	if _, err := h.SendOK(context.Background(), c); err != nil {
		is.t.Fatalf("issuer: %X: %v", c.Bytes(), err)
	}
}

// CreateSSD installs a selectable SSD (SD + Authorized Management, SCP03
// i=70) from the ISD.
func (is *Issuer) CreateSSD(aid []byte) {
	is.t.Helper()
	h := is.session(vcard.ISDAID)
	params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
	is.send(h, gp.InstallForInstallCmd(ssdELF, ssdModule, aid, gp.PrivSecurityDomain|gp.PrivAuthorizedManagement, params, true))
}

// ProviderKeys is a provider's key set (ENC, MAC, DEK) at KVN.
type ProviderKeys struct {
	KVN           byte
	ENC, MAC, DEK []byte
}

// KeySet is the provider's keys as an SCP03 static key set.
func (k ProviderKeys) KeySet() gp.KeySet {
	return gp.KeySet{KVN: k.KVN, ENC: gp.AESKey(k.ENC), MAC: gp.AESKey(k.MAC)}
}

// Personalize hands aid over to a provider, as its second-key script does
// over the air: the issuer loads keys into it (INSTALL [for
// personalization], STORE DATA DGI 00B9/8113 under the ISD's Key-DEK) and
// the SSD, in a session under those keys, sets itself PERSONALIZED.
func (is *Issuer) Personalize(aid []byte, keys ProviderKeys) {
	is.t.Helper()
	h := is.session(vcard.ISDAID)
	is.send(h, gp.InstallForPersonalizationCmd(aid))
	usage := []byte{gp.KeyUsageENC, gp.KeyUsageMAC, gp.KeyUsageDEK}
	var loads []gp.KeyLoad
	for i, k := range [][]byte{keys.ENC, keys.MAC, keys.DEK} {
		ct, err := gp.EncryptKey(vcard.DefaultKey, k)
		if err != nil {
			is.t.Fatal(err)
		}
		kcv, _ := gp.KCV(k)
		loads = append(loads, gp.KeyLoad{Usage: usage[i], Type: gp.KeyTypeAES, Length: len(k), KID: byte(i + 1), KVN: keys.KVN, KCV: kcv, Encrypted: ct})
	}
	is.send(h, gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 0, gp.KeyLoadDGIs(loads)))
	is.send(is.sessionWith(aid, keys.KeySet()), gp.SetStatus(gp.SetStatusApplication, gp.SetStatusPersonalized, aid))
}

// StoreDataObjects stores the provider's data objects in aid, in a session
// at level 33 under the provider's keys (gp/dataobj.go), as its data
// script does through card-link.
func (is *Issuer) StoreDataObjects(aid []byte, keys ProviderKeys, objs []gp.DGI) {
	is.t.Helper()
	cmds, err := gp.StoreDataObjects(objs)
	if err != nil {
		is.t.Fatal(err)
	}
	h := is.sessionWith(aid, keys.KeySet())
	for _, c := range cmds {
		is.send(h, c)
	}
}

// StoreRule stores rules in the ARA-M: STORE DATA Command-Store-REF-AR-DO
// in an SCP03 session opened on the ARA-M.
func (is *Issuer) StoreRule(rules ...gp.AccessRule) {
	is.t.Helper()
	h := is.session(vcard.ARAMAID)
	for _, r := range rules {
		is.send(h, gp.StoreAccessRule(r))
	}
}

// DeleteRule deletes the rule with r's REF-DO: STORE DATA Command-Delete
// F1 { E1 … } in an SCP03 session on the ARA-M.
func (is *Issuer) DeleteRule(r gp.AccessRule) {
	is.t.Helper()
	is.send(is.session(vcard.ARAMAID), gp.DeleteAccessRule(r))
}

// App is a device application's identity: its signing certificate.
type App struct {
	DER, PEM []byte
}

// SHA256 is the certificate hash a rule names the app by.
func (a App) SHA256() []byte {
	h := sha256.Sum256(a.DER)
	return h[:]
}

// NewApp makes a self-signed signing certificate for an app.
func NewApp(t testing.TB, name string) App {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name, Organization: []string{"keyport test app"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return App{DER: der, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// LockApp locks an application from the ISD (SET STATUS, GPCS 11.10): a
// locked application is not selectable.
func (is *Issuer) LockApp(aid []byte) {
	is.t.Helper()
	is.send(is.session(vcard.ISDAID), gp.SetStatus(gp.SetStatusApplication, gp.SetStatusLock|0x07, aid))
}
