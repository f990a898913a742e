// Package perso is the issuer personalization station (DESIGN.md flow 1,
// `keyport perso`): it turns a blank module in a reader into one keyport
// knows. The card dialog is gp's host over a gp.Channel; every secret stays
// in the HSM behind keyport.PersoCustody; the module is stored through the
// root use cases (Service.GetBatch, GetModule, RegisterModule), never by
// reaching into the store. It imports only the root package and gp/.
package perso

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// ISDKeys says which keys the module's ISD holds before personalization.
type ISDKeys string

// ISD key modes.
const (
	// ISDKeysDefault: a blank module; the ISD holds the public GlobalPlatform
	// test keys (keyport.GPTestKey for ENC, MAC and DEK), which perso
	// replaces by keys generated in the HSM. A module whose ISD already holds
	// keyport's key set (keyport.PersoISDKVN, from an interrupted run) is
	// recognised and used as it is.
	ISDKeysDefault ISDKeys = "default"
	// ISDKeysDerived: the ISD must already hold keyport's key set (an
	// interrupted run replaced the test keys); the test keys are never sent.
	ISDKeysDerived ISDKeys = "derived"
)

// MaxDomains bounds --domains: the SSD number is one AID byte.
const MaxDomains = 255

// DefaultAIDPrefix is the SSD AID prefix of a batch that has none:
// the GP SSD module AID A0000001515350 41 (GPPro GPTool --domain,
// PROTOCOLS.md §1.4); SSD n is A000000151535041 ‖ n.
const DefaultAIDPrefix keyport.AID = "A000000151535041"

// SSDPrivileges are the privileges of a keyport SSD: Security Domain and
// Authorized Management (GPCS Table 11-7, PROTOCOLS.md §1.2), so that the
// provider manages its domain without tokens once it holds the keys.
const SSDPrivileges = gp.PrivSecurityDomain | gp.PrivAuthorizedManagement

// AIDs perso uses on the card.
var (
	// ssdLoadFile / ssdModule: the SD package SSDs are instantiated from
	// (GPPro GPTool --domain, PROTOCOLS.md §1.4).
	ssdLoadFile = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50}
	ssdModule   = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x41}
	// isdrAID answers the EID request (SGP.22; PROTOCOLS.md §5).
	isdrAID = []byte{0xA0, 0x00, 0x00, 0x05, 0x59, 0x10, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x89, 0x00, 0x00, 0x01, 0x00}
	// defaultISDAID is GPCS H.1.3's ISD AID, for a card whose SELECT answer
	// does not name its ISD.
	defaultISDAID = keyport.AID("A000000151000000")
)

// Station is the issuer personalization station (DESIGN.md flow 1, `keyport
// perso`): it drives one module at a time over a gp.Channel, asks the HSM
// for everything secret, and registers what it made through the root use
// cases (keyport.Service.RegisterModule).
type Station struct {
	// Service holds the use cases: the batch, the stored module and the
	// registration, each for an admin principal.
	Service *keyport.Service
	// Keys is the HSM: it generates the ISD and SSD keys, which leave it
	// only wrapped.
	Keys keyport.PersoCustody
	// Log receives one line per personalized module; nil means Service.Log,
	// and none there means no log.
	Log *slog.Logger
}

// Request is one run of the personalization station.
type Request struct {
	// Batch is a batch whose keys keyport generates (KeyGenerated): its KEK
	// keeps the SSD first keys and its AID prefix names the SSDs.
	Batch string
	// Domains is how many SSDs the module gets (1..MaxDomains).
	Domains int
	// ISDKeys is the ISD's key set before perso; "" means ISDKeysDefault.
	ISDKeys ISDKeys
	// MSISDN is the module's E.164 number (optional), for SMS reach;
	// MSISDNs, when it names the module's EID, takes precedence.
	MSISDN  string
	MSISDNs map[keyport.EID]string
}

// SSD is what perso did to one SSD.
type SSD struct {
	AID keyport.AID
	// Created: this run installed the SSD; KeysLoaded: this run loaded its
	// first key set. Both false for an SSD an interrupted run had finished.
	Created, KeysLoaded bool
	KCV                 map[keyport.KeyUsage]string
	// SeqCounter is the card's SCP03 sequence counter of the first key set
	// after perso's own authentication with it.
	SeqCounter int
}

