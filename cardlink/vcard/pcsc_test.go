package vcard_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keyport/keyport/cardlink/pcsctest"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// TestMain lets pcsctest run this test binary as a card process.
func TestMain(m *testing.M) {
	pcsctest.MaybeRunCard()
	os.Exit(m.Run())
}

// pcscHost starts a private pcscd with an in-process module and returns a
// host talking to it through ebfe/scard → pcscd → vpcd.
func pcscHost(t *testing.T, cfg vcard.Config) (*pcsctest.Env, *host) {
	env := pcsctest.Start(t, pcsctest.Options{})
	env.StartCard(t, newCard(t, cfg))
	return env, newHost(t, env.TransmitErr)
}

func TestPCSCSelectISDAnswers9000AndUnknownAID6A82(t *testing.T) {
	_, hst := pcscHost(t, vcard.Config{})
	if sw := hst.selectAID(vcard.ISDAID); sw != gp.SWOK {
		t.Fatalf("SELECT ISD through PC/SC: %v", sw)
	}
	if sw := hst.selectAID(h("A000000151999999")); sw != gp.SWNotFound {
		t.Fatalf("SELECT unknown AID through PC/SC: %v, want 6A82", sw)
	}
}

// opensc is an independent PC/SC client: it must find the reader through
// PCSCLITE_CSOCK_NAME and see the same answers.
func TestOpenscToolSelectsTheISDAndGets6A82ForAnUnknownAID(t *testing.T) {
	if _, err := exec.LookPath("opensc-tool"); err != nil {
		t.Skipf("opensc-tool not installed: %s", pcsctest.AptInstall)
	}
	env, _ := pcscHost(t, vcard.Config{})
	run := func(apdu string) string {
		cmd := exec.Command("opensc-tool", "-r", env.Reader, "-s", apdu)
		cmd.Env = env.Environ()
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("opensc-tool -s %q: %v\n%s", apdu, err, out)
		}
		return string(out)
	}
	if out := run("00 A4 04 00 08 A0 00 00 01 51 00 00 00"); !strings.Contains(out, "SW1=0x90, SW2=0x00") {
		t.Fatalf("opensc-tool SELECT ISD:\n%s", out)
	}
	if out := run("00 A4 04 00 07 A0 00 00 01 51 99 99"); !strings.Contains(out, "SW1=0x6A, SW2=0x82") {
		t.Fatalf("opensc-tool SELECT unknown AID:\n%s", out)
	}
	// The reader index works as well as its name.
	cmd := exec.Command("opensc-tool", "-r", fmt.Sprint(env.ReaderIndex), "-s", "00 A4 04 00 00")
	cmd.Env = env.Environ()
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "SW1=0x90, SW2=0x00") {
		t.Fatalf("opensc-tool -r %d: %v\n%s", env.ReaderIndex, err, out)
	}
}

// TestPCSCIssuerAndProviderFlow runs DESIGN.md flows 1, 7 and 9 against the
// module through the real PC/SC stack.
func TestPCSCIssuerAndProviderFlow(t *testing.T) {
	_, hst := pcscHost(t, vcard.Config{MaxAuthFailures: 3})

	// Issuer: SCP03 to the ISD with the default keys, create the SSD, load
	// its first keys.
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x33)
	hst.createSSD(ssdAID)
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)
	e, found := findEntry(hst.registry(gp.StatusApplications), ssdAID)
	if !found || e.LifeCycle != 0x07 {
		t.Fatalf("GET STATUS: SSD %+v found=%v", e, found)
	}

	// Provider: authenticate with the first keys, replace them, personalize.
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
	c, want := hst.putKey(0x30, 0x31, vectorKVN31)
	if got := hst.mustSec(c); !bytes.Equal(got, want) {
		t.Fatalf("PUT KEY: %X, want %X", got, want)
	}
	hst.mustSec(gp.SetStatus(gp.SetStatusApplication, gp.SetStatusPersonalized, ssdAID))
	hst.selectAID(ssdAID)
	if n := hst.counter(); n != 0 {
		t.Fatalf("counter after PUT KEY: %d, want 0", n)
	}
	if sw := hst.authenticate(0x30, vectorKVN30, 0x03); sw != gp.SWReferencedDataNotFound {
		t.Fatalf("old KVN 30 after PUT KEY: %v, want 6A88", sw)
	}
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x31, vectorKVN31, 0x33)
	hst.mustSec(gp.StoreData(gp.StoreDataLast|gp.StoreDataBERTLV, 0, h("DF2003AABBCC")))

	// The issuer can no longer open the SSD; wrong keys lock the key set.
	hst.selectAID(ssdAID)
	for i := range 3 {
		if sw := hst.authenticate(0x31, vectorKVN30, 0x03); !authRefused(sw) {
			t.Fatalf("wrong keys, attempt %d: %v", i+1, sw)
		}
	}
	if sw := hst.authenticate(0x31, vectorKVN31, 0x03); sw != gp.SWAuthMethodBlocked {
		t.Fatalf("locked key set: %v, want 6983", sw)
	}

	// The ISD sees the SSD PERSONALIZED; ARA-M stores the provider's rule.
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	if e, _ := findEntry(hst.registry(gp.StatusApplications), ssdAID); e.LifeCycle != 0x0F {
		t.Fatalf("SSD life cycle %v, want PERSONALIZED", e.LifeCycle)
	}
	hst.selectAID(vcard.ARAMAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	rule := gp.AccessRule{AID: ssdAID, DeviceAppID: bytes.Repeat([]byte{0x5A}, 32), APDU: []byte{0x01}}
	hst.mustSec(gp.StoreAccessRule(rule))
	hst.selectAID(vcard.ARAMAID) // the handset reads without a session
	r := hst.send(gp.GetData(gp.DataAccessRulesAll))
	rules, err := gp.ParseAccessRules(r.Data)
	if r.SW != gp.SWOK || err != nil || len(rules) != 1 || !bytes.Equal(rules[0].DeviceAppID, rule.DeviceAppID) {
		t.Fatalf("ARA-M get all: %X %v %v", r.Data, r.SW, err)
	}
	hst.selectAID(vcard.ISDRAID)
	if eid, err := gp.ParseEIDResponse(hst.send(gp.GetEID()).Data); err != nil || eid != vcard.DefaultEID {
		t.Fatalf("EID %q: %v", eid, err)
	}
}

