package gp

import "fmt"

// ARAMAID is the AID of the GP SE Access Control rule applet, ARA-M
// (PROTOCOLS.md §4).
var ARAMAID = []byte{0xA0, 0x00, 0x00, 0x01, 0x51, 0x41, 0x43, 0x4C, 0x00}

// AccessRule is one REF-AR-DO of GP SE Access Control (PROTOCOLS.md §4):
//
//	E2 { E1 { 4F AID | C0 00, C1 hash, [CA package] }, E3 { [D0 APDU], [D1 NFC], [DB perm] } }
//
// A nil field is left out; an empty non-nil field is encoded with length 0
// (4F 00: all applications; C1 00: all device apps).
type AccessRule struct {
	// AID is the AID-REF-DO (4F). Ignored when Implicit is set.
	AID []byte
	// Implicit encodes C0 00: the implicitly selected application.
	Implicit bool
	// DeviceAppID is the SHA-1 (20 bytes) or SHA-256 (32 bytes) of the
	// device application's signing certificate (C1).
	DeviceAppID []byte
	// Package is the Android package name (CA), an Android extension.
	Package string
	// APDU is the APDU-AR-DO value (D0): 00 never, 01 always, or filters of
	// header(4) ‖ mask(4).
	APDU []byte
	// NFC is the NFC-AR-DO value (D1): 00 or 01.
	NFC []byte
	// Perm is the 8-byte Android carrier privilege PERM-AR-DO (DB).
	Perm []byte
}

// Bytes encodes the rule as a REF-AR-DO (E2).
func (r AccessRule) Bytes() []byte {
	var ref []byte
	switch {
	case r.Implicit:
		ref = append(ref, 0xC0, 0x00)
	case r.AID != nil:
		ref = append(ref, Encode(0x4F, r.AID)...)
	}
	if r.DeviceAppID != nil {
		ref = append(ref, Encode(0xC1, r.DeviceAppID)...)
	}
	if r.Package != "" {
		ref = append(ref, Encode(0xCA, []byte(r.Package))...)
	}
	var ar []byte
	for _, f := range []struct {
		t Tag
		v []byte
	}{{0xD0, r.APDU}, {0xD1, r.NFC}, {0xDB, r.Perm}} {
		if f.v != nil {
			ar = append(ar, Encode(f.t, f.v)...)
		}
	}
	return Encode(0xE2, Encode(0xE1, ref), Encode(0xE3, ar))
}

// StoreAccessRule builds the ARA-M STORE DATA Command-Store-REF-AR-DO:
// 80 E2 90 00 Lc F0 { E2 … } (PROTOCOLS.md §4).
func StoreAccessRule(r AccessRule) Command {
	return StoreData(StoreDataLast|StoreDataBERTLV, 0x00, Encode(0xF0, r.Bytes()))
}

// DeleteAllAccessRules builds the ARA-M Command-Delete of every rule:
// 80 E2 90 00 02 F1 00.
func DeleteAllAccessRules() Command {
	return StoreData(StoreDataLast|StoreDataBERTLV, 0x00, []byte{0xF1, 0x00})
}

// ParseAccessRules decodes REF-AR-DOs: a GET DATA FF40 answer (FF40 L E2…),
// a STORE DATA F0 command, or bare E2 objects.
func ParseAccessRules(b []byte) ([]AccessRule, error) {
	tlvs, err := ParseAllTLV(b)
	if err != nil {
		return nil, fmt.Errorf("gp: access rules: %w", err)
	}
	if len(tlvs) == 1 && (tlvs[0].Tag == 0xFF40 || tlvs[0].Tag == 0xF0) {
		if tlvs, err = tlvs[0].Children(); err != nil {
			return nil, fmt.Errorf("gp: access rules: %w", err)
		}
	}
	var out []AccessRule
	for i, t := range tlvs {
		if t.Tag != 0xE2 {
			return nil, malformed("access rule %d has tag %s, want E2", i, t.Tag)
		}
		r, err := parseRefArDo(t)
		if err != nil {
			return nil, fmt.Errorf("gp: access rule %d: %w", i, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func parseRefArDo(t TLV) (AccessRule, error) {
	var r AccessRule
	parts, err := t.Children()
	if err != nil {
		return r, err
	}
	ref, ok := Find(parts, 0xE1)
	if !ok {
		return r, malformed("REF-AR-DO lacks REF-DO E1")
	}
	refs, err := ref.Children()
	if err != nil {
		return r, err
	}
	for _, f := range refs {
		switch f.Tag {
		case 0x4F:
			r.AID = append([]byte{}, f.Value...)
		case 0xC0:
			r.Implicit = true
		case 0xC1:
			r.DeviceAppID = append([]byte{}, f.Value...)
		case 0xCA:
			r.Package = string(f.Value)
		}
	}
	if ar, ok := Find(parts, 0xE3); ok {
		ars, err := ar.Children()
		if err != nil {
			return r, err
		}
		for _, f := range ars {
			switch f.Tag {
			case 0xD0:
				r.APDU = append([]byte{}, f.Value...)
			case 0xD1:
				r.NFC = append([]byte{}, f.Value...)
			case 0xDB:
				r.Perm = append([]byte{}, f.Value...)
			}
		}
	}
	return r, nil
}
