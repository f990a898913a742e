package vcard

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Life-cycle state codings (GPCS 2.3.1 §11.1.1, PROTOCOLS.md §1.3).
const (
	// Card (ISD) life-cycle states.
	CardOPReady     byte = 0x01
	CardInitialized byte = 0x07
	CardSecured     byte = 0x0F
	CardLocked      byte = 0x7F
	CardTerminated  byte = 0xFF

	// Application and security-domain states.
	AppInstalled   byte = 0x03
	AppSelectable  byte = 0x07
	SDPersonalized byte = 0x0F
	// LockedBit marks an application or SD as LOCKED; the low bits keep the
	// state it had before the lock (GPCS Table 11-5).
	LockedBit byte = 0x80
)

// Privilege bits, first byte unless noted (GPCS Tables 11-7..11-9).
const (
	privSecurityDomain  = 0x80 // byte 1
	privAuthorizedMgmt  = 0x40 // byte 2
	privGlobalLock      = 0x08 // byte 2
	privGlobalDelete    = 0x10 // byte 2
	keyTypeAES          = 0x88 // GPCS Table 11-16
	stateFormatVersion  = 1
	maxSequenceCounter  = 0xFFFFFF
	defaultSCPParameter = 0x70 // SCP03 i=70: pseudo-random challenge, R-MAC, R-ENC
)

// Well-known AIDs.
var (
	// ISDAID is the default Issuer Security Domain AID (GPCS H.1.3).
	ISDAID = mustHex("A000000151000000")
	// ARAMAID is the GP Access Rule Application master (PROTOCOLS.md §4).
	ARAMAID = mustHex("A00000015141434C00")
	// ISDRAID is the ISD-R AID that answers the EID request (SGP.22, PROTOCOLS.md §5).
	ISDRAID = mustHex("A0000005591010FFFFFFFF8900000100")
	// DefaultKey is the well-known GP test key 40 41 … 4F, used for ENC, MAC
	// and DEK of the ISD's key set until it is personalized.
	DefaultKey = mustHex("404142434445464748494A4B4C4D4E4F")
)

// DefaultKVN is the key version number of the ISD's initial SCP03 key set.
const DefaultKVN = 0x30

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// hexBytes is stored as upper-case hex in the state file.
type hexBytes []byte

func (h hexBytes) MarshalJSON() ([]byte, error) {
	return json.Marshal(fmt.Sprintf("%X", []byte(h)))
}

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return err
	}
	*h = v
	return nil
}

// state is everything a card keeps across power cycles: what the state file
// holds. Session state (selection, secure channel) is not part of it.
type state struct {
	Version int    `json:"version"`
	EID     string `json:"eid"`
	// CPLC is the 42-byte Card Production Life Cycle data (GET DATA 9F7F).
	CPLC    hexBytes `json:"cplc"`
	CardLCS byte     `json:"card_lcs"`
	// Apps is the GP registry in installation order; Apps[0] is the ISD.
	Apps []*app `json:"apps"`
	// Rules holds the ARA-M REF-AR-DOs ('E2' TLVs), in storage order.
	Rules []hexBytes `json:"ara_rules,omitempty"`
	// RefreshTag changes whenever the rules change (GPD SEAC, DF20).
	RefreshTag hexBytes `json:"ara_refresh_tag,omitempty"`
}

// app is one registry entry: the ISD, an SSD or an application.
type app struct {
	AID    hexBytes `json:"aid"`
	ELF    hexBytes `json:"elf,omitempty"`
	Module hexBytes `json:"module,omitempty"`
	LCS    byte     `json:"lcs"`
	// Privileges are the 3 privilege bytes (GPCS Table 11-7).
	Privileges hexBytes `json:"privileges"`
	// SD is the AID of the associated security domain (the ISD for itself).
	SD            hexBytes `json:"sd"`
	InstallParams hexBytes `json:"install_params,omitempty"`
	// SCPi is the SCP03 "i" parameter of a security domain (Amd D Table 5-1).
	SCPi    byte      `json:"scp_i,omitempty"`
	KeySets []*keySet `json:"key_sets,omitempty"`
	// OTA holds the ISD's TS 102 225 key sets (KIc, KID, counter) for
	// SCP80 secured packets (ota.go).
	OTA []*otaKeySet `json:"ota_key_sets,omitempty"`
	// Data holds BER-TLV data objects stored with STORE DATA, by tag (hex).
	Data map[string]hexBytes `json:"data,omitempty"`
	// Objects holds an SSD's provider data objects (gp/dataobj.go) by DGI
	// number in hex, stored and read at level 33 only (dataobj.go).
	Objects map[string]hexBytes `json:"provider_data,omitempty"`
}