// Report says what a personalization run found and did.
type Report struct {
	EID    keyport.EID
	ISDAID keyport.AID
	// CPLC is the card's production life cycle data (GET DATA 9F7F), if any.
	CPLC []byte
	// ISDKeysReplaced: this run replaced the ISD test keys by the generated
	// key set keyport.PersoISDKVN.
	ISDKeysReplaced bool
	Domains         []SSD
	// OTAKeysLoaded: this run loaded the ISD's OTA key set
	// (keyport.OTAKVN) generated in the HSM. OTAKeys: the module is
	// registered with one (loaded now or by an interrupted run).
	OTAKeysLoaded, OTAKeys bool
	// Registered: this run stored the module. AlreadyRegistered: the store
	// had it already (a finished perso run again); card and store were
	// compared and nothing was changed.
	Registered, AlreadyRegistered bool
	// APDUs is the number of command APDUs sent.
	APDUs    int
	Duration time.Duration
}

// errPerso wraps the errors of one perso run with the module.
func errPerso(eid keyport.EID, op string, err error) error {
	if eid == "" {
		return fmt.Errorf("perso: %s: %w", op, err)
	}
	return fmt.Errorf("perso %s: %s: %w", eid, op, err)
}

// Personalize personalizes the module behind card for principal p, who must
// be an admin (DESIGN.md flow 1): it reads the module's EID and CPLC, opens
// SCP03 to the ISD, replaces the ISD test keys by keys generated in the HSM
// (PUT KEY, GPCS 11.8), creates req.Domains SSDs (INSTALL [for install and
// make selectable], privileges 804000, C9 {81 02 03 70}; GPCS 11.5), loads
// each SSD's first key set generated in the HSM and encrypted there under
// the ISD DEK (INSTALL [for personalization] + STORE DATA DGI 00B9/8113, GPCS
// 11.11.4), checks the registry with GET STATUS and a fresh SCP03
// authentication to every SSD, and registers the module, its ISD keys, its
// PSK and its domains (key source "generated") with a chained "perso" audit
// event.
//
// It reads the card before it writes and only does what is missing, so a run
// interrupted at any point (the module pulled, the station killed) is
// finished by the next run without doing anything twice: a card that
// executed a command whose answer was lost shows its effect on the next read.
// Generated keys are stored (keyport.PersoKeys, as blobs) before they are
// sent, so the next run has the keys the card may hold; the module itself is
// registered last, in one transaction; a module the store has already is
// compared with the card and left alone.
//
// Wrong keys are found by the card cryptogram before EXTERNAL AUTHENTICATE is
// sent, so perso never adds to a key set's failure count.
func (st *Station) Personalize(ctx context.Context, p keyport.Principal, card gp.Channel, req Request) (*Report, error) {
	if !p.Admin {
		return nil, keyport.ErrForbidden
	}
	if req.Domains < 1 || req.Domains > MaxDomains {
		return nil, keyport.Invalid("domains", "a module gets 1 to %d domains, not %d", MaxDomains, req.Domains)
	}
	switch req.ISDKeys {
	case "":
		req.ISDKeys = ISDKeysDefault
	case ISDKeysDefault, ISDKeysDerived:
	default:
		return nil, keyport.Invalid("isd_keys", "must be default or derived, not %q", req.ISDKeys)
	}
	for _, n := range append(slices.Collect(maps.Values(req.MSISDNs)), req.MSISDN) {
		if _, err := keyport.NormalizeMSISDN(n); err != nil {
			return nil, err
		}
	}
	b, err := st.Service.GetBatch(ctx, p, req.Batch)
	if err != nil {
		return nil, errPerso("", "batch "+req.Batch, err)
	}
	switch b.KeySource {
	case keyport.KeyGenerated:
	case keyport.KeyDerived:
		return nil, fmt.Errorf("%w: batch %q still derives its keys from a master key: run `keyport hsm init` to migrate the token first", keyport.ErrConflict, req.Batch)
	default:
		return nil, keyport.Invalid("batch", "batch %q is an imported batch: its keys come from the manufacturer, not from perso", req.Batch)
	}
	aids, err := ssdAIDs(b.AIDPrefix, req.Domains)
	if err != nil {
		return nil, err
	}
	r := &run{svc: st.Service, p: p, host: gp.NewHost(card), keys: st.Keys, req: req, batch: b, aids: aids, rep: &Report{}}
	start := time.Now()
	err = r.personalize(ctx)
	r.rep.APDUs = r.host.APDUs()
	r.rep.Duration = time.Since(start)
	if err != nil {
		return r.rep, errPerso(r.rep.EID, r.step, err)
	}
	st.log().Info("module personalized", "eid", r.rep.EID, "batch", b.Name, "domains", len(aids),
		"registered", r.rep.Registered, "apdus", r.rep.APDUs, "duration", r.rep.Duration)
	return r.rep, nil
}

