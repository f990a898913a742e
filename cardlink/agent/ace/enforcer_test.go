package ace_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keyport/keyport/cardlink/agent/ace"
	"github.com/keyport/keyport/cardlink/agent/ace/acetest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

func dialApp(t *testing.T, socket string) *ace.AppClient {
	t.Helper()
	c, err := ace.DialApp(context.Background(), socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// refusal returns the enforcer's refusal in err, failing unless it is one
// with the code.
func refusal(t *testing.T, err error, code string) string {
	t.Helper()
	var ae *ace.AppError
	if !errors.As(err, &ae) || ae.Code != code {
		t.Fatalf("got %v, want a refusal %q", err, code)
	}
	return ae.Message
}

func mustTransmit(t *testing.T, c *ace.AppClient, apdu string) []byte {
	t.Helper()
	r, err := c.Transmit(h(apdu))
	if err != nil {
		t.Fatalf("transmit %s: %v", apdu, err)
	}
	return r
}

func h(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func TestEnforcerGivesTheAppInTheRuleAChannelToItsSSDAndRefusesAnother(t *testing.T) {
	hs := acetest.NewHandset(t)
	appA, appB := acetest.NewApp(t, "A"), acetest.NewApp(t, "B")
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: appA.SHA256(), APDU: []byte{0x01}})
	_, socket := hs.Serve(t)

	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	if fi, _ := os.Stat(filepath.Dir(socket)); fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory mode %v", fi.Mode().Perm())
	}

	a := dialApp(t, socket)
	rep, err := a.Open(appA.PEM, acetest.SSDAID, "")
	if err != nil {
		t.Fatalf("app A open: %v", err)
	}
	if rep.Channel < 1 || rep.Channel > 19 || !strings.HasSuffix(rep.Select, "9000") || gp.FCIDFName(h(rep.Select[:len(rep.Select)-4])) == nil {
		t.Fatalf("app A open: %+v", rep)
	}
	cplc := mustTransmit(t, a, "80CA9F7F00")
	hs.Env.Transmit(t, gp.Select(acetest.SSDAID).Bytes()) // bare, on the basic channel
	want := hs.Env.Transmit(t, gp.GetData(gp.DataCPLC).Bytes())
	if !bytes.Equal(cplc, want) || len(cplc) != 2+3+42 {
		t.Fatalf("GET DATA CPLC through the enforcer: %X, bare %X", cplc, want)
	}

	// The app cannot manage the channel itself.
	for apdu, want := range map[string]string{
		"0070000001":                 "MANAGE CHANNEL is not allowed",
		"0070800100":                 "MANAGE CHANNEL is not allowed",
		"00A4040008A000000151000000": "SELECT by DF name is not allowed",
		"FFCA000000":                 "class FF",
		"806A000000":                 "INS 6A",
	} {
		_, err := a.Transmit(h(apdu))
		if msg := refusal(t, err, ace.CodeRefused); !strings.Contains(msg, want) {
			t.Errorf("%s refused with %q, want %q", apdu, msg, want)
		}
	}
	// In a proprietary class too (TestAnAppCannotLeaveItsAppletWithASelectOrManageChannelInAnyClass).
	if _, err := a.Transmit(h("8070000000")); !strings.Contains(refusal(t, err, ace.CodeRefused), "MANAGE CHANNEL is not allowed") {
		t.Fatalf("80 70 relayed: %v", err)
	}
	// Still on the SSD after all that.
	if r := mustTransmit(t, a, "80CA006600"); !bytes.HasSuffix(r, h("9000")) {
		t.Fatalf("GET DATA 66: %X", r)
	}

	b := dialApp(t, socket)
	_, err = b.Open(appB.PEM, acetest.SSDAID, "")
	msg := refusal(t, err, ace.CodeDenied)
	if !strings.Contains(msg, "access denied") || !strings.Contains(msg, "F0010203040501") || !strings.Contains(msg, hex.EncodeToString(appB.SHA256())) {
		t.Fatalf("app B refused with %q", msg)
	}
	// Refused, app B has no channel; app A's still works.
	if _, err := b.Transmit(h("80CA9F7F00")); !strings.Contains(refusal(t, err, ace.CodeState), "no channel") {
		t.Fatal(err)
	}
	mustTransmit(t, a, "80CA9F7F00")
	if err := a.CloseChannel(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Transmit(h("80CA9F7F00")); err == nil {
		t.Fatal("transmit after close went through")
	}
}

func TestRuleDeletedOverSCP03RefusesTheAppOnItsNextOpen(t *testing.T) {
	hs := acetest.NewHandset(t)
	app := acetest.NewApp(t, "A")
	rule := gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: []byte{0x01}}
	hs.Issuer.StoreRule(rule)
	enf, socket := hs.Serve(t)
	c := dialApp(t, socket)

	for range 2 {
		if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseChannel(); err != nil {
			t.Fatal(err)
		}
	}
	if n := enf.RuleReads(); n != 1 {
		t.Fatalf("%d rule reads for two opens under one refresh tag, want 1", n)
	}
	// A channel open while the rule goes keeps the access it was granted.
	kept := dialApp(t, socket)
	if _, err := kept.Open(app.PEM, acetest.SSDAID, ""); err != nil {
		t.Fatal(err)
	}

	hs.Issuer.DeleteRule(rule)

	_, err := c.Open(app.PEM, acetest.SSDAID, "")
	if msg := refusal(t, err, ace.CodeDenied); !strings.Contains(msg, "no access rule") {
		t.Fatalf("after the delete: %q", msg)
	}
	if n := enf.RuleReads(); n != 2 {
		t.Fatalf("%d rule reads after the refresh tag changed, want 2", n)
	}
	mustTransmit(t, kept, "80CA9F7F00")

	// Stored again, the rule grants again.
	hs.Issuer.StoreRule(rule)
	if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
		t.Fatalf("after storing the rule again: %v", err)
	}
}

