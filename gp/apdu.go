package gp

import (
	"encoding/binary"
	"fmt"
)

// MaxShortNe and MaxExtendedNe are the largest expected response lengths a
// short and an extended Le field can carry (ISO 7816-4 5.1: Le 00 means 256,
// extended Le 0000 means 65536).
const (
	MaxShortNe    = 256
	MaxExtendedNe = 65536
)

// Command is a command APDU (ISO 7816-4 5.1). Ne is the number of response
// bytes expected: 0 means no Le field, 1..65536 an Le field (256 is sent as
// short Le 00).
type Command struct {
	CLA, INS, P1, P2 byte
	Data             []byte
	Ne               int
}

// Extended reports whether Bytes encodes c with extended length fields: when
// the data field exceeds 255 bytes or Ne exceeds 256 (ISO 7816-4 5.1).
func (c Command) Extended() bool {
	return len(c.Data) > 255 || c.Ne > MaxShortNe
}

// Bytes encodes c, choosing short or extended length fields (ISO 7816-4 5.1,
// cases 1 to 4). Data longer than 65535 bytes or Ne outside 0..65536 is
// truncated to the field's range; check with Valid first when that matters.
func (c Command) Bytes() []byte {
	out := make([]byte, 0, 4+3+len(c.Data)+3)
	out = append(out, c.CLA, c.INS, c.P1, c.P2)
	ext := c.Extended()
	if len(c.Data) > 0 {
		if ext {
			out = append(out, 0, byte(len(c.Data)>>8), byte(len(c.Data)))
		} else {
			out = append(out, byte(len(c.Data)))
		}
		out = append(out, c.Data...)
	}
	if c.Ne > 0 {
		switch {
		case !ext:
			out = append(out, byte(c.Ne)) // 256 -> 00
		case len(c.Data) > 0:
			out = append(out, byte(c.Ne>>8), byte(c.Ne)) // 65536 -> 0000
		default:
			out = append(out, 0, byte(c.Ne>>8), byte(c.Ne))
		}
	}
	return out
}

// Valid reports an error when c cannot be encoded: data over 65535 bytes or
// Ne outside 0..65536.
func (c Command) Valid() error {
	if len(c.Data) > 65535 {
		return malformed("command data of %d bytes exceeds 65535", len(c.Data))
	}
	if c.Ne < 0 || c.Ne > MaxExtendedNe {
		return malformed("command Ne %d outside 0..65536", c.Ne)
	}
	return nil
}

// String returns the encoded command in upper-case hex.
func (c Command) String() string { return fmt.Sprintf("%X", c.Bytes()) }

// ParseCommand decodes a command APDU in any of the ISO 7816-4 5.1 cases,
// short or extended. Data aliases b.
func ParseCommand(b []byte) (Command, error) {
	if len(b) < 4 {
		return Command{}, truncated("command APDU of %d bytes is shorter than its 4-byte header", len(b))
	}
	c := Command{CLA: b[0], INS: b[1], P1: b[2], P2: b[3]}
	body := b[4:]
	switch {
	case len(body) == 0: // case 1
		return c, nil
	case len(body) == 1: // case 2S
		c.Ne = shortNe(body[0])
		return c, nil
	case body[0] != 0: // case 3S or 4S
		lc := int(body[0])
		switch len(body) {
		case 1 + lc:
			c.Data = body[1:]
		case 1 + lc + 1:
			c.Data = body[1 : 1+lc]
			c.Ne = shortNe(body[1+lc])
		default:
			if len(body) < 1+lc {
				return Command{}, truncated("command Lc %d but only %d data bytes", lc, len(body)-1)
			}
			return Command{}, malformed("command Lc %d leaves %d trailing bytes (at most 1 Le byte allowed)", lc, len(body)-1-lc)
		}
		return c, nil
	}
	// body[0] == 0 and more bytes follow: extended length (cases 2E, 3E, 4E).
	if len(body) < 3 {
		return Command{}, malformed("command extended length field has %d bytes, want 3", len(body))
	}
	n := int(binary.BigEndian.Uint16(body[1:3]))
	if len(body) == 3 { // case 2E
		c.Ne = extendedNe(n)
		return c, nil
	}
	if n == 0 {
		return Command{}, malformed("command extended Lc is 0 but %d bytes follow", len(body)-3)
	}
	switch len(body) {
	case 3 + n: // case 3E
		c.Data = body[3:]
	case 3 + n + 2: // case 4E
		c.Data = body[3 : 3+n]
		c.Ne = extendedNe(int(binary.BigEndian.Uint16(body[3+n:])))
	default:
		if len(body) < 3+n {
			return Command{}, truncated("command extended Lc %d but only %d data bytes", n, len(body)-3)
		}
		return Command{}, malformed("command extended Lc %d leaves %d trailing bytes (want 0 or a 2-byte Le)", n, len(body)-3-n)
	}
	return c, nil
}

func shortNe(le byte) int {
	if le == 0 {
		return MaxShortNe
	}
	return int(le)
}

func extendedNe(le int) int {
	if le == 0 {
		return MaxExtendedNe
	}
	return le
}

// Response is a response APDU: data field and status word (ISO 7816-4 5.1).
type Response struct {
	Data []byte
	SW   SW
}

// ParseResponse splits an R-APDU into data and the trailing status word.
// Data aliases b.
func ParseResponse(b []byte) (Response, error) {
	if len(b) < 2 {
		return Response{}, truncated("response APDU of %d bytes has no status word", len(b))
	}
	n := len(b) - 2
	return Response{Data: b[:n:n], SW: SW(binary.BigEndian.Uint16(b[n:]))}, nil
}

// Bytes encodes r as data followed by SW1 SW2.
func (r Response) Bytes() []byte {
	out := make([]byte, 0, len(r.Data)+2)
	out = append(out, r.Data...)
	return append(out, byte(r.SW>>8), byte(r.SW))
}

// String returns the encoded response in upper-case hex.
func (r Response) String() string { return fmt.Sprintf("%X", r.Bytes()) }

// Err returns nil when the status word is 9000 and an *SWError otherwise.
func (r Response) Err() error {
	if r.SW == SWOK {
		return nil
	}
	return &SWError{SW: r.SW}
}
