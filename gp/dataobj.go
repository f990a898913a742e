package gp

// Provider data objects: what a supplementary security domain keeps for its
// provider (DESIGN.md flow 9). keyport's choice of coding, which a GP card
// accepts without an applet of the provider's own:
//
//   - an object is a DGI (GPCS 11.11.2.2) numbered DataObjectFirst ..
//     DataObjectLast, stored in the SD itself with STORE DATA P1 b5b4 = 01
//     (DGI structure) in an SCP03 session opened on the SD — no INSTALL
//     [for personalization] before it — and read back with GET DATA P1P2 =
//     the DGI number, which answers the DGI as stored (tag ‖ length ‖
//     value);
//   - both need the session at level 33 (C-MAC, C-DEC, R-MAC, R-ENC;
//     AmdD Table 7-3), so that the object is encrypted both ways and the
//     answer proves itself: below it the card answers 6982;
//   - both need the SD PERSONALIZED (its provider's keys in place; GPCS
//     5.3.2): otherwise 6985;
//   - one object holds at most MaxDataObject bytes, so that each command
//     and each answer is a short APDU at level 33, which every reader and
//     relay carries: 3 bytes of DGI header, the padding of C-DEC/R-ENC and
//     an 8-byte MAC make 255 bytes of command data and 256 of response.
//     A card refuses a longer object with 6A80 and more objects than it has
//     room for with 6A84.
//
// The range keeps clear of the GET DATA objects GP and TS 102 226 define
// (0042, 0045, 0066, 0067, 00C1, 00E0, 2F00, 5F50, 9F7F, FF21, …) and of the
// key loading DGIs 00B9 and 8113.
const (
	DataObjectFirst uint16 = 0x0100
	DataObjectLast  uint16 = 0x1FFF
	MaxDataObject          = 236
)

// IsDataObject reports whether dgi is in the provider data object range.
func IsDataObject(dgi uint16) bool { return dgi >= DataObjectFirst && dgi <= DataObjectLast }

// CheckDataObject checks a DGI the way the card does before storing it.
func CheckDataObject(d DGI) error {
	if !IsDataObject(d.Tag) {
		return malformed("DGI %04X is not a provider data object (%04X..%04X)", d.Tag, DataObjectFirst, DataObjectLast)
	}
	if len(d.Data) > MaxDataObject {
		return malformed("DGI %04X holds %d bytes; a data object holds at most %d", d.Tag, len(d.Data), MaxDataObject)
	}
	return nil
}

// StoreDataObjects builds the STORE DATA commands that store objs in the
// selected SD, one object per command, blocks numbered from 00, the last
// flagged (GPCS Table 11-89: P1 08, last 88). Wrap them in a level-33
// session.
func StoreDataObjects(objs []DGI) ([]Command, error) {
	if len(objs) == 0 || len(objs) > 256 {
		return nil, malformed("%d data objects (1..256 per STORE DATA sequence)", len(objs))
	}
	out := make([]Command, 0, len(objs))
	for i, d := range objs {
		if err := CheckDataObject(d); err != nil {
			return nil, err
		}
		p1 := StoreDataDGI
		if i == len(objs)-1 {
			p1 |= StoreDataLast
		}
		out = append(out, StoreData(p1, byte(i), d.Bytes()))
	}
	return out, nil
}

// GetDataObject builds the GET DATA that reads data object dgi.
func GetDataObject(dgi uint16) Command { return GetData(dgi) }

// ParseDataObject reads a GET DATA answer's data (R-ENC removed): the DGI
// dgi as stored, and nothing after it.
func ParseDataObject(dgi uint16, data []byte) ([]byte, error) {
	ds, err := ParseDGIs(data)
	if err != nil {
		return nil, err
	}
	if len(ds) != 1 || ds[0].Tag != dgi {
		return nil, malformed("GET DATA %04X answered something other than DGI %04X alone", dgi, dgi)
	}
	if len(ds[0].Data) > MaxDataObject {
		return nil, malformed("DGI %04X of %d bytes is longer than a data object", dgi, len(ds[0].Data))
	}
	return ds[0].Data, nil
}
