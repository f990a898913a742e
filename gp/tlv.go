package gp

import (
	"encoding/binary"
	"fmt"
)

// Tag is a BER-TLV tag (ISO 7816-4 5.2.2.1, X.690 8.1.2) with its bytes held
// big-endian: 0x4F, 0x9F70, 0xBF3E, 0xFF40. Tags of up to 4 bytes are accepted.
type Tag uint32

// Constructed reports bit b6 of the first tag byte: the value is itself a
// sequence of TLVs.
func (t Tag) Constructed() bool { return t.first()&0x20 != 0 }

func (t Tag) first() byte {
	b := t.Bytes()
	return b[0]
}

// Bytes returns the tag's encoding (1 to 4 bytes; Tag(0) encodes as 00).
func (t Tag) Bytes() []byte {
	switch {
	case t > 0xFFFFFF:
		return []byte{byte(t >> 24), byte(t >> 16), byte(t >> 8), byte(t)}
	case t > 0xFFFF:
		return []byte{byte(t >> 16), byte(t >> 8), byte(t)}
	case t > 0xFF:
		return []byte{byte(t >> 8), byte(t)}
	}
	return []byte{byte(t)}
}

// String returns the tag in upper-case hex.
func (t Tag) String() string { return fmt.Sprintf("%X", t.Bytes()) }

// TLV is one decoded BER-TLV data object. Value aliases the parsed input.
type TLV struct {
	Tag   Tag
	Value []byte
	// Indefinite is set when the object was encoded with length 80 and
	// closed by 00 00 (X.690 8.1.3.6); Bytes then re-encodes it that way.
	Indefinite bool
}

// maxTLVDepth bounds nesting of indefinite-length objects, which the parser
// must descend into to find their end.
const maxTLVDepth = 32

// ParseTLV decodes the first data object of b and returns it with the bytes
// that follow it.
func ParseTLV(b []byte) (TLV, []byte, error) {
	return parseTLV(b, 0, 0)
}

func parseTLV(b []byte, off, depth int) (TLV, []byte, error) {
	if len(b) == 0 {
		return TLV{}, nil, truncated("TLV at offset %d: no tag", off)
	}
	if b[0] == 0x00 {
		return TLV{}, nil, malformed("TLV at offset %d: tag 00 (end-of-contents) outside an indefinite length", off)
	}
	// ISO 7816-4 5.2.2.1: low 5 bits all set means subsequent tag bytes
	// follow, each with b8 set except the last.
	n := 1
	if b[0]&0x1F == 0x1F {
		for {
			if n >= len(b) {
				return TLV{}, nil, truncated("TLV at offset %d: tag ends after %d bytes", off, n)
			}
			n++
			if b[n-1]&0x80 == 0 {
				break
			}
			if n == 4 {
				return TLV{}, nil, malformed("TLV at offset %d: tag longer than 4 bytes", off)
			}
		}
	}
	var tag Tag
	for _, x := range b[:n] {
		tag = tag<<8 | Tag(x)
	}
	rest := b[n:]
	if len(rest) == 0 {
		return TLV{}, nil, truncated("TLV %s at offset %d: no length", tag, off)
	}
	l0 := rest[0]
	switch {
	case l0 < 0x80:
		return definite(tag, int(l0), rest[1:], off)
	case l0 == 0x80:
		if tag.first()&0x20 == 0 {
			return TLV{}, nil, malformed("TLV %s at offset %d: indefinite length on a primitive tag", tag, off)
		}
		return indefinite(tag, rest[1:], off+n+1, depth)
	case l0 <= 0x84: // 81..84: 1..4 length bytes follow (X.690 8.1.3.5)
		k := int(l0 & 0x7F)
		if len(rest) < 1+k {
			return TLV{}, nil, truncated("TLV %s at offset %d: length field needs %d bytes, %d left", tag, off, k, len(rest)-1)
		}
		var l uint64
		for _, x := range rest[1 : 1+k] {
			l = l<<8 | uint64(x)
		}
		if l > uint64(len(rest)-1-k) {
			return TLV{}, nil, truncated("TLV %s at offset %d: length %d exceeds %d remaining bytes", tag, off, l, len(rest)-1-k)
		}
		return definite(tag, int(l), rest[1+k:], off)
	}
	return TLV{}, nil, malformed("TLV %s at offset %d: invalid length byte %02X", tag, off, l0)
}

