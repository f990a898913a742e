package gp

import (
	"fmt"
	"strings"
)

// Privileges are the 3 privilege bytes of an application or SD (GPCS 11.1.2,
// Tables 11-7..11-9), byte 1 in the high bits: 0x804000 is SD + AM.
type Privileges uint32

// Privilege bits. Some privileges are combinations: DAP Verification is
// SecurityDomain|0x400000, Delegated Management SecurityDomain|0x200000,
// Mandated DAP Verification SecurityDomain|0x410000 (GPCS Table 11-7).
const (
	PrivSecurityDomain          Privileges = 0x800000
	PrivDAPVerification         Privileges = 0xC00000
	PrivDelegatedManagement     Privileges = 0xA00000
	PrivCardLock                Privileges = 0x100000
	PrivCardTerminate           Privileges = 0x080000
	PrivCardReset               Privileges = 0x040000
	PrivCVMManagement           Privileges = 0x020000
	PrivMandatedDAPVerification Privileges = 0xC10000
	PrivTrustedPath             Privileges = 0x008000
	PrivAuthorizedManagement    Privileges = 0x004000
	PrivTokenVerification       Privileges = 0x002000
	PrivGlobalDelete            Privileges = 0x001000
	PrivGlobalLock              Privileges = 0x000800
	PrivGlobalRegistry          Privileges = 0x000400
	PrivFinalApplication        Privileges = 0x000200
	PrivGlobalService           Privileges = 0x000100
	PrivReceiptGeneration       Privileges = 0x000080
	PrivCipheredLoadFileData    Privileges = 0x000040
	PrivContactlessActivation   Privileges = 0x000020
	PrivContactlessSelfActivate Privileges = 0x000010
)

// privNames names each privilege by its own bit (GPCS Tables 11-7..11-9).
var privNames = []struct {
	bit  Privileges
	name string
}{
	{0x800000, "SecurityDomain"},
	{0x400000, "DAPVerification"},
	{0x200000, "DelegatedManagement"},
	{0x100000, "CardLock"},
	{0x080000, "CardTerminate"},
	{0x040000, "CardReset"},
	{0x020000, "CVMManagement"},
	{0x010000, "MandatedDAPVerification"},
	{0x008000, "TrustedPath"},
	{0x004000, "AuthorizedManagement"},
	{0x002000, "TokenVerification"},
	{0x001000, "GlobalDelete"},
	{0x000800, "GlobalLock"},
	{0x000400, "GlobalRegistry"},
	{0x000200, "FinalApplication"},
	{0x000100, "GlobalService"},
	{0x000080, "ReceiptGeneration"},
	{0x000040, "CipheredLoadFileDataBlock"},
	{0x000020, "ContactlessActivation"},
	{0x000010, "ContactlessSelfActivation"},
}

// ParsePrivileges decodes 1 or 3 privilege bytes (GPCS 11.1.2 allows the
// 1-byte form; bytes 2 and 3 are then zero).
func ParsePrivileges(b []byte) (Privileges, error) {
	switch len(b) {
	case 1:
		return Privileges(b[0]) << 16, nil
	case 3:
		return Privileges(b[0])<<16 | Privileges(b[1])<<8 | Privileges(b[2]), nil
	}
	return 0, malformed("privileges of %d bytes, want 1 or 3", len(b))
}

// Bytes returns the 3 privilege bytes.
func (p Privileges) Bytes() []byte { return []byte{byte(p >> 16), byte(p >> 8), byte(p)} }

// Has reports whether every bit of q is set in p.
func (p Privileges) Has(q Privileges) bool { return p&q == q }

