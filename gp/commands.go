package gp

import "fmt"

// Instruction bytes of the GlobalPlatform commands (GPCS Table 11-1, AmdD 7.1).
const (
	INSDelete               byte = 0xE4
	INSExternalAuthenticate byte = 0x82
	INSGetData              byte = 0xCA
	INSGetStatus            byte = 0xF2
	INSInitializeUpdate     byte = 0x50
	INSInstall              byte = 0xE6
	INSPutKey               byte = 0xD8
	INSSelect               byte = 0xA4
	INSSetStatus            byte = 0xF0
	INSStoreData            byte = 0xE2
)

// CLAGP is the class of GP commands on the basic channel without secure
// messaging (GPCS 11.1.4); HostSession.Wrap sets the SM bit (84).
const CLAGP byte = 0x80

// Select builds SELECT by AID, first or only occurrence: 00 A4 04 00 Lc AID 00
// (GPCS 11.9, ISO 7816-4 11.1.1). An empty AID selects the ISD (GPCS 7.1.1).
func Select(aid []byte) Command {
	return Command{CLA: 0x00, INS: INSSelect, P1: 0x04, P2: 0x00, Data: clone(aid), Ne: MaxShortNe}
}

// InitializeUpdate builds INITIALIZE UPDATE: 80 50 KVN 00 Lc host-challenge
// 00 (AmdD 7.1.1, GPCS D.4.1). KVN 00 selects the first available key set.
func InitializeUpdate(kvn byte, hostChallenge []byte) Command {
	return Command{CLA: CLAGP, INS: INSInitializeUpdate, P1: kvn, P2: 0x00, Data: clone(hostChallenge), Ne: MaxShortNe}
}

// INSTALL P1 bits (GPCS Table 11-41). "Install and make selectable" is
// InstallForInstall|InstallForMakeSelectable (0C).
const (
	InstallForLoad            byte = 0x02
	InstallForInstall         byte = 0x04
	InstallForMakeSelectable  byte = 0x08
	InstallForExtradition     byte = 0x10
	InstallForPersonalization byte = 0x20
	InstallForRegistryUpdate  byte = 0x40
	InstallMoreCommands       byte = 0x80
)

// Install is one INSTALL command (GPCS 11.5). Every variant has the same six
// fields in the same order, empty ones encoded as a zero length (GPCS Tables
// 11-43..11-48):
//
//	for install:         ELF AID, module AID, application AID, privileges, params, token
//	for make selectable: -, -, application AID, privileges, params, token
//	for extradition:     SD AID, -, application/ELF AID, -, params, token
//	for personalization: -, -, application AID, -, -, -
type Install struct {
	P1 byte
	// LoadFileAID is the ELF AID (for install) or the target SD's AID (for
	// extradition).
	LoadFileAID []byte
	ModuleAID   []byte
	AID         []byte
	// Privileges are 1 or 3 bytes (GPCS 11.1.2); see Privileges.Bytes.
	Privileges []byte
	// Params are the encoded install parameters, e.g. InstallParams.Bytes.
	Params []byte
	Token  []byte
}

// InstallForInstallCmd builds INSTALL [for install], and [and make
// selectable] when selectable is set (P1 0C), with no token.
func InstallForInstallCmd(elf, module, aid []byte, priv Privileges, params []byte, selectable bool) Command {
	p1 := InstallForInstall
	if selectable {
		p1 |= InstallForMakeSelectable
	}
	return Install{P1: p1, LoadFileAID: elf, ModuleAID: module, AID: aid, Privileges: priv.Bytes(), Params: params}.Command()
}

// InstallForPersonalizationCmd builds INSTALL [for personalization]: the
// STORE DATA commands that follow go to the application (GPCS 11.5.2.3.5).
func InstallForPersonalizationCmd(aid []byte) Command {
	return Install{P1: InstallForPersonalization, AID: aid}.Command()
}

// InstallForExtraditionCmd builds INSTALL [for extradition] of aid to the
// security domain sd (GPCS 11.5.2.3.4). An SD extradited to itself becomes
// the root of its own hierarchy (GPCS 7.2).
func InstallForExtraditionCmd(sd, aid []byte) Command {
	return Install{P1: InstallForExtradition, LoadFileAID: sd, AID: aid}.Command()
}

