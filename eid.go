package keyport

import (
	"fmt"
	"strings"
)

// EID is the 32-digit eUICC identifier (GSMA SGP.02/SGP.22, PROTOCOLS.md §5).
// Its last two digits are check digits chosen so that the whole number taken
// modulo 97 equals 1 (ISO 7064 MOD 97-10, as for IBANs).
type EID string

// The messages a person gets for a mistyped EID, from the server and, as
// they type, from the portal's script (assets/portal.js), word for word.
const (
	eidLengthMessage = "An EID has 32 digits; this has %d."
	eidDigitsMessage = "An EID holds digits only; character %d is %q."
	// EIDCheckMessage: the check digits do not match the other 30.
	EIDCheckMessage = "The check digits are wrong: please re-type the EID."
)

// ParseEID validates s as an EID. Spaces are ignored so that EIDs copied from a
// printed card ("8904 9032 …") are accepted; the result holds digits only.
func ParseEID(s string) (EID, error) {
	s = strings.ReplaceAll(strings.TrimSpace(s), " ", "")
	if s == "" {
		return "", invalid("eid", "EID is empty")
	}
	if len(s) != 32 {
		return "", invalid("eid", fmt.Sprintf(eidLengthMessage, len(s)))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "", invalid("eid", fmt.Sprintf(eidDigitsMessage, i+1, s[i]))
		}
	}
	if mod97(s) != 1 {
		return "", invalid("eid", EIDCheckMessage)
	}
	return EID(s), nil
}

// EIDCheckDigits returns the two check digits for the first 30 digits of an EID.
func EIDCheckDigits(first30 string) (string, error) {
	if len(first30) != 30 {
		return "", invalid("eid", "need exactly 30 digits to compute check digits")
	}
	for i := 0; i < len(first30); i++ {
		if first30[i] < '0' || first30[i] > '9' {
			return "", invalid("eid", "EID may hold digits only")
		}
	}
	cd := 98 - mod97(first30+"00")
	return fmt.Sprintf("%02d", cd), nil
}

func mod97(digits string) int {
	r := 0
	for i := 0; i < len(digits); i++ {
		r = (r*10 + int(digits[i]-'0')) % 97
	}
	return r
}

// String returns the 32 digits.
func (e EID) String() string { return string(e) }