func TestAPDUFilterLetsOnlyMatchingHeadersThroughAndNeverWins(t *testing.T) {
	hs := acetest.NewHandset(t)
	app, other := acetest.NewApp(t, "A"), acetest.NewApp(t, "other")
	filters := append(h("80CA9F7F"+"FFFFFFFF"), h("00CA0000"+"7FFF0000")...) // CPLC in class 80; any GET DATA in 00/80
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: filters})
	// The other app has ALWAYS by its SHA-256 and NEVER by its SHA-1 at
	// the same step: NEVER wins.
	sum := sha1.Sum(other.DER)
	hs.Issuer.StoreRule(
		gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: other.SHA256(), APDU: []byte{0x01}},
		gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: sum[:], APDU: []byte{0x00}})
	_, socket := hs.Serve(t)

	c := dialApp(t, socket)
	if _, err := c.Open(app.DER, acetest.SSDAID, ""); err != nil { // DER this time
		t.Fatal(err)
	}
	mustTransmit(t, c, "80CA9F7F00")
	mustTransmit(t, c, "81CA9F7F00") // channel bits are the enforcer's: matched as 80
	if r := mustTransmit(t, c, "00CA006600"); len(r) < 2 {
		t.Fatalf("00 CA passes the second filter: %X", r)
	}
	_, err := c.Transmit(h("80F2400002"))
	msg := refusal(t, err, ace.CodeRefused)
	if !strings.Contains(msg, "80CA9F7F/FFFFFFFF") || !strings.Contains(msg, "80F24000") {
		t.Fatalf("GET STATUS refused with %q", msg)
	}
	mustTransmit(t, c, "80CA9F7F00") // the channel survives a refused APDU

	d := dialApp(t, socket)
	_, err = d.Open(other.PEM, acetest.SSDAID, "")
	if msg := refusal(t, err, ace.CodeDenied); !strings.Contains(msg, "NEVER") {
		t.Fatalf("other app: %q", msg)
	}
}

