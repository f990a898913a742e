package gp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
)

// CPLC is the Card Production Life Cycle data (GET DATA 9F7F): 42 bytes of
// fixed fields. The layout is GPPro's CPLC.java, CPLC not being in GPCS
// 2.3.1 (PROTOCOLS.md §1.4).
type CPLC struct {
	ICFabricator, ICType                        uint16
	OSID, OSReleaseDate, OSReleaseLevel         uint16
	ICFabricationDate                           uint16
	ICSerialNumber                              uint32
	ICBatchIdentifier                           uint16
	ICModuleFabricator, ICModulePackagingDate   uint16
	ICCManufacturer, ICEmbeddingDate            uint16
	ICPrePersonalizer, ICPrePersonalizationDate uint16
	ICPrePersonalizationEquipment               uint32
	ICPersonalizer, ICPersonalizationDate       uint16
	ICPersonalizationEquipment                  uint32
}

// cplcLen is the length of the CPLC value.
const cplcLen = 42

// ParseCPLC decodes CPLC data, with or without the 9F7F 2A header.
func ParseCPLC(b []byte) (CPLC, error) {
	if len(b) >= 3 && b[0] == 0x9F && b[1] == 0x7F {
		t, rest, err := ParseTLV(b)
		if err != nil {
			return CPLC{}, fmt.Errorf("gp: CPLC: %w", err)
		}
		if len(rest) != 0 {
			return CPLC{}, malformed("CPLC followed by %d bytes", len(rest))
		}
		b = t.Value
	}
	if len(b) != cplcLen {
		return CPLC{}, malformed("CPLC of %d bytes, want %d", len(b), cplcLen)
	}
	var c CPLC
	u16 := func(i int) uint16 { return binary.BigEndian.Uint16(b[i:]) }
	u32 := func(i int) uint32 { return binary.BigEndian.Uint32(b[i:]) }
	c.ICFabricator, c.ICType, c.OSID, c.OSReleaseDate, c.OSReleaseLevel, c.ICFabricationDate =
		u16(0), u16(2), u16(4), u16(6), u16(8), u16(10)
	c.ICSerialNumber = u32(12)
	c.ICBatchIdentifier, c.ICModuleFabricator, c.ICModulePackagingDate, c.ICCManufacturer, c.ICEmbeddingDate,
		c.ICPrePersonalizer, c.ICPrePersonalizationDate = u16(16), u16(18), u16(20), u16(22), u16(24), u16(26), u16(28)
	c.ICPrePersonalizationEquipment = u32(30)
	c.ICPersonalizer, c.ICPersonalizationDate = u16(34), u16(36)
	c.ICPersonalizationEquipment = u32(38)
	return c, nil
}

// Bytes encodes the CPLC as GET DATA returns it: 9F7F 2A value.
func (c CPLC) Bytes() []byte {
	v := make([]byte, 0, cplcLen)
	for _, x := range []uint16{c.ICFabricator, c.ICType, c.OSID, c.OSReleaseDate, c.OSReleaseLevel, c.ICFabricationDate} {
		v = binary.BigEndian.AppendUint16(v, x)
	}
	v = binary.BigEndian.AppendUint32(v, c.ICSerialNumber)
	for _, x := range []uint16{c.ICBatchIdentifier, c.ICModuleFabricator, c.ICModulePackagingDate, c.ICCManufacturer,
		c.ICEmbeddingDate, c.ICPrePersonalizer, c.ICPrePersonalizationDate} {
		v = binary.BigEndian.AppendUint16(v, x)
	}
	v = binary.BigEndian.AppendUint32(v, c.ICPrePersonalizationEquipment)
	v = binary.BigEndian.AppendUint16(v, c.ICPersonalizer)
	v = binary.BigEndian.AppendUint16(v, c.ICPersonalizationDate)
	v = binary.BigEndian.AppendUint32(v, c.ICPersonalizationEquipment)
	return Encode(0x9F7F, v)
}

// KeyInfo is one key of the Key Information Template (GET DATA 00E0, GPCS
// 11.3.3.1): C0 L KID KVN (type length)+.
type KeyInfo struct {
	KID, KVN   byte
	Components []KeyComponentInfo
}

// KeyComponentInfo is a key component's type (GPCS Table 11-16) and length
// in bytes.
type KeyComponentInfo struct {
	Type   byte
	Length int
}

// ParseKeyInformation decodes E0 { C0 … }* or a bare sequence of C0 entries
// (basic format). The extended format (type FF) is refused.
func ParseKeyInformation(b []byte) ([]KeyInfo, error) {
	tlvs, err := ParseAllTLV(b)
	if err != nil {
		return nil, fmt.Errorf("gp: key information: %w", err)
	}
	if len(tlvs) == 1 && tlvs[0].Tag == 0xE0 {
		if tlvs, err = tlvs[0].Children(); err != nil {
			return nil, fmt.Errorf("gp: key information: %w", err)
		}
	}
	var out []KeyInfo
	for _, t := range tlvs {
		if t.Tag != 0xC0 {
			return nil, malformed("key information entry %s, want C0", t.Tag)
		}
		v := t.Value
		if len(v) < 4 || len(v)%2 != 0 {
			return nil, malformed("key information C0 of %d bytes", len(v))
		}
		k := KeyInfo{KID: v[0], KVN: v[1]}
		for p := v[2:]; len(p) > 0; p = p[2:] {
			if p[0] == 0xFF {
				return nil, malformed("extended key information format not supported")
			}
			k.Components = append(k.Components, KeyComponentInfo{Type: p[0], Length: int(p[1])})
		}
		out = append(out, k)
	}
	return out, nil
}