// Command encodes the INSTALL command: 80 E6 P1 00 Lc data 00. AIDs and
// privileges take 1-byte lengths, params and token BER lengths (GPCS 11.5.2.3).
func (in Install) Command() Command {
	var d []byte
	for _, f := range [][]byte{in.LoadFileAID, in.ModuleAID, in.AID, in.Privileges} {
		d = append(d, byte(len(f)))
		d = append(d, f...)
	}
	d = append(d, EncodeLength(len(in.Params))...)
	d = append(d, in.Params...)
	d = append(d, EncodeLength(len(in.Token))...)
	d = append(d, in.Token...)
	return Command{CLA: CLAGP, INS: INSInstall, P1: in.P1, P2: 0x00, Data: d, Ne: MaxShortNe}
}

// ParseInstall decodes the data field of an INSTALL command with P1 p1.
// Fields alias data.
func ParseInstall(p1 byte, data []byte) (Install, error) {
	in := Install{P1: p1}
	b := data
	for i, dst := range []*[]byte{&in.LoadFileAID, &in.ModuleAID, &in.AID, &in.Privileges} {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return Install{}, truncated("INSTALL field %d", i+1)
		}
		if b[0] > 0 {
			*dst = b[1 : 1+int(b[0]) : 1+int(b[0])]
		}
		b = b[1+int(b[0]):]
	}
	for _, dst := range []*[]byte{&in.Params, &in.Token} {
		n, k, err := parseLength(b)
		if err != nil {
			return Install{}, fmt.Errorf("gp: INSTALL params/token: %w", err)
		}
		if n > 0 {
			*dst = b[k : k+n : k+n]
		}
		b = b[k+n:]
	}
	if len(b) != 0 {
		return Install{}, malformed("INSTALL data has %d trailing bytes", len(b))
	}
	return in, nil
}

// parseLength decodes a BER length at the start of b (definite forms only)
// and checks that n bytes follow it; k is the size of the length field.
func parseLength(b []byte) (n, k int, err error) {
	if len(b) == 0 {
		return 0, 0, truncated("length missing")
	}
	switch {
	case b[0] < 0x80:
		n, k = int(b[0]), 1
	case b[0] >= 0x81 && b[0] <= 0x83:
		k = 1 + int(b[0]&0x7F)
		if len(b) < k {
			return 0, 0, truncated("length field of %d bytes", k)
		}
		for _, x := range b[1:k] {
			n = n<<8 | int(x)
		}
	default:
		return 0, 0, malformed("length byte %02X", b[0])
	}
	if n > len(b)-k {
		return 0, 0, truncated("length %d exceeds %d remaining bytes", n, len(b)-k)
	}
	return n, k, nil
}

// InstallParams are the install parameters (GPCS Table 11-49): C9 is always
// present (C9 00 when empty); EF carries system parameters; EA the TS 102 226
// UICC template.
type InstallParams struct {
	// AppSpecific is the C9 value. For a security domain it is itself BER-TLV,
	// e.g. SCPParam(0x03, 0x70).
	AppSpecific []byte
	// NonVolatileQuota (C8) and VolatileQuota (C7) are 2-byte quotas inside
	// EF; 0 leaves them out.
	NonVolatileQuota, VolatileQuota int
	// TS102226 is the CA value inside EF (ETSI TS 102 226 8.2.1.3.2.1).
	TS102226 []byte
	// UICC is the EA value (UICC-specific parameters, TS 102 226).
	UICC []byte
}

// Bytes encodes the parameters in the order C9, EF{C8, C7, CA}, EA (the
// order pySim's gen_install_parameters produces).
func (p InstallParams) Bytes() []byte {
	out := Encode(0xC9, p.AppSpecific)
	var ef []byte
	if p.NonVolatileQuota > 0 {
		ef = append(ef, Encode(0xC8, []byte{byte(p.NonVolatileQuota >> 8), byte(p.NonVolatileQuota)})...)
	}
	if p.VolatileQuota > 0 {
		ef = append(ef, Encode(0xC7, []byte{byte(p.VolatileQuota >> 8), byte(p.VolatileQuota)})...)
	}
	if p.TS102226 != nil {
		ef = append(ef, Encode(0xCA, p.TS102226)...)
	}
	if ef != nil {
		out = append(out, Encode(0xEF, ef)...)
	}
	if p.UICC != nil {
		out = append(out, Encode(0xEA, p.UICC)...)
	}
	return out
}

