// Package scptest is the off-card side of SCP03 for tests that check a
// module: select a security domain, authenticate with a key set (clear or
// held in the HSM), send wrapped commands, list the registry, and play a
// host with the wrong keys. It drives the card with gp's host (tested on
// its own in gp against gp's card side), not with the code under test.
package scptest

import (
	"context"
	"errors"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm"
)

// Level is the security level tests authenticate at: C-MAC, C-DEC, R-MAC,
// R-ENC (AmdD Table 7-3), which i=70 allows.
const Level gp.SecurityLevel = 0x33

// FirstKeys is domain d's first key set (KVN 30) of batch, as the HSM
// unwraps it from the stored blobs.
func FirstKeys(h *hsm.HSM, batch string, d *keyport.Domain) gp.KeySet {
	ctx := context.Background()
	return gp.KeySet{KVN: keyport.FirstKVN, ENC: keyport.StaticKey(ctx, h, keyport.DomainKey(batch, d, keyport.UsageENC)),
		MAC: keyport.StaticKey(ctx, h, keyport.DomainKey(batch, d, keyport.UsageMAC))}
}

// StoredFirstKeys is FirstKeys of the domain eid/aid as the store holds it.
func StoredFirstKeys(t testing.TB, repo keyport.Repo, h *hsm.HSM, batch string, eid keyport.EID, aid keyport.AID) gp.KeySet {
	t.Helper()
	d, err := repo.GetDomain(context.Background(), eid, aid)
	if err != nil {
		t.Fatalf("scptest: store: %v", err)
	}
	return FirstKeys(h, batch, d)
}

// ISDKeys is the ISD key set perso installs (KVN keyport.PersoISDKVN), as
// the HSM unwraps it from the module's stored blobs.
func ISDKeys(h *hsm.HSM, m *keyport.Module) gp.KeySet {
	ctx := context.Background()
	return gp.KeySet{KVN: keyport.PersoISDKVN,
		ENC: keyport.StaticKey(ctx, h, keyport.ISDKey(m.EID, m.ISDAID, keyport.UsageENC, m.ISDKeys[keyport.UsageENC])),
		MAC: keyport.StaticKey(ctx, h, keyport.ISDKey(m.EID, m.ISDAID, keyport.UsageMAC, m.ISDKeys[keyport.UsageMAC]))}
}

// TestKeys is a key set of the public GP test key at kvn.
func TestKeys(kvn byte) gp.KeySet {
	k := gp.AESKey(keyport.GPTestKey)
	return gp.KeySet{KVN: kvn, ENC: k, MAC: k}
}