func TestARuleForAPartialAIDDoesNotOpenTheLongerApplet(t *testing.T) {
	hs := acetest.NewHandset(t)
	app := acetest.NewApp(t, "A")
	prefix := acetest.SSDAID[:5]
	hs.Issuer.StoreRule(gp.AccessRule{AID: prefix, DeviceAppID: app.SHA256(), APDU: []byte{0x01}})
	_, socket := hs.Serve(t)
	c := dialApp(t, socket)
	_, err := c.Open(app.PEM, prefix, "")
	if msg := refusal(t, err, ace.CodeRefused); !strings.Contains(msg, "partial AID") || !strings.Contains(msg, "F0010203040501") {
		t.Fatalf("open of a prefix: %q", msg)
	}
	// The channel it had opened is closed again: the next open gets 1.
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: []byte{0x01}})
	if rep, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil || rep.Channel != 1 {
		t.Fatalf("open of the full AID: %+v %v", rep, err)
	}
}

func TestMalformedRequestsGetAClearErrorAndTheEnforcerKeepsServing(t *testing.T) {
	hs := acetest.NewHandset(t)
	app := acetest.NewApp(t, "A")
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: []byte{0x01}})
	_, socket := hs.Serve(t)
	c := dialApp(t, socket)

	bad := map[string]string{
		`not json`:                                            "not a JSON object",
		`{"op":"fly"}`:                                        `op "fly" is unknown`,
		`{"op":"open","aid":"F0010203040501"}`:                `needs "cert"`,
		`{"op":"open","cert":"AAAA","aid":"F001"}`:            "not an X.509 certificate",
		`{"op":"open","cert":"%%%","aid":"F0010203040501"}`:   "neither PEM nor base64",
		`{"op":"transmit","apdu":"zz"}`:                       "not hex",
		`{"op":"transmit","apdu":"80CA"}`:                     "no channel is open",
		`{"op":"close","aid":"F0010203040501"}`:               `has no "aid"`,
		`{"op":"close","colour":"red"}`:                       "unknown field",
		`{"op":"close"} {"op":"close"}`:                       "data after its JSON object",
		"{\"op\":\"open\",\"cert\":\"\xff\"}":                 "not UTF-8",
		`{"op":"open","cert":"-----BEGIN X-----","aid":"F0"}`: "no CERTIFICATE block",
	}
	for req, want := range bad {
		_, err := c.SendRaw([]byte(req))
		var ae *ace.AppError
		if !errors.As(err, &ae) || !strings.Contains(ae.Message, want) {
			t.Errorf("%s: %v, want an error containing %q", req, err, want)
		}
	}
	// The same connection still serves a good request.
	if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(app.PEM, acetest.SSDAID, ""); !strings.Contains(refusal(t, err, ace.CodeState), "already has channel") {
		t.Fatal(err)
	}
	if _, err := c.Transmit(h("80CA")); !strings.Contains(refusal(t, err, ace.CodeBadRequest), "not a command APDU") {
		t.Fatal(err)
	}
	mustTransmit(t, c, "80CA9F7F00")

	// A length prefix out of range ends that connection, after saying why.
	for _, n := range []uint32{0, ace.MaxFrame + 1, 0xFFFFFFFF} {
		x := dialApp(t, socket)
		if err := x.WriteRaw(binary.BigEndian.AppendUint32(nil, n)); err != nil {
			t.Fatal(err)
		}
		_, err := x.ReadReply()
		if msg := refusal(t, err, ace.CodeBadRequest); !strings.Contains(msg, "frame length out of range") {
			t.Fatalf("length %d: %q", n, msg)
		}
		if _, err := x.ReadReply(); err == nil || !errors.Is(err, io.EOF) {
			t.Fatalf("length %d: after the error the connection gives %v, want EOF", n, err)
		}
	}
	// A frame cut short by a hang-up costs nothing either.
	x := dialApp(t, socket)
	x.WriteRaw(append(binary.BigEndian.AppendUint32(nil, 100), `{"op":`...))
	x.Close()

	// Others, and the first connection, are served all along.
	mustTransmit(t, c, "80CA9F7F00")
	d := dialApp(t, socket)
	if _, err := d.Open(app.PEM, acetest.SSDAID, ""); err != nil {
		t.Fatal(err)
	}
	mustTransmit(t, d, "80CA9F7F00")
}