// ParseInstallParams decodes install parameters; unknown tags are ignored.
func ParseInstallParams(b []byte) (InstallParams, error) {
	tlvs, err := ParseAllTLV(b)
	if err != nil {
		return InstallParams{}, err
	}
	var p InstallParams
	c9, ok := Find(tlvs, 0xC9)
	if !ok {
		return InstallParams{}, malformed("install parameters lack C9")
	}
	p.AppSpecific = c9.Value
	if ea, ok := Find(tlvs, 0xEA); ok {
		p.UICC = ea.Value
	}
	if ef, ok := Find(tlvs, 0xEF); ok {
		sys, err := ef.Children()
		if err != nil {
			return InstallParams{}, err
		}
		for _, t := range sys {
			switch t.Tag {
			case 0xC7, 0xC8:
				q := 0
				for _, x := range t.Value {
					q = q<<8 | int(x)
				}
				if len(t.Value) > 4 {
					return InstallParams{}, malformed("quota %s of %d bytes", t.Tag, len(t.Value))
				}
				if t.Tag == 0xC7 {
					p.VolatileQuota = q
				} else {
					p.NonVolatileQuota = q
				}
			case 0xCA:
				p.TS102226 = t.Value
			}
		}
	}
	return p, nil
}

// SCPParam returns the SD install parameter 81 02 <scp> <i> that selects the
// secure channel protocol of a new security domain, e.g. 81 02 03 70 for
// SCP03 i=70 (GP UICC Configuration 4.3.2, PROTOCOLS.md §1.4).
func SCPParam(scp, i byte) []byte { return []byte{0x81, 0x02, scp, i} }

// STORE DATA P1 bits (GPCS Table 11-89).
const (
	StoreDataLast      byte = 0x80 // b8: last block
	StoreDataEncrypted byte = 0x60 // b7b6 = 11: encrypted data
	StoreDataBERTLV    byte = 0x10 // b5b4 = 10: BER-TLV structure
	StoreDataDGI       byte = 0x08 // b5b4 = 01: DGI structure
	StoreDataCase4     byte = 0x01 // b1: response data expected
)

// StoreData builds STORE DATA: 80 E2 P1 block Lc data [00] (GPCS 11.11). Le
// 00 is sent when P1 b1 announces a case-4 command.
func StoreData(p1, block byte, data []byte) Command {
	c := Command{CLA: CLAGP, INS: INSStoreData, P1: p1, P2: block, Data: clone(data)}
	if p1&StoreDataCase4 != 0 {
		c.Ne = MaxShortNe
	}
	return c
}

// DGI is one Data Grouping Identifier block of STORE DATA (GPCS 11.11.2.2):
// a 2-byte tag and a length of 1 byte, or FF and 2 bytes from 255 on.
type DGI struct {
	Tag  uint16
	Data []byte
}

// MaxDGIData is the most data one DGI carries: its longest length field is
// FF and two bytes (GPCS 11.11.2.2).
const MaxDGIData = 0xFFFF

// Bytes encodes the DGI. It panics when Data is longer than MaxDGIData,
// which no length field can say: callers split larger data first (every
// caller in keyport holds less, bounded by an APDU or MaxDataObject).
func (d DGI) Bytes() []byte {
	if len(d.Data) > MaxDGIData {
		// No length field can say it: writing the low 16 bits would
		// make the card read another DGI from the rest of the data.
		panic(fmt.Sprintf("gp: DGI %04X: %d bytes of data, more than the %d a DGI length can say", d.Tag, len(d.Data), MaxDGIData))
	}
	out := []byte{byte(d.Tag >> 8), byte(d.Tag)}
	if len(d.Data) < 0xFF {
		out = append(out, byte(len(d.Data)))
	} else {
		out = append(out, 0xFF, byte(len(d.Data)>>8), byte(len(d.Data)))
	}
	return append(out, d.Data...)
}

// ParseDGIs decodes a sequence of DGIs. Data aliases b.
func ParseDGIs(b []byte) ([]DGI, error) {
	var out []DGI
	for len(b) > 0 {
		if len(b) < 3 {
			return nil, truncated("DGI header of %d bytes", len(b))
		}
		d := DGI{Tag: uint16(b[0])<<8 | uint16(b[1])}
		n, k := int(b[2]), 3
		if b[2] == 0xFF {
			if len(b) < 5 {
				return nil, truncated("DGI %04X: 3-byte length", d.Tag)
			}
			n, k = int(b[3])<<8|int(b[4]), 5
		}
		if n > len(b)-k {
			return nil, truncated("DGI %04X: length %d exceeds %d remaining bytes", d.Tag, n, len(b)-k)
		}
		d.Data = b[k : k+n : k+n]
		out = append(out, d)
		b = b[k+n:]
	}
	return out, nil
}