func (st *Station) log() *slog.Logger {
	switch {
	case st.Log != nil:
		return st.Log
	case st.Service.Log != nil:
		return st.Service.Log
	}
	return slog.New(slog.DiscardHandler)
}

// ssdAIDs returns prefix ‖ n for n = 1..count (DefaultAIDPrefix when the
// batch has no prefix).
func ssdAIDs(prefix keyport.AID, count int) ([]keyport.AID, error) {
	if prefix == "" {
		prefix = DefaultAIDPrefix
	}
	pb, err := hex.DecodeString(string(prefix))
	if err != nil || len(pb) < 5 || len(pb) > 15 {
		return nil, keyport.Invalid("batch", "AID prefix %q must be 5 to 15 bytes so that prefix ‖ n is an AID", prefix)
	}
	out := make([]keyport.AID, count)
	for n := 1; n <= count; n++ {
		out[n-1] = keyport.AID(strings.ToUpper(hex.EncodeToString(append(slices.Clone(pb), byte(n)))))
	}
	return out, nil
}

// run is the state of one Personalize call. Not safe for concurrent use.
type run struct {
	svc   *keyport.Service
	p     keyport.Principal
	host  *gp.Host // the card dialog; it counts the APDUs
	keys  keyport.PersoCustody
	req   Request
	batch *keyport.Batch
	aids  []keyport.AID
	rep   *Report
	step  string // what is being done, for errors

	eid keyport.EID
	isd keyport.AID
	// rec is what this module's runs generated (stored before it is sent).
	rec *keyport.PersoKeys
}

// ssdState is what the card shows of one SSD before perso writes.
type ssdState struct {
	present, hasKeys bool
	created, loaded  bool
	kcv              map[keyport.KeyUsage]string
}