// TestPCSCKilledCardProcessReloadsAConsistentState kills the module's
// process (SIGKILL) while it acknowledges state changes as fast as it can,
// restarts it on the same file, and checks that every acknowledged change
// is there and nothing half-done is.
func TestPCSCKilledCardProcessReloadsAConsistentState(t *testing.T) {
	env := pcsctest.Start(t, pcsctest.Options{})
	path := filepath.Join(t.TempDir(), "module.json")
	proc := env.StartCardProcess(t, path, vcard.DefaultEID, 0)
	hst := newHost(t, env.TransmitErr)

	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	hst.createSSD(ssdAID)
	hst.loadKeys(ssdAID, 0x30, vectorKVN30)

	// Each acknowledged STORE DATA writes a new value of DF01.
	var acked atomic.Uint32
	done := make(chan error, 1)
	go func() {
		for n := uint32(1); ; n++ {
			w, err := hst.sess.Wrap(gp.StoreData(gp.StoreDataLast|gp.StoreDataBERTLV, 0, gp.Encode(0xDF01, binary.BigEndian.AppendUint32(nil, n))))
			if err != nil {
				done <- err
				return
			}
			b, err := env.TransmitErr(w.Bytes())
			if err != nil || len(b) < 2 {
				done <- nil // the card is gone (vpcd may answer nothing when it loses the card)
				return
			}
			if !bytes.HasSuffix(b, []byte{0x90, 0x00}) {
				done <- fmt.Errorf("STORE DATA %d answered %X", n, b)
				return
			}
			acked.Store(n)
		}
	}()
	for acked.Load() < 20 {
		time.Sleep(5 * time.Millisecond)
	}
	proc.Kill()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	last := acked.Load()
	env.Disconnect()
	env.WaitCard(t, false)

	if _, err := vcard.Load(path, vcard.Config{}); err != nil {
		t.Fatalf("state after kill does not load: %v", err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".module.json.tmp*"))
	t.Logf("killed after %d acknowledged writes; %d temporary files left", last, len(leftovers))

	env.StartCardProcess(t, path, vcard.DefaultEID, 0)
	hst.selectAID(vcard.ISDAID)
	hst.mustAuthenticate(vcard.DefaultKVN, defaultKeys, 0x03)
	got := hst.mustSec(gp.GetData(0xDF01))
	v := binary.BigEndian.Uint32(got[3:])
	if v != last && v != last+1 {
		t.Fatalf("DF01 after restart is %d; acknowledged %d (the one in flight may be there too)", v, last)
	}
	hst.selectAID(ssdAID)
	hst.mustAuthenticate(0x30, vectorKVN30, 0x03)
}

// BenchmarkAPDURoundTrip measures one GET DATA through ebfe/scard → pcscd →
// vpcd → vcard and back, and reports the median and 99th percentile.
func BenchmarkAPDURoundTrip(b *testing.B) {
	env := pcsctest.Start(b, pcsctest.Options{})
	env.StartCard(b, newCard(b, vcard.Config{}))
	sel := gp.Select(vcard.ISDAID).Bytes()
	if _, err := env.TransmitErr(sel); err != nil {
		b.Fatal(err)
	}
	apdu := gp.GetData(gp.DataCPLC).Bytes()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		rsp, err := env.TransmitErr(apdu)
		lat = append(lat, time.Since(start))
		if err != nil || !bytes.HasSuffix(rsp, []byte{0x90, 0x00}) {
			b.Fatalf("GET DATA: %X %v", rsp, err)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
}