// GET STATUS P1 values (GPCS Table 11-33) and P2 values (Table 11-34).
const (
	StatusISD              byte = 0x80
	StatusApplications     byte = 0x40 // applications and supplementary SDs
	StatusLoadFiles        byte = 0x20
	StatusLoadFilesModules byte = 0x10
	StatusFirstTLV         byte = 0x02 // P2: first or all occurrences, TLV format
	StatusNextTLV          byte = 0x03 // P2: next occurrences, after 6310
)

// GetStatus builds GET STATUS: 80 F2 P1 P2 Lc 4F L searchAID 00 (GPCS 11.4).
// next asks for the entries after a 6310 answer; the card wants the same
// search criteria again (PROTOCOLS.md §1.4).
func GetStatus(p1 byte, next bool, searchAID []byte) Command {
	p2 := StatusFirstTLV
	if next {
		p2 = StatusNextTLV
	}
	return Command{CLA: CLAGP, INS: INSGetStatus, P1: p1, P2: p2, Data: Encode(0x4F, searchAID), Ne: MaxShortNe}
}

// GET DATA tags keyport reads (GPCS 11.3, H.2, H.4; TS 102 226).
const (
	DataCPLC                  uint16 = 0x9F7F
	DataKeyInformation        uint16 = 0x00E0
	DataCardRecognition       uint16 = 0x0066
	DataCardCapabilities      uint16 = 0x0067
	DataSequenceCounter       uint16 = 0x00C1
	DataIIN                   uint16 = 0x0042
	DataCIN                   uint16 = 0x0045
	DataExtendedCardResources uint16 = 0xFF21
	DataAccessRulesAll        uint16 = 0xFF40 // ARA-M GET DATA [All]
)

// GetData builds GET DATA: 80 CA tag(2) 00 (GPCS 11.3).
func GetData(tag uint16) Command {
	return Command{CLA: CLAGP, INS: INSGetData, P1: byte(tag >> 8), P2: byte(tag), Ne: MaxShortNe}
}

// Delete builds DELETE of an application, SD or ELF: 80 E4 00 P2 Lc 4F L AID
// 00, P2 80 also deleting related objects (GPCS 11.2, Tables 11-20..11-23).
func Delete(aid []byte, related bool) Command {
	var p2 byte
	if related {
		p2 = 0x80
	}
	return Command{CLA: CLAGP, INS: INSDelete, P1: 0x00, P2: p2, Data: Encode(0x4F, aid), Ne: MaxShortNe}
}

// DeleteKey builds DELETE of keys by key identifier D0 and/or key version
// D2 (GPCS Table 11-24); a zero value is left out.
func DeleteKey(kid, kvn byte) Command {
	var d []byte
	if kid != 0 {
		d = append(d, 0xD0, 0x01, kid)
	}
	if kvn != 0 {
		d = append(d, 0xD2, 0x01, kvn)
	}
	return Command{CLA: CLAGP, INS: INSDelete, P1: 0x00, P2: 0x00, Data: d, Ne: MaxShortNe}
}

// SET STATUS P1 values (GPCS Table 11-85).
const (
	SetStatusCard         byte = 0x80 // ISD / card life cycle
	SetStatusApplication  byte = 0x40 // application or SSD
	SetStatusSDWithApps   byte = 0x60 // SD and its associated applications
	SetStatusLock         byte = 0x80 // P2 b8 for an application or SSD
	SetStatusPersonalized byte = 0x0F // P2 for an SD setting itself PERSONALIZED
)

// SetStatus builds SET STATUS: 80 F0 P1 P2 Lc AID (GPCS 11.10). For the card
// (no AID) it sends 80 F0 80 P2 00: GPCS Table 11-85 reads the last byte as
// an empty Lc, ISO 7816-4 as Le; cards accept either reading.
func SetStatus(p1, p2 byte, aid []byte) Command {
	c := Command{CLA: CLAGP, INS: INSSetStatus, P1: p1, P2: p2, Data: clone(aid)}
	if len(aid) == 0 {
		c.Ne = MaxShortNe
	}
	return c
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