func (r *run) personalize(ctx context.Context) error {
	// 1. Who is this module, and what does its ISD hold?
	if err := r.identify(ctx); err != nil {
		return err
	}
	isdKVNs, err := r.isdKeyVersions(ctx)
	if err != nil {
		return err
	}
	r.step = "look the module up in the store"
	stored, err := r.svc.GetModule(ctx, r.p, r.eid)
	switch {
	case err == nil:
		return r.checkRegistered(ctx, stored, isdKVNs)
	case !errors.Is(err, keyport.ErrNotFound):
		return err
	}
	if err := r.loadRecord(ctx); err != nil {
		return err
	}

	// 2. Which SSDs exist, and which have their first key set? Read only.
	states := make([]ssdState, len(r.aids))
	for i, aid := range r.aids {
		r.step = "probe SSD " + string(aid)
		found, err := r.selectApp(ctx, aid.Bytes())
		if err != nil {
			return err
		}
		if !found {
			continue
		}
		states[i].present = true
		kvns, err := r.host.KeyVersions(ctx)
		if err != nil {
			return err
		}
		states[i].hasKeys = slices.Contains(kvns, keyport.FirstKVN)
	}

	// 3. The ISD: replace the test keys if they are still there, then work
	// under keyport's keys.
	if err := r.openISD(ctx, isdKVNs); err != nil {
		return err
	}

	// 3b. The ISD's OTA key set, for SMS reach.
	if err := r.loadOTAKeys(ctx, isdKVNs); err != nil {
		return err
	}

	// 4. Registry: the SSDs that exist must be keyport's.
	r.step = "GET STATUS"
	reg, err := r.getStatus(ctx)
	if err != nil {
		return err
	}
	for i, aid := range r.aids {
		e, listed := reg[aid]
		if listed != states[i].present {
			return fmt.Errorf("%w: SSD %s: SELECT and GET STATUS disagree (selectable %v, listed %v)", keyport.ErrConflict, aid, states[i].present, listed)
		}
		if listed {
			if err := checkSSDEntry(e); err != nil {
				return err
			}
		}
	}

	// 5. Create what is missing and load the missing first key sets, under
	// the ISD keys; the first keys of SSDs that have none are generated
	// and stored first.
	for i, aid := range r.aids {
		if states[i].present {
			continue
		}
		r.step = "INSTALL SSD " + string(aid)
		params := gp.InstallParams{AppSpecific: gp.SCPParam(0x03, 0x70)}.Bytes()
		cmd := gp.InstallForInstallCmd(ssdLoadFile, ssdModule, aid.Bytes(), SSDPrivileges, params, true)
		if _, err := r.host.SendOK(ctx, cmd); err != nil {
			return err
		}
		states[i].present, states[i].created = true, true
	}
	if err := r.generateFirstKeys(ctx, states); err != nil {
		return err
	}
	for i, aid := range r.aids {
		if states[i].hasKeys {
			continue
		}
		r.step = "load the first keys of SSD " + string(aid)
		kcv, err := r.loadFirstKeys(ctx, aid)
		if err != nil {
			return err
		}
		states[i].hasKeys, states[i].loaded, states[i].kcv = true, true, kcv
	}

	// 6. Check: the registry lists every SSD, SELECTABLE, with 804000.
	r.step = "GET STATUS after perso"
	reg, err = r.getStatus(ctx)
	if err != nil {
		return err
	}
	for _, aid := range r.aids {
		e, listed := reg[aid]
		if !listed {
			return fmt.Errorf("SSD %s is missing from GET STATUS after INSTALL", aid)
		}
		if err := checkSSDEntry(e); err != nil {
			return err
		}
	}

	// 7. Check: the first keys authenticate to every SSD.
	domains := make([]keyport.Domain, len(r.aids))
	for i, aid := range r.aids {
		r.step = "authenticate to SSD " + string(aid)
		if _, err := r.selectApp(ctx, aid.Bytes()); err != nil {
			return err
		}
		ks := r.firstKeySet(ctx, aid)
		card, err := r.openSession(ctx, ks)
		if err != nil {
			return err
		}
		if states[i].kcv == nil {
			if states[i].kcv, err = r.firstKCVs(ctx, aid); err != nil {
				return err
			}
		}
		d := SSD{AID: aid, Created: states[i].created, KeysLoaded: states[i].loaded, KCV: states[i].kcv,
			SeqCounter: int(card.SequenceCounter)}
		r.rep.Domains = append(r.rep.Domains, d)
		domains[i] = keyport.Domain{EID: r.eid, AID: aid, KVN: int(keyport.FirstKVN), State: keyport.Unassigned, KeySource: keyport.KeyGenerated,
			Wrapped: r.rec.SSD[aid], KCV: d.KCV, SeqCounter: d.SeqCounter}
	}
	r.host.EndSession()

	// 8. Register, last and in one transaction.
	r.step = "register the module"
	msisdn := r.req.MSISDN
	if n, ok := r.req.MSISDNs[r.eid]; ok {
		msisdn = n
	}
	if msisdn, err = keyport.NormalizeMSISDN(msisdn); err != nil {
		return err
	}
	m := &keyport.ModuleImport{Line: 1, EID: r.eid, ISDAID: r.isd, Domains: domains,
		ISDKeys: r.rec.ISD, PSK: r.rec.PSK, MSISDN: msisdn}
	if r.rep.OTAKeys {
		m.OTAKVN, m.OTAKeys = keyport.OTAKVN, r.rec.OTA
	}
	return r.register(ctx, m)
}

// loadOTAKeys loads the ISD's OTA (SCP80) key set keyport.OTAKVN with PUT
// KEY through the ISD session: KIc, KID and DEK (key IDs 1-3) generated in
// the HSM, kept under the ISD KEK, stored in the record first, and
// encrypted there under the ISD DEK. An ISD that holds that key set already keeps it:
// with keyport's record of it (an interrupted run) the module gets it;
// without (the manufacturer's keys), the module has no SMS reach.
func (r *run) loadOTAKeys(ctx context.Context, isdKVNs []byte) error {
	if slices.Contains(isdKVNs, keyport.OTAKVN) {
		r.rep.OTAKeys = r.rec.OTA.Complete()
		return nil
	}
	// The card does not hold the key set, so none of an earlier run
	// reached it: a new set replaces any in the record. The keys come
	// encrypted under the ISD DEK from their generation: blobs under the
	// ISD KEK never unwrap into exportable keys.
	r.step = "generate the OTA keys"
	gen, err := r.keys.GenerateKeysUnder(ctx, "", r.isdKey(keyport.UsageDEK))
	if err != nil {
		return err
	}
	r.rec.OTA = blobs(gen)
	r.step = "store the generated OTA keys"
	if err := r.save(ctx, []string{"ota"}); err != nil {
		return err
	}
	r.step = fmt.Sprintf("load the OTA key set %02X", keyport.OTAKVN)
	if err := r.putKeys(ctx, 0, keyport.OTAKVN, gen); err != nil {
		return err
	}
	r.rep.OTAKeysLoaded, r.rep.OTAKeys = true, true
	return nil
}

