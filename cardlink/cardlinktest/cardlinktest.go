// Package cardlinktest builds card-link test worlds from real parts: a
// virtual module (cardlink/vcard) whose SSDs hold known first keys, an SCP03
// host to check which keys open an SSD, and a running admin server and
// delivery worker over a keyport.Service (SoftHSM, a real store).
package cardlinktest

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/tlspsk"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
)

// SSD privileges and packages of a provider's domain (PROTOCOLS.md §7.1).
var (
	ssdELF    = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50}
	ssdModule = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41}
)

// ProcessTx is a channel to a card in memory.
func ProcessTx(c *vcard.Card) gp.Channel {
	return gp.ChannelFunc(func(_ context.Context, b []byte) ([]byte, error) { return c.Process(b), nil })
}

// Host is an off-card SCP03 entity for tests, on gp's host.
type Host struct {
	t    testing.TB
	host *gp.Host
	dek  []byte
}

// NewHost returns a host sending through ch.
func NewHost(t testing.TB, ch gp.Channel) *Host { return &Host{t: t, host: gp.NewHost(ch)} }

// Authenticate selects aid and opens SCP03 on key set kvn with keys (ENC,
// MAC, DEK) at level 03; it returns the first status word that is not 9000,
// or 9000 with the session open. Wrong keys answer 6300 without EXTERNAL
// AUTHENTICATE being sent: the card cryptogram already tells.
func (h *Host) Authenticate(aid []byte, kvn byte, keys [3][]byte) gp.SW {
	h.t.Helper()
	h.dek = nil
	ks := gp.KeySet{KVN: kvn, ENC: gp.AESKey(keys[0]), MAC: gp.AESKey(keys[1])}
	_, err := h.host.Authenticate(context.Background(), aid, ks, gp.LevelCMAC|gp.LevelCDEC)
	var se *gp.SWError
	switch {
	case err == nil:
		h.dek = keys[2]
		return gp.SWOK
	case errors.As(err, &se):
		return se.SW
	case errors.Is(err, gp.ErrCryptogram):
		return gp.SWAuthFailed
	}
	h.t.Fatalf("cardlinktest: authenticate to %X: %v", aid, err)
	return 0
}

// Sec sends c in the open session and fails the test unless it answers 9000.
func (h *Host) Sec(c gp.Command) []byte {
	h.t.Helper()
	if h.host.Session() == nil {
		h.t.Fatalf("cardlinktest: %X without a session", c.Bytes())
	}
	data, err := h.host.SendOK(context.Background(), c)
	if err != nil {
		h.t.Fatalf("cardlinktest: %X: %v", c.Bytes(), err)
	}
	return data
}

// NewModule creates a virtual module with eid whose ISD has the default
// test keys, and creates each SSD of firstKeys (SD + AM, SCP03 i=70,
// SELECTABLE) with its first key set at KVN 0x30, as the issuer's
// personalization does (GPCS 11.5, 11.11.4; PROTOCOLS.md §7.1).
func NewModule(t testing.TB, eid keyport.EID, firstKeys map[keyport.AID]map[keyport.KeyUsage][]byte) *vcard.Card {
	t.Helper()
	card, err := vcard.New(string(eid), vcard.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := NewHost(t, ProcessTx(card))
	def := [3][]byte{vcard.DefaultKey, vcard.DefaultKey, vcard.DefaultKey}
	for aid, keys := range firstKeys {
		if sw := h.Authenticate(vcard.ISDAID, vcard.DefaultKVN, def); sw != gp.SWOK {
			t.Fatalf("cardlinktest: ISD authentication: %v", sw)
		}
		params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
		h.Sec(gp.InstallForInstallCmd(ssdELF, ssdModule, aid.Bytes(), gp.PrivSecurityDomain|gp.PrivAuthorizedManagement, params, true))
		h.Sec(gp.InstallForPersonalizationCmd(aid.Bytes()))
		usage := []byte{gp.KeyUsageENC, gp.KeyUsageMAC, gp.KeyUsageDEK}
		var loads []gp.KeyLoad
		for i, u := range keyport.Usages {
			ct, err := gp.EncryptKey(h.dek, keys[u])
			if err != nil {
				t.Fatal(err)
			}
			kcv, _ := gp.KCV(keys[u])
			loads = append(loads, gp.KeyLoad{Usage: usage[i], Type: gp.KeyTypeAES, Length: len(keys[u]), KID: byte(i + 1), KVN: 0x30, KCV: kcv, Encrypted: ct})
		}
		h.Sec(gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 0, gp.KeyLoadDGIs(loads)))
	}
	card.Reset()
	return card
}

