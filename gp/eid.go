package gp

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// GetEID builds the eUICC GET EID command sent to the ISD-R: STORE DATA
// 80 E2 91 00 06 BF3E 03 5C 01 5A 00 (SGP.22; PROTOCOLS.md §5).
func GetEID() Command {
	return StoreData(StoreDataLast|StoreDataBERTLV|StoreDataCase4, 0x00, []byte{0xBF, 0x3E, 0x03, 0x5C, 0x01, 0x5A})
}

// ParseEIDResponse decodes BF3E { 5A 10 <16 bytes> } into the EID's 32
// decimal digits. The digits are BCD, not nibble-swapped. Check digits are
// the root package's concern (keyport.ParseEID).
func ParseEIDResponse(b []byte) (string, error) {
	t, rest, err := ParseTLV(b)
	if err != nil {
		return "", fmt.Errorf("gp: GET EID response: %w", err)
	}
	if t.Tag != 0xBF3E || len(rest) != 0 {
		return "", malformed("GET EID response is not one BF3E template")
	}
	kids, err := t.Children()
	if err != nil {
		return "", fmt.Errorf("gp: GET EID response: %w", err)
	}
	e, ok := Find(kids, 0x5A)
	if !ok || len(e.Value) != 16 {
		return "", malformed("GET EID response lacks a 16-byte 5A")
	}
	s := strings.ToUpper(hex.EncodeToString(e.Value))
	if strings.Trim(s, "0123456789") != "" {
		return "", malformed("EID %s is not decimal", s)
	}
	return s, nil
}

// SplitAID returns the RID (5 bytes) and PIX (0 to 11 bytes) of an
// ISO/IEC 7816-5 AID.
func SplitAID(aid []byte) (rid, pix []byte, err error) {
	if len(aid) < 5 || len(aid) > 16 {
		return nil, nil, malformed("AID of %d bytes, want 5 to 16", len(aid))
	}
	return aid[:5:5], aid[5:], nil
}

// TargetedApplication formats an AID the way Amendment B's
// X-Admin-Targeted-Application header carries it: //aid/<RID>/<PIX>.
func TargetedApplication(aid []byte) (string, error) {
	rid, pix, err := SplitAID(aid)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("//aid/%X/%X", rid, pix), nil
}

// ParseTargetedApplication reverses TargetedApplication.
func ParseTargetedApplication(s string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, "//aid/")
	if !ok {
		return nil, malformed("targeted application %q lacks //aid/", s)
	}
	ridHex, pixHex, _ := strings.Cut(rest, "/")
	rid, err1 := hex.DecodeString(ridHex)
	pix, err2 := hex.DecodeString(pixHex)
	if err1 != nil || err2 != nil || len(rid) != 5 {
		return nil, malformed("targeted application %q is not //aid/<5-byte RID>/<PIX>", s)
	}
	aid := append(rid, pix...)
	if len(aid) > 16 {
		return nil, malformed("targeted application %q longer than 16 bytes", s)
	}
	return aid, nil
}