func definite(tag Tag, l int, b []byte, off int) (TLV, []byte, error) {
	if l > len(b) {
		return TLV{}, nil, truncated("TLV %s at offset %d: length %d exceeds %d remaining bytes", tag, off, l, len(b))
	}
	return TLV{Tag: tag, Value: b[:l:l]}, b[l:], nil
}

// indefinite walks the nested objects of an indefinite-length value up to
// its 00 00 end-of-contents marker.
func indefinite(tag Tag, b []byte, off, depth int) (TLV, []byte, error) {
	if depth >= maxTLVDepth {
		return TLV{}, nil, malformed("TLV %s at offset %d: indefinite lengths nested deeper than %d", tag, off, maxTLVDepth)
	}
	pos := 0
	for {
		if len(b)-pos >= 2 && b[pos] == 0 && b[pos+1] == 0 {
			return TLV{Tag: tag, Value: b[:pos:pos], Indefinite: true}, b[pos+2:], nil
		}
		if pos >= len(b) || (len(b)-pos == 1 && b[pos] == 0) {
			return TLV{}, nil, truncated("TLV %s: indefinite length without end-of-contents 00 00", tag)
		}
		_, rest, err := parseTLV(b[pos:], off+pos, depth+1)
		if err != nil {
			return TLV{}, nil, err
		}
		pos = len(b) - len(rest)
	}
}

// ParseAllTLV decodes b as a sequence of data objects with nothing left over.
func ParseAllTLV(b []byte) ([]TLV, error) {
	var out []TLV
	off := 0
	for len(b) > 0 {
		t, rest, err := parseTLV(b, off, 0)
		if err != nil {
			return nil, err
		}
		off += len(b) - len(rest)
		out = append(out, t)
		b = rest
	}
	return out, nil
}

// Children decodes the value of a constructed object.
func (t TLV) Children() ([]TLV, error) {
	if !t.Tag.Constructed() {
		return nil, malformed("TLV %s is primitive, it has no children", t.Tag)
	}
	return ParseAllTLV(t.Value)
}

// Bytes re-encodes the object: definite length unless Indefinite is set on a
// constructed tag.
func (t TLV) Bytes() []byte {
	if t.Indefinite && t.Tag.Constructed() {
		out := append(t.Tag.Bytes(), 0x80)
		out = append(out, t.Value...)
		return append(out, 0, 0)
	}
	return Encode(t.Tag, t.Value)
}

// Encode returns tag ‖ BER length ‖ the concatenated values, with the
// shortest length form (X.690 8.1.3).
func Encode(tag Tag, values ...[]byte) []byte {
	n := 0
	for _, v := range values {
		n += len(v)
	}
	tb := tag.Bytes()
	out := make([]byte, 0, len(tb)+5+n)
	out = append(out, tb...)
	out = append(out, EncodeLength(n)...)
	for _, v := range values {
		out = append(out, v...)
	}
	return out
}

// EncodeLength returns the shortest BER length field for n: 00-7F, 81 xx,
// 82 xxxx, 83 xxxxxx or 84 xxxxxxxx. TS 102 226 scripts and BIP need these
// forms; a raw byte above 7F breaks cards (PROTOCOLS.md §3.4).
func EncodeLength(n int) []byte {
	switch {
	case n < 0x80:
		return []byte{byte(n)}
	case n <= 0xFF:
		return []byte{0x81, byte(n)}
	case n <= 0xFFFF:
		return []byte{0x82, byte(n >> 8), byte(n)}
	case n <= 0xFFFFFF:
		return []byte{0x83, byte(n >> 16), byte(n >> 8), byte(n)}
	}
	var b [5]byte
	b[0] = 0x84
	binary.BigEndian.PutUint32(b[1:], uint32(n))
	return b[:]
}

// Find returns the first object with the given tag.
func Find(tlvs []TLV, tag Tag) (TLV, bool) {
	for _, t := range tlvs {
		if t.Tag == tag {
			return t, true
		}
	}
	return TLV{}, false
}