// loadRecord reads what earlier runs generated for this module, or starts a
// new record. A record for another batch or ISD is a conflict: the module
// was being personalized otherwise.
func (r *run) loadRecord(ctx context.Context) error {
	r.step = "read the keys earlier runs generated"
	rec, err := r.svc.PersoKeys(ctx, r.p, r.eid)
	switch {
	case errors.Is(err, keyport.ErrNotFound):
		r.rec = &keyport.PersoKeys{EID: r.eid, BatchID: r.batch.ID, ISDAID: r.isd, SSD: map[keyport.AID]keyport.KeyBlobs{}}
		return nil
	case err != nil:
		return err
	case rec.BatchID != r.batch.ID || rec.ISDAID != r.isd:
		return fmt.Errorf("%w: module %s is being personalized for batch id %d with ISD %s, not for batch %s with ISD %s; finish that run",
			keyport.ErrConflict, r.eid, rec.BatchID, rec.ISDAID, r.batch.Name, r.isd)
	}
	if rec.SSD == nil {
		rec.SSD = map[keyport.AID]keyport.KeyBlobs{}
	}
	r.rec = rec
	return nil
}

// save stores the record before anything in it goes to the card.
func (r *run) save(ctx context.Context, what []string) error {
	return r.svc.SavePersoKeys(ctx, r.p, r.rec, what)
}

// generateFirstKeys generates, under the batch KEK, the first keys of every
// SSD that has none on the card and none in the record, and stores them
// before any is loaded. An SSD whose keys the card holds must have them in
// the record: keys keyport never stored cannot be recovered.
func (r *run) generateFirstKeys(ctx context.Context, states []ssdState) error {
	var what []string
	for i, aid := range r.aids {
		have := r.rec.SSD[aid].Complete()
		switch {
		case states[i].hasKeys && !have:
			return fmt.Errorf("%w: SSD %s holds a first key set that keyport has no record of (personalized elsewhere, or the record was lost); resolve it by hand",
				keyport.ErrConflict, aid)
		case states[i].hasKeys || have:
			continue
		}
		r.step = "generate the first keys of SSD " + string(aid)
		gen, err := r.keys.GenerateKeys(ctx, r.batch.Name, nil)
		if err != nil {
			return err
		}
		r.rec.SSD[aid] = blobs(gen)
		what = append(what, "ssd "+string(aid))
	}
	if len(what) == 0 {
		return nil
	}
	r.step = "store the generated first keys"
	return r.save(ctx, what)
}

func blobs(gen []keyport.GeneratedKey) keyport.KeyBlobs {
	b := keyport.KeyBlobs{}
	for _, g := range gen {
		b[g.Usage] = g.Wrapped
	}
	return b
}

// identify reads the EID from the ISD-R (SGP.22 GET EID), selects the ISD
// and reads its CPLC (GET DATA 9F7F).
func (r *run) identify(ctx context.Context) error {
	r.step = "read the EID"
	found, err := r.selectApp(ctx, isdrAID)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("the module has no ISD-R (%X) to read its EID from", isdrAID)
	}
	data, err := r.host.SendOK(ctx, gp.GetEID())
	if err != nil {
		return err
	}
	digits, err := gp.ParseEIDResponse(data)
	if err != nil {
		return err
	}
	if r.eid, err = keyport.ParseEID(digits); err != nil {
		return fmt.Errorf("the module's EID %s: %w", digits, err)
	}
	r.rep.EID = r.eid

	r.step = "select the ISD"
	fci, found, err := r.host.Select(ctx, nil)
	if err != nil {
		return err
	}
	if !found {
		return &gp.SWError{SW: gp.SWNotFound, Op: "SELECT ISD"}
	}
	r.isd = defaultISDAID
	if aid := gp.FCIDFName(fci); aid != nil {
		if r.isd, err = keyport.ParseAID(hex.EncodeToString(aid)); err != nil {
			return fmt.Errorf("the ISD's AID %X: %w", aid, err)
		}
	}
	r.rep.ISDAID = r.isd

	r.step = "read the CPLC"
	resp, err := r.host.Send(ctx, gp.GetData(gp.DataCPLC))
	if err != nil {
		return err
	}
	if resp.SW == gp.SWOK {
		if _, err := gp.ParseCPLC(resp.Data); err != nil {
			return err
		}
		r.rep.CPLC = resp.Data
	}
	return nil
}

// isdKeyVersions reads the ISD's key versions (the ISD must be selected).
func (r *run) isdKeyVersions(ctx context.Context) ([]byte, error) {
	r.step = "read the ISD key information"
	return r.host.KeyVersions(ctx)
}

