package cardlinktest

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// MemCard is a gp.Channel to a virtual module in memory, with an
// optional fault that replaces the module's answer.
type MemCard struct {
	Card  *vcard.Card
	mu    sync.Mutex
	fault func(apdu []byte) []byte
}

// SetFault makes f see every C-APDU first; a non-nil result is returned
// instead of the module's answer (the module never sees that command).
func (m *MemCard) SetFault(f func(apdu []byte) []byte) {
	m.mu.Lock()
	m.fault = f
	m.mu.Unlock()
}

// Transmit implements gp.Channel.
func (m *MemCard) Transmit(_ context.Context, apdu []byte) ([]byte, error) {
	m.mu.Lock()
	f := m.fault
	m.mu.Unlock()
	if f != nil {
		if r := f(apdu); r != nil {
			return r, nil
		}
	}
	return m.Card.Process(apdu), nil
}

// World is one claimed domain on a module in memory, a provider with a
// queued second-key script, and card-link running on SQLite and SoftHSM.
type World struct {
	*fixture.World
	EID     keyport.EID
	AID     keyport.AID
	ISDAID  keyport.AID
	Prov    keyport.Principal
	Card    *MemCard
	Second  map[keyport.KeyUsage][]byte // the provider's new keys
	Request keyport.ScriptRequest
	Job     *keyport.Job
	Link    *Link
	PSK     []byte
}

// NewWorld builds a World: fixture batch (1 module, 2 domains), the module
// with domain 1's first keys, a provider that claimed domain 1 and
// submitted its script, card-link started with opts.
func NewWorld(t testing.TB, opts LinkOptions) *World {
	t.Helper()
	return NewWorldOn(t, storetest.SQLitePath(t), opts)
}

// NewWorldOn is NewWorld on the database dsn (storetest.EachDSN).
func NewWorldOn(t testing.TB, dsn string, opts LinkOptions) *World {
	t.Helper()
	ctx := context.Background()
	st := storetest.Open(t, dsn)
	fw := fixture.New(t, st, 1, 2)
	fw.Svc.Link = fw.HSM
	if opts.Link != nil {
		fw.Svc.Link = opts.Link(fw.HSM)
	}
	fw.Svc.Delivery = keyport.DeliveryPolicy{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, Lease: 3 * time.Second}
	w := &World{World: fw, EID: fixture.EID(t, 0), AID: fixture.AID(1), ISDAID: "A000000151000000"}
	w.Card = &MemCard{Card: NewModule(t, w.EID, map[keyport.AID]map[keyport.KeyUsage][]byte{w.AID: fw.Keys[w.EID][w.AID]})}
	var wk string
	w.Prov, _, wk = fw.Provider(t, "Bank", fixture.RSAKeys()[0])
	if _, _, err := fw.Svc.Claim(ctx, w.Prov, keyport.ClaimRequest{EID: w.EID, AID: w.AID, WrappingKeyID: wk}); err != nil {
		t.Fatal(err)
	}
	w.Second = map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		w.Second[u] = make([]byte, 16)
		rand.Read(w.Second[u])
	}
	w.Request = w.Script(t, 0)
	var err error
	if w.Job, err = fw.Svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, w.Request); err != nil {
		t.Fatal(err)
	}
	m, err := fw.Svc.Store.GetModule(ctx, w.EID)
	if err != nil {
		t.Fatal(err)
	}
	if w.PSK, err = fw.HSM.ModulePSK(ctx, w.EID, m.PSK); err != nil {
		t.Fatal(err)
	}
	w.Link = StartLink(t, fw.Svc, opts)
	return w
}

// Script builds the provider's script for the card's counter.
func (w *World) Script(t testing.TB, counter int) keyport.ScriptRequest {
	t.Helper()
	req, err := keyport.SecondKeyScript(w.AID, 0x30, counter, 0x31, w.Keys[w.EID][w.AID], w.Second)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