func TestEnforcerRefusesEveryAppWhenTheModuleHasNoARAM(t *testing.T) {
	hs := acetest.NewHandset(t)
	app := acetest.NewApp(t, "A")
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: []byte{0x01}})
	// Lock the ARA-M (SET STATUS from the ISD): it is then not selectable.
	hs.Issuer.LockApp(vcard.ARAMAID)
	_, socket := hs.Serve(t)
	_, err := dialApp(t, socket).Open(app.PEM, acetest.SSDAID, "")
	if msg := refusal(t, err, ace.CodeDenied); !strings.Contains(msg, "no ARA-M") {
		t.Fatalf("without ARA-M: %q", msg)
	}
}

func TestListenAppSocketRefusesADirectoryOthersCanEnter(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := ace.ListenAppSocket(filepath.Join(dir, "app.sock"))
	if err == nil || !strings.Contains(err.Error(), "chmod 700") {
		t.Fatalf("socket in a 0755 directory: %v", err)
	}
	priv := filepath.Join(t.TempDir(), "p")
	if err := os.Mkdir(priv, 0o700); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(priv, "app.sock")
	if err := os.WriteFile(in, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ace.ListenAppSocket(in); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file in the way: %v", err)
	}
	// A stale socket is replaced.
	os.Remove(in)
	l, err := ace.ListenAppSocket(in)
	if err != nil {
		t.Fatal(err)
	}
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	l, err = ace.ListenAppSocket(in)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l.Close()
}

// An app's channel stays with the applet its rule granted: SELECT by DF
// name and MANAGE CHANNEL are refused in every class, since a card's OS
// that takes a proprietary-class A4 as SELECT would hand the app another
// provider's domain or the ISD (whose keys it could then lock with failed
// EXTERNAL AUTHENTICATEs).
func TestAnAppCannotLeaveItsAppletWithASelectOrManageChannelInAnyClass(t *testing.T) {
	hs := acetest.NewHandset(t)
	other := h("F0010203040599")
	hs.Issuer.CreateSSD(other)
	app := acetest.NewApp(t, "A")
	hs.Issuer.StoreRule(gp.AccessRule{AID: acetest.SSDAID, DeviceAppID: app.SHA256(), APDU: []byte{0x01}})
	_, socket := hs.Serve(t)
	c := dialApp(t, socket)
	if _, err := c.Open(app.PEM, acetest.SSDAID, ""); err != nil {
		t.Fatal(err)
	}
	for _, cla := range []byte{0x00, 0x01, 0x40, 0x80, 0x84, 0xC0, 0xE0} {
		for _, target := range [][]byte{other, vcard.ISDAID, {}} {
			sel := append([]byte{cla, 0xA4, 0x04, 0x00, byte(len(target))}, target...)
			if r, err := c.Transmit(sel); err == nil || !strings.Contains(err.Error(), "not allowed") {
				t.Errorf("%X: %X %v, want it refused by the enforcer", sel, r, err)
			}
		}
		mc := []byte{cla, 0x70, 0x00, 0x00, 0x01}
		if r, err := c.Transmit(mc); err == nil || !strings.Contains(err.Error(), "not allowed") {
			t.Errorf("%X: %X %v, want it refused by the enforcer", mc, r, err)
		}
	}
	// The app's own applet still answers on the channel.
	if r, err := c.Transmit(h("80CA006600")); err != nil || len(r) < 2 {
		t.Fatalf("the app's own command after the refusals: %X %v", r, err)
	}
}