// openISD selects the ISD and opens a secure channel to it under keyport's
// ISD keys, first replacing the test keys by a key set generated (and
// stored) now when the ISD does not hold keyport's key set yet.
func (r *run) openISD(ctx context.Context, kvns []byte) error {
	r.step = "select the ISD"
	if found, err := r.selectApp(ctx, r.isd.Bytes()); err != nil {
		return err
	} else if !found {
		return fmt.Errorf("the ISD %s no longer answers SELECT", r.isd)
	}
	if !slices.Contains(kvns, keyport.PersoISDKVN) {
		if r.req.ISDKeys == ISDKeysDerived {
			return fmt.Errorf("%w: the ISD has no key set %02X (it has %X): it does not hold keyport's keys; use --isd-keys default for a blank module",
				keyport.ErrConflict, keyport.PersoISDKVN, kvns)
		}
		if len(kvns) == 0 {
			return errors.New("the ISD reports no key set")
		}
		old := kvns[0]
		r.step = fmt.Sprintf("authenticate to the ISD with the GP test keys (KVN %02X)", old)
		test := gp.AESKey(keyport.GPTestKey)
		if _, err := r.openSession(ctx, gp.KeySet{KVN: old, ENC: test, MAC: test}); err != nil {
			return err
		}
		// The card does not hold key set 31, so no ISD keys of an earlier
		// run reached it: a new set replaces any in the record.
		r.step = "generate the ISD keys"
		gen, err := r.keys.GenerateKeys(ctx, "", keyport.GPTestKey)
		if err != nil {
			return err
		}
		r.rec.ISD = blobs(gen)
		what := []string{"isd"}
		if len(r.rec.PSK) == 0 {
			if r.rec.PSK, err = r.keys.NewModulePSK(ctx, r.eid); err != nil {
				return err
			}
			what = append(what, "psk")
		}
		r.step = "store the generated ISD keys"
		if err := r.save(ctx, what); err != nil {
			return err
		}
		r.step = fmt.Sprintf("replace the ISD key set %02X by %02X", old, keyport.PersoISDKVN)
		if err := r.putKeys(ctx, old, keyport.PersoISDKVN, gen); err != nil {
			return err
		}
		r.rep.ISDKeysReplaced = true
	}
	if !r.rec.ISD.Complete() {
		return fmt.Errorf("%w: the ISD holds key set %02X but keyport has no record of its keys (personalized elsewhere, or the record was lost); resolve it by hand",
			keyport.ErrConflict, keyport.PersoISDKVN)
	}
	keys := gp.KeySet{KVN: keyport.PersoISDKVN,
		ENC: r.custodyKey(ctx, r.isdKey(keyport.UsageENC)),
		MAC: r.custodyKey(ctx, r.isdKey(keyport.UsageMAC))}
	r.step = fmt.Sprintf("authenticate to the ISD with keyport's keys (KVN %02X)", keyport.PersoISDKVN)
	_, err := r.openSession(ctx, keys)
	return err
}

func (r *run) isdKey(u keyport.KeyUsage) keyport.KeyRef {
	return keyport.ISDKey(r.eid, r.isd, u, r.rec.ISD[u])
}

func (r *run) firstKey(aid keyport.AID, u keyport.KeyUsage) keyport.KeyRef {
	return keyport.FirstKey(r.batch.Name, r.eid, aid, u, r.rec.SSD[aid][u])
}

// keyComponent is a PUT KEY AES key component (AmdD Table 7-10) from an
// HSM-encrypted AES-128 key and its KCV in hex.
func keyComponent(ct []byte, kcvHex string) (gp.KeyComponent, error) {
	kcv, err := hex.DecodeString(kcvHex)
	if err != nil || len(kcv) != 3 || len(ct) != 16 {
		return gp.KeyComponent{}, fmt.Errorf("HSM returned a %d-byte encrypted key with KCV %q", len(ct), kcvHex)
	}
	return gp.KeyComponent{Type: gp.KeyTypeAES, Length: 16, Encrypted: ct, KCV: kcv}, nil
}

