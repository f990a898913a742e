package gp

import (
	"context"
	"fmt"
)

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
	return Encode(0xE2, r.RefDO(), r.arDO())
}

// RefDO encodes the rule's REF-DO (E1): which applet and which device
// application it is about.
func (r AccessRule) RefDO() []byte {
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
	return Encode(0xE1, ref)
}

func (r AccessRule) arDO() []byte {
	var ar []byte
	for _, f := range []struct {
		t Tag
		v []byte
	}{{0xD0, r.APDU}, {0xD1, r.NFC}, {0xDB, r.Perm}} {
		if f.v != nil {
			ar = append(ar, Encode(f.t, f.v)...)
		}
	}
	return Encode(0xE3, ar)
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

// DeleteAccessRule builds the ARA-M Command-Delete of the rule with r's
// REF-DO: 80 E2 90 00 Lc F1 { E1 … } (PROTOCOLS.md §4).
func DeleteAccessRule(r AccessRule) Command {
	return StoreData(StoreDataLast|StoreDataBERTLV, 0x00, Encode(0xF1, r.RefDO()))
}

// DeleteAccessRulesOf builds the ARA-M Command-Delete of every rule for
// the application aid: 80 E2 90 00 Lc F1 { 4F aid } (PROTOCOLS.md §4).
func DeleteAccessRulesOf(aid []byte) Command {
	return StoreData(StoreDataLast|StoreDataBERTLV, 0x00, Encode(0xF1, Encode(0x4F, aid)))
}

// AccessRulesSize returns the encoded size of the FF40 object a GET DATA
// All answer starts (tag, BER length, value): how many bytes Get-Next
// (FF60) answers must bring in all. At most MaxAccessRulesLength.
func AccessRulesSize(first []byte) (int, error) { return accessRulesLength(first) }

// ARA-M GET DATA tags besides DataAccessRulesAll (PROTOCOLS.md §4).
const (
	DataAccessRulesNext uint16 = 0xFF60 // Get-Next: the rest of a Get-All answer
	DataRefreshTag      uint16 = 0xDF20 // 8 bytes that change with every rule update
)

// MaxAccessRulesLength bounds the FF40 object AccessRules accepts, so that
// an ARA-M announcing a huge rule set cannot make the host read forever.
const MaxAccessRulesLength = 1 << 16

// AccessRules reads every rule of the selected ARA-M: GET DATA All (FF40),
// whose first answer announces the length of the FF40 object, then GET
// DATA Next (FF60) until all of it has arrived (GPD SEAC; PROTOCOLS.md §4).
// An ARA-M without rules answers FF40 00, or 6A88: an empty list.
func (h *Host) AccessRules(ctx context.Context) ([]AccessRule, error) {
	resp, err := h.Send(ctx, GetData(DataAccessRulesAll))
	if err != nil {
		return nil, err
	}
	if resp.SW == SWReferencedDataNotFound {
		return nil, nil
	}
	if resp.SW != SWOK {
		return nil, &SWError{SW: resp.SW, Op: "GET DATA FF40"}
	}
	all := clone(resp.Data)
	total, err := accessRulesLength(all)
	if err != nil {
		return nil, err
	}
	for len(all) < total {
		resp, err := h.Send(ctx, GetData(DataAccessRulesNext))
		if err != nil {
			return nil, err
		}
		if resp.SW != SWOK {
			return nil, &SWError{SW: resp.SW, Op: "GET DATA FF60"}
		}
		if len(resp.Data) == 0 {
			return nil, malformed("ARA-M Get-Next answered no data with %d of %d bytes read", len(all), total)
		}
		all = append(all, resp.Data...)
	}
	if len(all) != total {
		return nil, malformed("ARA-M sent %d bytes of rules, its FF40 announced %d", len(all), total)
	}
	return ParseAccessRules(all)
}

// accessRulesLength returns the encoded size of the FF40 object whose first
// bytes b are: tag, BER length and value. The length takes every definite
// form ParseTLV reads (00-7F, 81-84 and 1 to 4 bytes, X.690 8.1.3), the
// longer ones too when a shorter would do, so that a rule list the host
// assembles is refused or taken as ParseAccessRules would.
func accessRulesLength(b []byte) (int, error) {
	if len(b) < 3 || b[0] != 0xFF || b[1] != 0x40 {
		return 0, malformed("ARA-M Get-All answer %X does not start with FF40", b[:min(len(b), 4)])
	}
	l0 := b[2]
	if l0 < 0x80 {
		return 3 + int(l0), nil
	}
	k := int(l0 & 0x7F)
	if l0 == 0x80 || k > 4 || len(b) < 3+k {
		return 0, malformed("ARA-M Get-All answer has length field %X", b[2:min(len(b), 7)])
	}
	var n uint64 // 4 length bytes do not fit a 32-bit int
	for _, x := range b[3 : 3+k] {
		n = n<<8 | uint64(x)
	}
	if n > MaxAccessRulesLength {
		return 0, malformed("ARA-M announces %d bytes of rules, more than %d", n, MaxAccessRulesLength)
	}
	return 3 + k + int(n), nil
}

// RefreshTag reads the selected ARA-M's refresh tag (GET DATA DF20 →
// DF20 08 tag). A device keeps the rules it read until the tag changes.
func (h *Host) RefreshTag(ctx context.Context) ([]byte, error) {
	resp, err := h.Send(ctx, GetData(DataRefreshTag))
	if err != nil {
		return nil, err
	}
	if resp.SW != SWOK {
		return nil, &SWError{SW: resp.SW, Op: "GET DATA DF20"}
	}
	t, rest, err := ParseTLV(resp.Data)
	if err != nil || len(rest) != 0 || t.Tag != 0xDF20 || len(t.Value) != 8 {
		return nil, malformed("ARA-M refresh tag answer %X, want DF20 08 and 8 bytes", resp.Data)
	}
	return clone(t.Value), nil
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