// KeyInformationBytes encodes keys as the E0 template a card returns.
func KeyInformationBytes(keys []KeyInfo) []byte {
	var v []byte
	for _, k := range keys {
		e := []byte{k.KID, k.KVN}
		for _, c := range k.Components {
			e = append(e, c.Type, byte(c.Length))
		}
		v = append(v, Encode(0xC0, e)...)
	}
	return Encode(0xE0, v)
}

// gpOID is the GlobalPlatform OID 1.2.840.114283 (GPCS H.2).
var gpOID = []byte{0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B}

// CardRecognition is what keyport reads from Card Recognition Data (GET DATA
// 0066, GPCS H.2 Table H-1).
type CardRecognition struct {
	// GPVersion is the card management type and version, e.g. "2.1.1".
	GPVersion string
	// SCPs are the secure channel protocols offered, from tag 64.
	SCPs []SCPOption
}

// SCPOption is a secure channel protocol and its i parameter.
type SCPOption struct{ SCP, I byte }

// ParseCardRecognition decodes 66 { 73 { 06 OID, 60 {06 version}, 63,
// 64 {06 SCP}, … } }. Tags other than 60 and 64 are skipped.
func ParseCardRecognition(b []byte) (CardRecognition, error) {
	var cr CardRecognition
	t, rest, err := ParseTLV(b)
	if err != nil {
		return cr, fmt.Errorf("gp: card recognition data: %w", err)
	}
	if t.Tag != 0x66 || len(rest) != 0 {
		return cr, malformed("card recognition data is not one 66 template")
	}
	inner, err := t.Children()
	if err != nil {
		return cr, err
	}
	t73, ok := Find(inner, 0x73)
	if !ok || !t73.Tag.Constructed() {
		return cr, malformed("card recognition data lacks 73")
	}
	items, err := t73.Children()
	if err != nil {
		return cr, err
	}
	for _, it := range items {
		if it.Tag != 0x60 && it.Tag != 0x64 {
			continue
		}
		sub, err := it.Children()
		if err != nil {
			return cr, err
		}
		oid, ok := Find(sub, 0x06)
		if !ok || !bytes.HasPrefix(oid.Value, gpOID) || len(oid.Value) < len(gpOID)+1 {
			return cr, malformed("card recognition %s lacks a GlobalPlatform OID", it.Tag)
		}
		arc, tail := oid.Value[len(gpOID)], oid.Value[len(gpOID)+1:]
		switch {
		case it.Tag == 0x60 && arc == 0x02:
			parts := make([]string, len(tail))
			for i, x := range tail {
				parts[i] = fmt.Sprint(x)
			}
			cr.GPVersion = strings.Join(parts, ".")
		case it.Tag == 0x64 && arc == 0x04 && len(tail) == 2:
			cr.SCPs = append(cr.SCPs, SCPOption{SCP: tail[0], I: tail[1]})
		}
	}
	return cr, nil
}

// ParseSequenceCounter decodes the GET DATA 00C1 answer: C1 L counter, or
// the bare 2-byte (SCP02) or 3-byte (SCP03) counter.
func ParseSequenceCounter(b []byte) (uint32, error) {
	if len(b) > 0 && b[0] == 0xC1 {
		t, rest, err := ParseTLV(b)
		if err != nil {
			return 0, fmt.Errorf("gp: sequence counter: %w", err)
		}
		if len(rest) != 0 {
			return 0, malformed("sequence counter followed by %d bytes", len(rest))
		}
		b = t.Value
	}
	if len(b) != 2 && len(b) != 3 {
		return 0, malformed("sequence counter of %d bytes, want 2 or 3", len(b))
	}
	var n uint32
	for _, x := range b {
		n = n<<8 | uint32(x)
	}
	return n, nil
}

// SequenceCounterBytes encodes an SCP03 counter as GET DATA 00C1 returns it:
// C1 03 counter.
func SequenceCounterBytes(seq uint32) []byte {
	return Encode(0xC1, []byte{byte(seq >> 16), byte(seq >> 8), byte(seq)})
}

// CardResources is the TS 102 226 extended card resources information (GET
// DATA FF21): 81 installed applications, 82 free non-volatile memory, 83 free
// volatile memory, in bytes.
type CardResources struct {
	Applications, FreeNVM, FreeRAM int
}

// ParseCardResources decodes FF21 { 81 … 82 … 83 … }.
func ParseCardResources(b []byte) (CardResources, error) {
	var r CardResources
	t, rest, err := ParseTLV(b)
	if err != nil {
		return r, fmt.Errorf("gp: card resources: %w", err)
	}
	if t.Tag != 0xFF21 || len(rest) != 0 {
		return r, malformed("card resources are not one FF21 template")
	}
	items, err := t.Children()
	if err != nil {
		return r, err
	}
	for _, it := range items {
		if len(it.Value) > 4 {
			return r, malformed("card resource %s of %d bytes", it.Tag, len(it.Value))
		}
		n := 0
		for _, x := range it.Value {
			n = n<<8 | int(x)
		}
		switch it.Tag {
		case 0x81:
			r.Applications = n
		case 0x82:
			r.FreeNVM = n
		case 0x83:
			r.FreeRAM = n
		}
	}
	return r, nil
}

// Bytes encodes the resources as FF21 with 1-, 2- and 2-byte values (the
// live card's layout), widening a value that does not fit.
func (r CardResources) Bytes() []byte {
	num := func(n, min int) []byte {
		var b []byte
		for n > 0 || len(b) < min {
			b = append([]byte{byte(n)}, b...)
			n >>= 8
		}
		return b
	}
	return Encode(0xFF21, Encode(0x81, num(r.Applications, 1)), Encode(0x82, num(r.FreeNVM, 2)), Encode(0x83, num(r.FreeRAM, 2)))
}
