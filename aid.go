package keyport

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// AID is an ISO/IEC 7816-5 application identifier of 5 to 16 bytes: a 5-byte
// registered application provider identifier (RID) and up to 11 bytes of
// proprietary extension (PIX). It is kept as upper-case hex.
type AID string

// ParseAID validates s (hex, spaces ignored, any case) as an AID.
func ParseAID(s string) (AID, error) {
	s = strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(s), " ", ""))
	if s == "" {
		return "", invalid("aid", "AID is empty")
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		return "", invalid("aid", "AID must be hexadecimal with an even number of digits")
	}
	if len(b) < 5 || len(b) > 16 {
		return "", invalid("aid", fmt.Sprintf("AID must be 5 to 16 bytes, got %d", len(b)))
	}
	return AID(s), nil
}

// Bytes returns the AID's bytes. It panics on an AID not made by ParseAID.
func (a AID) Bytes() []byte {
	b, err := hex.DecodeString(string(a))
	if err != nil {
		panic("keyport: AID not parsed: " + string(a))
	}
	return b
}

// RID returns the registered application provider identifier (first 5 bytes) in hex.
func (a AID) RID() string { return string(a)[:10] }

// PIX returns the proprietary extension in hex.
func (a AID) PIX() string { return string(a)[10:] }

// String returns the AID in upper-case hex.
func (a AID) String() string { return string(a) }
