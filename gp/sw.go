package gp

import "fmt"

// SW is a status word, SW1 in the high byte (ISO 7816-4 5.1.3).
type SW uint16

// Status words keyport checks by name (ISO 7816-4 Tables 5/6, GPCS 11.1.3
// and the per-command tables of GPCS chapter 11).
const (
	SWOK                     SW = 0x9000
	SWMoreData               SW = 0x6310 // GPCS 11.4.3: GET STATUS has more entries
	SWAuthFailed             SW = 0x6300 // AmdD 7.1.2: host cryptogram did not verify
	SWMemoryFailure          SW = 0x6581
	SWWrongLength            SW = 0x6700
	SWSecurityNotSatisfied   SW = 0x6982
	SWAuthMethodBlocked      SW = 0x6983
	SWConditionsNotSatisfied SW = 0x6985
	SWIncorrectData          SW = 0x6A80
	SWFunctionNotSupported   SW = 0x6A81
	SWNotFound               SW = 0x6A82
	SWNotEnoughMemory        SW = 0x6A84
	SWIncorrectP1P2          SW = 0x6A86
	SWReferencedDataNotFound SW = 0x6A88
	SWWrongP1P2              SW = 0x6B00
	SWINSNotSupported        SW = 0x6D00
	SWCLANotSupported        SW = 0x6E00
	SWNoPreciseDiagnosis     SW = 0x6F00
)

var swNames = map[SW]string{
	0x9000: "success",
	0x6200: "warning, no information given",
	0x6281: "part of returned data may be corrupted",
	0x6282: "end of file reached before reading Le bytes",
	0x6283: "selected file invalidated (card locked)",
	0x6300: "authentication failed",
	0x6310: "more data available",
	0x6400: "execution error, non-volatile memory unchanged",
	0x6581: "memory failure",
	0x6700: "wrong length",
	0x6881: "logical channel not supported",
	0x6882: "secure messaging not supported",
	0x6883: "last command of the chain expected",
	0x6884: "command chaining not supported",
	0x6900: "command not allowed",
	0x6981: "command incompatible with file structure",
	0x6982: "security status not satisfied",
	0x6983: "authentication method blocked",
	0x6984: "referenced data invalidated",
	0x6985: "conditions of use not satisfied",
	0x6986: "command not allowed, no current EF",
	0x6987: "expected secure messaging data objects missing",
	0x6988: "incorrect secure messaging data objects",
	0x6A80: "incorrect values in command data",
	0x6A81: "function not supported",
	0x6A82: "file or application not found",
	0x6A83: "record not found",
	0x6A84: "not enough memory space",
	0x6A86: "incorrect parameters P1-P2",
	0x6A88: "referenced data not found",
	0x6B00: "wrong parameters P1-P2",
	0x6D00: "instruction code not supported or invalid",
	0x6E00: "class not supported",
	0x6F00: "no precise diagnosis",
	0x9484: "algorithm not supported",
	0x9485: "invalid key check value",
}

// Name returns the meaning of s without the hex code.
func (s SW) Name() string {
	if n, ok := swNames[s]; ok {
		return n
	}
	lo := byte(s)
	switch byte(s >> 8) {
	case 0x61: // ISO 7816-4 5.1.3: SW2 bytes still available (GET RESPONSE)
		return fmt.Sprintf("%d response bytes still available", lo)
	case 0x6C:
		return fmt.Sprintf("wrong Le field, exact length is %d", lo)
	case 0x63:
		if lo&0xF0 == 0xC0 { // ISO 7816-4: 63Cx, x = retry counter
			return fmt.Sprintf("verification failed, %d retries left", lo&0x0F)
		}
	}
	return "unknown status"
}

// String returns the status word in hex followed by its meaning, e.g.
// "6A82 file or application not found".
func (s SW) String() string { return fmt.Sprintf("%04X %s", uint16(s), s.Name()) }

// Warning reports a 62xx or 63xx status: processed, with a warning. These are
// the statuses, with 9000, that still carry an R-MAC in SCP03 (AmdD 6.2.5).
func (s SW) Warning() bool { return s>>8 == 0x62 || s>>8 == 0x63 }

// SWError is the error for a card's status word other than 9000.
type SWError struct {
	SW SW
	// Op optionally names the command, e.g. "PUT KEY".
	Op string
}

// Error implements error: "gp: PUT KEY: card returned 6A88 referenced data not found".
func (e *SWError) Error() string {
	if e.Op == "" {
		return "gp: card returned " + e.SW.String()
	}
	return "gp: " + e.Op + ": card returned " + e.SW.String()
}

// statusError builds the *SWError a card-side check answers with.
func statusError(sw SW, op string) *SWError { return &SWError{SW: sw, Op: op} }