// Triple orders a key set ENC, MAC, DEK.
func Triple(keys map[keyport.KeyUsage][]byte) [3][]byte {
	return [3][]byte{keys[keyport.UsageENC], keys[keyport.UsageMAC], keys[keyport.UsageDEK]}
}

// Link is a running card-link: the admin server on a loopback port, the
// wake-up hub as the service's trigger, and the delivery worker.
type Link struct {
	Addr   string
	Server *cardlink.AdminServer
	Hub    *cardlink.WakeHub
	Worker *cardlink.Dispatcher
}

// LinkOptions tune StartLink.
type LinkOptions struct {
	Server cardlink.AdminServerConfig // Service, Wake are set by StartLink
	// Tick is the worker's period (default 50 ms); NoWorker leaves it off.
	Tick     time.Duration
	NoWorker bool
	// DevLoopbackWebhooks lets webhooks be set to, and sent to, loopback
	// addresses (httptest receivers): it sets the service's delivery
	// policy, which the worker follows.
	DevLoopbackWebhooks bool
	// Link, if set, is the module-PSK custody NewWorld gives the service
	// in place of its HSM (which it gets), e.g. to count derivations.
	Link func(keyport.LinkCustody) keyport.LinkCustody
	// Trigger, if set, is the service's trigger in place of the wake-up
	// hub, given the hub and the admin server's address (an SMS trigger
	// with the hub as its fallback).
	Trigger func(hub *cardlink.WakeHub, adminAddr string) keyport.Trigger
}

// StartLink starts card-link over svc (whose Link custody must be set);
// everything stops at the test's end.
func StartLink(t testing.TB, svc *keyport.Service, opts LinkOptions) *Link {
	t.Helper()
	hub := cardlink.NewWakeHub()
	svc.Trigger = hub
	svc.Delivery.DevLoopbackWebhooks = opts.DevLoopbackWebhooks
	cfg := opts.Server
	cfg.Service, cfg.Wake = svc, hub
	if cfg.WakeCheck == 0 {
		cfg.WakeCheck = 100 * time.Millisecond
	}
	srv := cardlink.NewAdminServer(cfg)
	ln, err := tlspsk.Listen("tcp", "127.0.0.1:0", srv.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{Addr: ln.Addr().String(), Server: srv, Hub: hub}
	if opts.Trigger != nil {
		svc.Trigger = opts.Trigger(hub, l.Addr)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("admin server: %v", err)
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	if !opts.NoWorker {
		tick := opts.Tick
		if tick == 0 {
			tick = 50 * time.Millisecond
		}
		l.Worker = &cardlink.Dispatcher{Service: svc, Tick: tick}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.Worker.Run(ctx)
		}()
	}
	t.Cleanup(func() {
		cancel()
		srv.Close()
		wg.Wait()
	})
	return l
}

// WaitJob polls the job until cond holds or 20 s pass.
func WaitJob(t testing.TB, svc *keyport.Service, p keyport.Principal, ref string, cond func(*keyport.Job) bool) *keyport.Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j, err := svc.GetJob(context.Background(), p, ref)
		if err != nil {
			t.Fatal(err)
		}
		if cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("cardlinktest: job %s stuck in %s (%s; result %+v)", ref, j.State, j.LastError, j.Result)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