// Send transmits cmd and parses the answer; a transport error fails t.
func Send(t testing.TB, card gp.Channel, cmd gp.Command) gp.Response {
	t.Helper()
	r, err := gp.NewHost(card).Send(context.Background(), cmd)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// Session is an open secure channel.
type Session struct {
	t    testing.TB
	host *gp.Host
}

// Authenticate selects aid and runs INITIALIZE UPDATE and EXTERNAL
// AUTHENTICATE at Level with ks. It returns the card's INITIALIZE UPDATE
// data, the status word that ended the handshake, and the session when that
// status is 9000. When the card cryptogram does not verify, it sends an
// EXTERNAL AUTHENTICATE computed from ks all the same, as a host with the
// wrong keys that ignores the check would, so that the card counts it.
func Authenticate(t testing.TB, card gp.Channel, aid []byte, ks gp.KeySet) (gp.InitUpdateResponse, gp.SW, *Session) {
	t.Helper()
	ctx := context.Background()
	h := gp.NewHost(card)
	if _, found, err := h.Select(ctx, aid); err != nil || !found {
		t.Fatalf("scptest: SELECT %X: found %v, %v", aid, found, err)
	}
	hs, err := gp.NewHostSession(ks, nil)
	if err != nil {
		t.Fatal(err)
	}
	iu, err := h.InitializeUpdate(ctx, hs)
	var se *gp.SWError
	switch {
	case errors.As(err, &se):
		return gp.InitUpdateResponse{}, se.SW, nil
	case errors.Is(err, gp.ErrCryptogram):
		r, err := h.Send(ctx, ForgedExternalAuthenticate(t, ks, hs.HostChallenge(), iu.CardChallenge))
		if err != nil {
			t.Fatal(err)
		}
		return iu, r.SW, nil
	case err != nil:
		t.Fatal(err)
	}
	if err := h.ExternalAuthenticate(ctx, Level); err != nil {
		if errors.As(err, &se) {
			return iu, se.SW, nil
		}
		t.Fatal(err)
	}
	return iu, gp.SWOK, &Session{t: t, host: h}
}

// ForgedExternalAuthenticate builds EXTERNAL AUTHENTICATE at Level from
// keys the card may not have (AmdD 6.2.1, 6.2.2.3, 6.2.4): host cryptogram
// and C-MAC under the session keys ks gives with these challenges.
func ForgedExternalAuthenticate(t testing.TB, ks gp.KeySet, hostChallenge, cardChallenge []byte) gp.Command {
	t.Helper()
	sk, err := gp.DeriveSessionKeys(ks, hostChallenge, cardChallenge)
	if err != nil {
		t.Fatal(err)
	}
	ctx := append(append([]byte{}, hostChallenge...), cardChallenge...)
	crypt, err := gp.KDF(gp.AESKey(sk.MAC), 0x01, ctx, 64)
	if err != nil {
		t.Fatal(err)
	}
	mac, err := gp.CMAC(sk.MAC, append(append(make([]byte, 16), 0x84, 0x82, byte(Level), 0x00, 0x10), crypt...))
	if err != nil {
		t.Fatal(err)
	}
	return gp.Command{CLA: 0x84, INS: 0x82, P1: byte(Level), Data: append(crypt, mac[:8]...)}
}

// Do sends cmd through the secure channel and returns the unwrapped answer.
func (s *Session) Do(cmd gp.Command) gp.Response {
	s.t.Helper()
	r, err := s.host.Send(context.Background(), cmd)
	if err != nil {
		s.t.Fatal(err)
	}
	return r
}

// SecurityDomains lists the SSDs GET STATUS shows through the ISD session s.
func (s *Session) SecurityDomains() []gp.RegistryEntry {
	s.t.Helper()
	es, err := s.host.GetStatus(context.Background(), gp.StatusApplications)
	if err != nil {
		s.t.Fatalf("scptest: %v", err)
	}
	var out []gp.RegistryEntry
	for _, e := range es {
		if e.Privileges.Has(gp.PrivSecurityDomain) {
			out = append(out, e)
		}
	}
	return out
}

// CheckPersonalized checks a module after keyport perso against the store
// and the HSM: the store holds the module with n domains (key source
// generated, KVN 30, UNASSIGNED, the KCVs of the stored blobs), its ISD key
// blobs and its sealed PSK, and no pending perso record; the ISD holds the
// stored key set and no longer the test keys at KVN 30; GET STATUS lists
// exactly those domains as SSDs with privileges 804000, SELECTABLE; the
// stored first keys authenticate to each, and each card counter is the
// store's plus the one authentication done here.
func CheckPersonalized(t testing.TB, repo keyport.Repo, h *hsm.HSM, card gp.Channel, batch string, eid keyport.EID, n int) {
	t.Helper()
	ctx := context.Background()
	m, err := repo.GetModule(ctx, eid)
	if err != nil {
		t.Fatalf("scptest: store: %v", err)
	}
	if len(m.Domains) != n {
		t.Fatalf("scptest: store has %d domains, want %d", len(m.Domains), n)
	}
	if _, sw, _ := Authenticate(t, card, m.ISDAID.Bytes(), TestKeys(0x30)); sw != gp.SWReferencedDataNotFound {
		t.Errorf("scptest: ISD test key set 30: %s, want 6A88 (replaced)", sw)
	}
	if !m.ISDKeys.Complete() || len(m.PSK) == 0 {
		t.Errorf("scptest: module stored without ISD key blobs or PSK (%d blobs, PSK %d bytes)", len(m.ISDKeys), len(m.PSK))
	}
	if _, err := repo.GetPersoKeys(ctx, eid); !errors.Is(err, keyport.ErrNotFound) {
		t.Errorf("scptest: a perso record is left after registration: %v", err)
	}
	_, sw, isd := Authenticate(t, card, m.ISDAID.Bytes(), ISDKeys(h, m))
	if sw != gp.SWOK {
		t.Fatalf("scptest: ISD with the stored keys: %s", sw)
	}
	onCard := isd.SecurityDomains()
	if len(onCard) != n {
		t.Fatalf("scptest: the card has %d SSDs, want %d: %+v", len(onCard), n, onCard)
	}
	for i, d := range m.Domains {
		if d.KeySource != keyport.KeyGenerated || !d.Wrapped.Complete() || d.KVN != 0x30 || d.State != keyport.Unassigned {
			t.Errorf("scptest: domain %s: %+v", d.AID, d)
		}
		e := onCard[i]
		if string(e.AID) != string(d.AID.Bytes()) || e.Privileges != 0x804000 || e.LifeCycle != gp.LifeCycleSelectable {
			t.Errorf("scptest: card entry %d: AID %X privileges %s LCS %s; store domain %s", i, e.AID, e.Privileges, e.LifeCycle, d.AID)
		}
		for _, u := range keyport.Usages {
			kcv, err := h.KeyKCV(ctx, keyport.DomainKey(batch, &d, u))
			if err != nil || kcv != d.KCV[u] {
				t.Errorf("scptest: domain %s %s: store KCV %s, HSM %s (%v)", d.AID, u, d.KCV[u], kcv, err)
			}
		}
		iu, sw, _ := Authenticate(t, card, d.AID.Bytes(), FirstKeys(h, batch, &d))
		if sw != gp.SWOK {
			t.Errorf("scptest: domain %s: the stored first keys: %s", d.AID, sw)
		}
		if want := uint32(d.SeqCounter) + 1; iu.SequenceCounter != want {
			t.Errorf("scptest: domain %s: card counter %d, store says %d (so %d expected)", d.AID, iu.SequenceCounter, d.SeqCounter, want)
		}
	}
}