// loadFirstKeys loads SSD aid's first key set through the ISD session:
// INSTALL [for personalization] then one STORE DATA with DGI 00B9/8113 per
// key, each key encrypted in the HSM under the ISD DEK (GPCS
// 11.11.4; SCP03 uses the static DEK, AmdD 7.3). It returns the KCVs.
func (r *run) loadFirstKeys(ctx context.Context, aid keyport.AID) (map[keyport.KeyUsage]string, error) {
	kcvs := map[keyport.KeyUsage]string{}
	var loads []gp.KeyLoad
	usageQualifier := map[keyport.KeyUsage]byte{keyport.UsageENC: gp.KeyUsageENC, keyport.UsageMAC: gp.KeyUsageMAC, keyport.UsageDEK: gp.KeyUsageDEK}
	for i, u := range keyport.Usages {
		ct, kcvHex, err := r.keys.EncryptUnderKey(ctx, r.isdKey(keyport.UsageDEK), r.firstKey(aid, u))
		if err != nil {
			return nil, err
		}
		kc, err := keyComponent(ct, kcvHex)
		if err != nil {
			return nil, err
		}
		kcvs[u] = kcvHex
		loads = append(loads, gp.KeyLoad{Usage: usageQualifier[u], Type: gp.KeyTypeAES, Length: 16,
			KID: byte(i + 1), KVN: keyport.FirstKVN, KCV: kc.KCV, Encrypted: ct})
	}
	if _, err := r.host.SendOK(ctx, gp.InstallForPersonalizationCmd(aid.Bytes())); err != nil {
		return nil, err
	}
	if _, err := r.host.SendOK(ctx, gp.StoreData(gp.StoreDataLast|gp.StoreDataDGI, 0, gp.KeyLoadDGIs(loads))); err != nil {
		return nil, err
	}
	return kcvs, nil
}

// firstKeySet is SSD aid's first key set as HSM-backed SCP03 static keys.
func (r *run) firstKeySet(ctx context.Context, aid keyport.AID) gp.KeySet {
	return gp.KeySet{KVN: keyport.FirstKVN,
		ENC: r.custodyKey(ctx, r.firstKey(aid, keyport.UsageENC)),
		MAC: r.custodyKey(ctx, r.firstKey(aid, keyport.UsageMAC))}
}

func (r *run) firstKCVs(ctx context.Context, aid keyport.AID) (map[keyport.KeyUsage]string, error) {
	kcvs := map[keyport.KeyUsage]string{}
	for _, u := range keyport.Usages {
		k, err := r.keys.KeyKCV(ctx, r.firstKey(aid, u))
		if err != nil {
			return nil, err
		}
		kcvs[u] = k
	}
	return kcvs, nil
}

// checkSSDEntry refuses a registry entry that keyport perso did not make.
func checkSSDEntry(e gp.RegistryEntry) error {
	switch {
	case e.Privileges != SSDPrivileges:
		return fmt.Errorf("%w: SSD %X has privileges %s, not %06X: it was not made by keyport perso; resolve it by hand",
			keyport.ErrConflict, e.AID, e.Privileges, uint32(SSDPrivileges))
	case e.LifeCycle.Locked():
		return fmt.Errorf("%w: SSD %X is %s", keyport.ErrConflict, e.AID, e.LifeCycle)
	case e.LifeCycle != gp.LifeCycleSelectable && e.LifeCycle != gp.LifeCyclePersonalized:
		return fmt.Errorf("%w: SSD %X is %s, not SELECTABLE", keyport.ErrConflict, e.AID, e.LifeCycle)
	}
	return nil
}

// register stores the module through the root use case, which accepts a
// module a concurrent run stored first if it is the same.
func (r *run) register(ctx context.Context, m *keyport.ModuleImport) error {
	detail := map[string]any{"isd_kvn": fmt.Sprintf("%02X", keyport.PersoISDKVN), "isd_keys_replaced": r.rep.ISDKeysReplaced}
	if len(r.rep.CPLC) > 0 {
		detail["cplc"] = strings.ToUpper(hex.EncodeToString(r.rep.CPLC))
	}
	already, err := r.svc.RegisterModule(ctx, r.p, r.batch.Name, m, detail)
	if err != nil {
		return err
	}
	r.rep.Registered, r.rep.AlreadyRegistered = !already, already
	return nil
}