// Names lists the privileges set, one per bit, in table order.
func (p Privileges) Names() []string {
	var out []string
	for _, n := range privNames {
		if p&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	if rest := p &^ 0xFFFFF0; rest != 0 {
		out = append(out, fmt.Sprintf("RFU(%06X)", uint32(rest)))
	}
	return out
}

// String returns the hex bytes and names, e.g. "804000 SecurityDomain+AuthorizedManagement".
func (p Privileges) String() string {
	s := fmt.Sprintf("%06X", uint32(p)&0xFFFFFF)
	if n := p.Names(); len(n) > 0 {
		s += " " + strings.Join(n, "+")
	}
	return s
}

// LifeCycle is a life cycle state byte (GPCS 11.1.1, Tables 11-3..11-6).
// The same byte reads differently for the card, an ELF, an application and
// an SD; String reads it as an application or SD, CardString as the card.
type LifeCycle byte

// Life cycle states.
const (
	LifeCycleLoaded       LifeCycle = 0x01 // ELF
	LifeCycleInstalled    LifeCycle = 0x03 // application, SD
	LifeCycleSelectable   LifeCycle = 0x07 // application, SD
	LifeCyclePersonalized LifeCycle = 0x0F // SD
	LifeCycleLockedBit    LifeCycle = 0x80 // application, SD: b8 set = LOCKED
	CardOPReady           LifeCycle = 0x01
	CardInitialized       LifeCycle = 0x07
	CardSecured           LifeCycle = 0x0F
	CardLocked            LifeCycle = 0x7F
	CardTerminated        LifeCycle = 0xFF
)

// Locked reports an application or SD in LOCKED state: b8 set, the low bits
// keeping the state before the lock (GPCS Table 11-5, PROTOCOLS.md §1.3).
func (l LifeCycle) Locked() bool { return l&LifeCycleLockedBit != 0 }

// Unlocked returns the state the application or SD had before it was locked.
func (l LifeCycle) Unlocked() LifeCycle { return l &^ LifeCycleLockedBit }

// String names an application or SD state, e.g. "0F PERSONALIZED" or
// "87 LOCKED (SELECTABLE)".
func (l LifeCycle) String() string {
	return fmt.Sprintf("%02X %s", byte(l), l.name())
}

func (l LifeCycle) name() string {
	if l.Locked() {
		return "LOCKED (" + l.Unlocked().name() + ")"
	}
	switch l {
	case LifeCycleLoaded:
		return "LOADED"
	case LifeCycleInstalled:
		return "INSTALLED"
	case LifeCycleSelectable:
		return "SELECTABLE"
	case LifeCyclePersonalized:
		return "PERSONALIZED"
	}
	if l&0x07 == 0x07 {
		return "SELECTABLE, application-specific"
	}
	return "unknown"
}

// CardString names the card (ISD) life cycle state, e.g. "0F SECURED".
func (l LifeCycle) CardString() string {
	n := map[LifeCycle]string{CardOPReady: "OP_READY", CardInitialized: "INITIALIZED", CardSecured: "SECURED",
		CardLocked: "CARD_LOCKED", CardTerminated: "TERMINATED"}[l]
	if n == "" {
		n = "unknown"
	}
	return fmt.Sprintf("%02X %s", byte(l), n)
}

// RegistryEntry is one GlobalPlatform registry entry of a GET STATUS answer
// in TLV format (GPCS 11.4.3.2, Table 11-36): E3 { 4F AID, 9F70 life cycle,
// C5 privileges, CF implicit selection, C4 ELF AID, CE ELF version,
// 84 module AID, CC associated SD AID }.
type RegistryEntry struct {
	AID        []byte
	LifeCycle  LifeCycle
	Privileges Privileges
	// ImplicitSelection holds the CF parameters (one byte each).
	ImplicitSelection []byte
	LoadFileAID       []byte
	LoadFileVersion   []byte
	Modules           [][]byte
	SecurityDomain    []byte
}

// ParseGetStatus decodes the data of a GET STATUS response in TLV format: a
// sequence of E3 entries. Unknown tags inside an entry (such as the EA
// TS 102 226 template) are skipped. After SW 6310 the caller sends
// GetStatus(p1, true, aid) and parses the next page the same way.
func ParseGetStatus(data []byte) ([]RegistryEntry, error) {
	tlvs, err := ParseAllTLV(data)
	if err != nil {
		return nil, fmt.Errorf("gp: GET STATUS response: %w", err)
	}
	out := make([]RegistryEntry, 0, len(tlvs))
	for i, t := range tlvs {
		if t.Tag != 0xE3 {
			return nil, malformed("GET STATUS entry %d has tag %s, want E3", i, t.Tag)
		}
		fields, err := t.Children()
		if err != nil {
			return nil, fmt.Errorf("gp: GET STATUS entry %d: %w", i, err)
		}
		var e RegistryEntry
		for _, f := range fields {
			switch f.Tag {
			case 0x4F:
				e.AID = f.Value
			case 0x9F70:
				// One byte per GPCS; some cards send 2 (kaoh trace: 07 00).
				if len(f.Value) == 0 {
					return nil, malformed("GET STATUS entry %d: empty life cycle", i)
				}
				e.LifeCycle = LifeCycle(f.Value[0])
			case 0xC5:
				if e.Privileges, err = ParsePrivileges(f.Value); err != nil {
					return nil, fmt.Errorf("gp: GET STATUS entry %d: %w", i, err)
				}
			case 0xCF:
				e.ImplicitSelection = append(e.ImplicitSelection, f.Value...)
			case 0xC4:
				e.LoadFileAID = f.Value
			case 0xCE:
				e.LoadFileVersion = f.Value
			case 0x84:
				e.Modules = append(e.Modules, f.Value)
			case 0xCC:
				e.SecurityDomain = f.Value
			}
		}
		if e.AID == nil {
			return nil, malformed("GET STATUS entry %d has no AID (4F)", i)
		}
		out = append(out, e)
	}
	return out, nil
}

// Bytes encodes the entry as an E3 template, in the Table 11-36 order, for a
// card answering GET STATUS.
func (e RegistryEntry) Bytes() []byte {
	var v []byte
	v = append(v, Encode(0x4F, e.AID)...)
	v = append(v, Encode(0x9F70, []byte{byte(e.LifeCycle)})...)
	v = append(v, Encode(0xC5, e.Privileges.Bytes())...)
	for _, c := range e.ImplicitSelection {
		v = append(v, Encode(0xCF, []byte{c})...)
	}
	if e.LoadFileAID != nil {
		v = append(v, Encode(0xC4, e.LoadFileAID)...)
	}
	if e.LoadFileVersion != nil {
		v = append(v, Encode(0xCE, e.LoadFileVersion)...)
	}
	for _, m := range e.Modules {
		v = append(v, Encode(0x84, m)...)
	}
	if e.SecurityDomain != nil {
		v = append(v, Encode(0xCC, e.SecurityDomain)...)
	}
	return Encode(0xE3, v)
}