// keySet is one SCP03 key set of a security domain.
type keySet struct {
	KVN  byte   `json:"kvn"`
	Keys []*key `json:"keys"`
	// Counter is the SCP03 sequence counter (Amd D 6.2.2.1: one per key set).
	Counter uint32 `json:"counter"`
	// Failures counts consecutive failed EXTERNAL AUTHENTICATEs.
	Failures int `json:"failures"`
}

// key is one secure channel key. The state file is a test card's memory: it
// holds keys in the clear and must not be logged or shared.
type key struct {
	ID    byte     `json:"id"`
	Type  byte     `json:"type"`
	Value hexBytes `json:"value"`
}

func (a *app) isSD() bool { return len(a.Privileges) > 0 && a.Privileges[0]&privSecurityDomain != 0 }

func (a *app) locked() bool { return a.LCS&LockedBit != 0 }

func (a *app) priv(byteIdx int, mask byte) bool {
	return len(a.Privileges) > byteIdx && a.Privileges[byteIdx]&mask == mask
}

func (a *app) keySet(kvn byte) *keySet {
	for _, ks := range a.KeySets {
		if ks.KVN == kvn {
			return ks
		}
	}
	return nil
}

func (ks *keySet) key(id byte) *key {
	for _, k := range ks.Keys {
		if k.ID == id {
			return k
		}
	}
	return nil
}

// complete reports whether the key set holds ENC, MAC and DEK AES keys of one
// length (Amd D 6.1).
func (ks *keySet) complete() bool {
	n := -1
	for id := byte(1); id <= 3; id++ {
		k := ks.key(id)
		if k == nil || k.Type != keyTypeAES {
			return false
		}
		if n >= 0 && len(k.Value) != n {
			return false
		}
		n = len(k.Value)
	}
	return true
}

func (s *state) find(aid []byte) *app {
	for _, a := range s.Apps {
		if string(a.AID) == string(aid) {
			return a
		}
	}
	return nil
}

func (s *state) isd() *app { return s.Apps[0] }

// validate checks the invariants Process relies on, so that a hand-edited or
// foreign state file fails at load time rather than mid-session.
func (s *state) validate() error {
	if s.Version != stateFormatVersion {
		return fmt.Errorf("unsupported state version %d", s.Version)
	}
	if len(s.Apps) == 0 || !s.Apps[0].isSD() {
		return errors.New("registry has no issuer security domain")
	}
	if len(s.CPLC) != 42 {
		return errors.New("CPLC must be 42 bytes")
	}
	for _, a := range s.Apps {
		if len(a.AID) < 5 || len(a.AID) > 16 || len(a.Privileges) != 3 {
			return fmt.Errorf("bad registry entry %X", []byte(a.AID))
		}
		if err := validOTAKeySets(a); err != nil {
			return fmt.Errorf("%X: %w", []byte(a.AID), err)
		}
		for _, ks := range a.KeySets {
			for _, k := range ks.Keys {
				if n := len(k.Value); k.Type == keyTypeAES && n != 16 && n != 24 && n != 32 {
					return fmt.Errorf("bad key length in %X", []byte(a.AID))
				}
			}
		}
	}
	return nil
}

func encodeState(s *state) ([]byte, error) {
	return json.MarshalIndent(s, "", " ")
}

func decodeState(b []byte) (*state, error) {
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// writeFileAtomic replaces path with data so that a crash at any moment
// leaves either the old or the new content: write a temporary file in the
// same directory, fsync it, rename it over path, then fsync the directory so
// the rename itself is durable (rename(2) is atomic within a file system).
func writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err = f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err = f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