// checkRegistered compares a module the store has with the card: the ISD
// holds keyport's key set and GET STATUS lists every stored domain as an
// SSD. Nothing is written; the SSDs' sequence counters are left alone (no
// SSD authentication), since the store tracks them for precomputed scripts.
func (r *run) checkRegistered(ctx context.Context, stored *keyport.Module, isdKVNs []byte) error {
	r.step = "compare the registered module with the card"
	want := make([]keyport.Domain, len(r.aids))
	for i, aid := range r.aids {
		want[i] = keyport.Domain{AID: aid, KeySource: keyport.KeyGenerated}
	}
	if err := keyport.SameRegistration(stored, r.batch, &keyport.ModuleImport{EID: r.eid, ISDAID: r.isd, Domains: want}); err != nil {
		return err
	}
	if !slices.Contains(isdKVNs, keyport.PersoISDKVN) {
		return fmt.Errorf("%w: module %s is registered but its ISD has no key set %02X (it has %X)", keyport.ErrConflict, r.eid, keyport.PersoISDKVN, isdKVNs)
	}
	r.rec = &keyport.PersoKeys{ISD: stored.ISDKeys}
	if err := r.openISD(ctx, isdKVNs); err != nil {
		return err
	}
	reg, err := r.getStatus(ctx)
	if err != nil {
		return err
	}
	for _, d := range stored.Domains {
		e, ok := reg[d.AID]
		if !ok {
			return fmt.Errorf("%w: domain %s is registered but the card has no such SSD", keyport.ErrConflict, d.AID)
		}
		if !e.Privileges.Has(gp.PrivSecurityDomain) {
			return fmt.Errorf("%w: %s is registered as a domain but on the card it is not a security domain (%s)", keyport.ErrConflict, d.AID, e.Privileges)
		}
		r.rep.Domains = append(r.rep.Domains, SSD{AID: d.AID, KCV: d.KCV, SeqCounter: d.SeqCounter})
	}
	r.host.EndSession()
	r.rep.AlreadyRegistered = true
	return nil
}

func (r *run) custodyKey(ctx context.Context, ref keyport.KeyRef) gp.StaticKey {
	return keyport.StaticKey(ctx, r.keys, ref)
}

// selectApp selects aid and reports whether the card has it (gp.Host.Select).
func (r *run) selectApp(ctx context.Context, aid []byte) (bool, error) {
	_, found, err := r.host.Select(ctx, aid)
	return found, err
}

// openSession runs the SCP03 handshake (AmdD 7.1) with the selected SD at
// the strongest level its i allows: keys travel in STORE DATA and PUT KEY,
// and GET STATUS answers need not be read by others. The card cryptogram is
// checked before EXTERNAL AUTHENTICATE is sent: keys that do not match fail
// here, without counting toward the key set's lock. It returns the card's
// INITIALIZE UPDATE data (with the sequence counter).
func (r *run) openSession(ctx context.Context, ks gp.KeySet) (gp.InitUpdateResponse, error) {
	hs, err := gp.NewHostSession(ks, nil)
	if err != nil {
		return gp.InitUpdateResponse{}, err
	}
	iu, err := r.host.InitializeUpdate(ctx, hs)
	if errors.Is(err, gp.ErrCryptogram) {
		return gp.InitUpdateResponse{}, fmt.Errorf("%w: %w", keyport.ErrConflict, err)
	}
	if err != nil {
		return gp.InitUpdateResponse{}, err
	}
	if err := r.host.ExternalAuthenticate(ctx, gp.StrongestLevel(iu.I)); err != nil {
		return gp.InitUpdateResponse{}, err
	}
	return iu, nil
}

// getStatus lists the applications and SSDs (GET STATUS P1 40, GPCS 11.4)
// through the open ISD session.
func (r *run) getStatus(ctx context.Context) (map[keyport.AID]gp.RegistryEntry, error) {
	entries, err := r.host.GetStatus(ctx, gp.StatusApplications)
	if err != nil {
		return nil, err
	}
	out := map[keyport.AID]gp.RegistryEntry{}
	for _, e := range entries {
		out[keyport.AID(strings.ToUpper(hex.EncodeToString(e.AID)))] = e
	}
	return out, nil
}

// putKeys sends one PUT KEY of the generated keys (encrypted under the
// session's DEK by the HSM) replacing key set oldKVN (0: a new one) by
// newKVN, and checks that the card's answer confirms each key's KCV.
func (r *run) putKeys(ctx context.Context, oldKVN, newKVN byte, gen []keyport.GeneratedKey) error {
	pk := gp.PutKey{OldKVN: oldKVN, NewKVN: newKVN, FirstKID: 1}
	for _, g := range gen {
		kc, err := keyComponent(g.UnderDEK, g.KCV)
		if err != nil {
			return err
		}
		pk.Keys = append(pk.Keys, kc)
	}
	cmd, err := pk.Command()
	if err != nil {
		return err
	}
	data, err := r.host.SendOK(ctx, cmd)
	if err != nil {
		return err
	}
	pr, err := gp.ParsePutKeyResponse(data)
	if err != nil {
		return err
	}
	return pr.Confirms(pk)
}
