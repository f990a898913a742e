package cardlinktest

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink/agent"
	"github.com/keyport/keyport/cardlink/vcard"
	"github.com/keyport/keyport/gp"
	"github.com/keyport/keyport/hsm/hsmtest"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/keywrap"
	"github.com/keyport/keyport/perso"
	"github.com/keyport/keyport/store/storetest"
)

// IssuerWorld is a module that keyport personalized (so keyport holds its
// ISD keys in the HSM), one domain of it claimed by a provider and made
// PERSONALIZED over card-link with the provider's second keys, and
// card-link running on SQLite and SoftHSM.
type IssuerWorld struct {
	*fixture.World
	EID  keyport.EID
	AID  keyport.AID
	Prov keyport.Principal
	// Token is the provider's API token; its portal user signs in with
	// Email and Password.
	Token, Email, Password string
	Card                   *MemCard
	Link                   *Link
	PSK                    []byte
	// DBPath is the SQLite database, CardPath the module's state file;
	// Logs collects what the service and the admin server logged.
	DBPath, CardPath string
	Logs             *LogBuffer
}

// LogBuffer is a log sink safe for concurrent use.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns what was logged so far.
func (b *LogBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// NewIssuerWorld builds an IssuerWorld (batch "p1", 2 domains; the first
// is the provider's).
func NewIssuerWorld(t testing.TB, opts LinkOptions) *IssuerWorld {
	t.Helper()
	ctx := context.Background()
	dbPath := storetest.SQLitePath(t)
	st := storetest.Open(t, dbPath)
	h, tok := hsmtest.OpenToken(t)
	logs := &LogBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	svc := &keyport.Service{Store: st, Custody: h, Link: h, CheckpointEvery: 4, Writes: st.Group(), DualControl: keyport.DualControl{Admins: 1}, Log: log}
	svc.Delivery = keyport.DeliveryPolicy{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second, Lease: 3 * time.Second}
	fw := &fixture.World{Svc: svc, Store: st, HSM: h, Token: tok, Mail: &fixture.Mailbox{}}
	svc.Mailer = fw.Mail
	if _, _, err := svc.CreateBatch(ctx, fixture.Admin, "p1", "", nil); err != nil {
		t.Fatal(err)
	}
	w := &IssuerWorld{World: fw, EID: fixture.EID(t, 3), DBPath: dbPath, Logs: logs, CardPath: filepath.Join(t.TempDir(), "module.json")}
	card, err := vcard.New(string(w.EID), vcard.Config{StatePath: w.CardPath})
	if err != nil {
		t.Fatal(err)
	}
	w.Card = &MemCard{Card: card}
	rep, err := (&perso.Station{Service: svc, Keys: h}).Personalize(ctx, fixture.Admin, w.Card, perso.Request{Batch: "p1", Domains: 2})
	if err != nil {
		t.Fatal(err)
	}
	w.AID = rep.Domains[0].AID
	sp := fixture.RSAKeys()[0]
	wk := w.signUp(t, sp)
	pkg, first := ClaimAndUnwrap(t, svc, w.Prov, w.EID, w.AID, wk, sp)
	second := map[keyport.KeyUsage][]byte{}
	for _, u := range keyport.Usages {
		second[u] = make([]byte, 16)
		for i := range second[u] {
			second[u][i] = byte(i*7) + byte(len(u))
		}
	}
	req, err := keyport.SecondKeyScript(w.AID, pkg.KVN, pkg.SequenceCounter, 0x31, first, second)
	if err != nil {
		t.Fatal(err)
	}
	j, err := svc.SubmitScript(ctx, w.Prov, w.EID, w.AID, req)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetModule(ctx, w.EID)
	if err != nil {
		t.Fatal(err)
	}
	if w.PSK, err = h.ModulePSK(ctx, w.EID, m.PSK); err != nil {
		t.Fatal(err)
	}
	if opts.Server.Log == nil {
		opts.Server.Log = log
	}
	w.Link = StartLink(t, svc, opts)
	if _, err := w.Agent().Session(ctx); err != nil {
		t.Fatal(err)
	}
	if j, err = svc.GetJob(ctx, w.Prov, j.Ref); err != nil || j.State != keyport.JobDone {
		t.Fatalf("cardlinktest: second-key job: %+v %v", j, err)
	}
	return w
}

// Agent is the module's handset agent, relaying to the card.
func (w *IssuerWorld) Agent() *agent.Agent {
	return agent.New(agent.Config{Server: w.Link.Addr, Identity: string(w.EID), PSK: w.PSK, Retry: 10 * time.Millisecond}, w.Card)
}

// CardRules reads the access rules from the card's ARA-M, as a handset
// does (no secure channel), and its refresh tag.
func (w *IssuerWorld) CardRules(t testing.TB) ([]gp.AccessRule, []byte) {
	t.Helper()
	ctx := context.Background()
	h := gp.NewHost(w.Card)
	if _, found, err := h.Select(ctx, gp.ARAMAID); err != nil || !found {
		t.Fatalf("cardlinktest: SELECT ARA-M: %v %v", found, err)
	}
	rules, err := h.AccessRules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := h.RefreshTag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return rules, tag
}

// CardKeys returns every key value the module holds (ISD and SSD key
// sets), read from its state file: what a leak scan looks for.
func (w *IssuerWorld) CardKeys(t testing.TB) [][]byte {
	t.Helper()
	b, err := os.ReadFile(w.CardPath)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Apps []struct {
			KeySets []struct {
				Keys []struct {
					Value string `json:"value"`
				} `json:"keys"`
			} `json:"key_sets"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, a := range st.Apps {
		for _, ks := range a.KeySets {
			for _, k := range ks.Keys {
				v, err := hex.DecodeString(k.Value)
				if err != nil {
					t.Fatalf("cardlinktest: key value in the module state: %v", err)
				}
				out = append(out, v)
			}
		}
	}
	return out
}

// ISDKeys returns the module's ISD key set of KVN PersoISDKVN (ENC, MAC,
// DEK), read from its state file, for a test that checks what keyport did
// with them.
func (w *IssuerWorld) ISDKeys(t testing.TB) [3][]byte {
	t.Helper()
	b, err := os.ReadFile(w.CardPath)
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Apps []struct {
			AID     string `json:"aid"`
			KeySets []struct {
				KVN  byte `json:"kvn"`
				Keys []struct {
					ID    byte   `json:"id"`
					Value string `json:"value"`
				} `json:"keys"`
			} `json:"key_sets"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	var out [3][]byte
	for _, a := range st.Apps {
		if a.AID != string(keyport.AID("A000000151000000")) {
			continue
		}
		for _, ks := range a.KeySets {
			if ks.KVN != keyport.PersoISDKVN {
				continue
			}
			for _, k := range ks.Keys {
				if k.ID >= 1 && k.ID <= 3 {
					out[k.ID-1], _ = hex.DecodeString(k.Value)
				}
			}
		}
	}
	if out[0] == nil || out[1] == nil {
		t.Fatal("cardlinktest: the module has no ISD key set 31")
	}
	return out
}

// signUp makes the provider as a bank signs up (a portal user with a
// password), approved, with an API token and sp's public key as its
// wrapping key, whose ID it returns.
func (w *IssuerWorld) signUp(t testing.TB, sp *rsa.PrivateKey) string {
	t.Helper()
	ctx := context.Background()
	w.Email, w.Password = "ops@bank.example", "a bank's long password"
	prov, err := w.Svc.SignUpProvider(ctx, keyport.SignUp{Organisation: "Bank", Kind: keyport.KindBank, Contact: "Test Person",
		Email: w.Email, Password: w.Password}, "http://keyport.test")
	if err != nil {
		t.Fatal(err)
	}
	msg, ok := w.Mail.Newest(w.Email)
	i := strings.Index(msg.Body, "token=")
	if !ok || i < 0 {
		t.Fatal("cardlinktest: no verification e-mail")
	}
	tok := msg.Body[i+len("token="):]
	if j := strings.IndexAny(tok, " \r\n"); j >= 0 {
		tok = tok[:j]
	}
	if _, err := w.Svc.VerifyEmail(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := w.Svc.SetProviderStatus(ctx, fixture.Admin, prov.ID, keyport.ProviderApproved); err != nil {
		t.Fatal(err)
	}
	w.Prov = keyport.Principal{ProviderID: prov.ID, Name: w.Email}
	if w.Token, _, err = w.Svc.CreateAPIToken(ctx, w.Prov, "test"); err != nil {
		t.Fatal(err)
	}
	if w.Prov, err = w.Svc.Authenticate(ctx, w.Token); err != nil {
		t.Fatal(err)
	}
	wk, err := w.Svc.RegisterWrappingKey(ctx, w.Prov, fixture.PublicPEM(sp))
	if err != nil {
		t.Fatal(err)
	}
	return wk.ID
}

// ClaimAndUnwrap claims domain aid of module eid for p through svc, with
// the wrapping key wk, and returns the key package, verified against
// svc's JWKS, and the first keys in it unwrapped with sp, as the provider
// does.
func ClaimAndUnwrap(t testing.TB, svc *keyport.Service, p keyport.Principal, eid keyport.EID, aid keyport.AID, wk string, sp *rsa.PrivateKey) (*keyport.KeyPackage, map[keyport.KeyUsage][]byte) {
	t.Helper()
	ctx := context.Background()
	c, _, err := svc.Claim(ctx, p, keyport.ClaimRequest{EID: eid, AID: aid, WrappingKeyID: wk})
	if err != nil {
		t.Fatal(err)
	}
	set, _ := svc.JWKS(ctx)
	pkg, err := keyport.VerifyKeyPackage(c.Package, set)
	if err != nil {
		t.Fatal(err)
	}
	first := map[keyport.KeyUsage][]byte{}
	for _, k := range pkg.Keys {
		if first[k.Usage], err = keywrap.UnwrapRSAAES(sp, k.Wrapped, fixture.OAEPHash(t, pkg.Wrapping.OAEPHash)); err != nil {
			t.Fatal(err)
		}
	}
	return pkg, first
}
