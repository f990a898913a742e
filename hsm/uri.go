package hsm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// URI is a parsed RFC 7512 PKCS#11 URI naming the token keyport uses, the
// module that serves it and where its user PIN comes from, e.g.
//
//	pkcs11:token=keyport?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/pin
//
// Path attributes (RFC 7512 §2.3) select the token: token (label), serial,
// manufacturer, model, slot-id. Query attributes: module-path, and the PIN
// either from pin-source (a file: URI only) or inline as pin-value.
type URI struct {
	Token        string // CK_TOKEN_INFO label
	Serial       string // CK_TOKEN_INFO serialNumber
	Manufacturer string // CK_TOKEN_INFO manufacturerID
	Model        string // CK_TOKEN_INFO model
	// SlotID selects the slot when HasSlotID is set. Slot IDs are not
	// stable on every module (SoftHSM renumbers a slot when its token is
	// initialized), so prefer token or serial.
	SlotID    uint
	HasSlotID bool

	ModulePath string // absolute path of the PKCS#11 module (.so)
	PINSource  string // path of the file holding the user PIN
	PINValue   string // the user PIN itself; never printed by String
}

// Lengths of the blank-padded CK_TOKEN_INFO fields (PKCS#11 v2.40 base §3.2).
var tokenFieldMax = map[string]int{"token": 32, "manufacturer": 32, "serial": 16, "model": 16}

// RFC 7512 attributes that keyport recognises but does not act on; naming
// them gives "not supported" rather than "unknown".
var rfc7512Unsupported = map[string]bool{
	"object": true, "id": true, "type": true, "library-manufacturer": true,
	"library-description": true, "library-version": true, "slot-description": true,
	"slot-manufacturer": true, "module-name": true,
}

// ParseURI parses and validates an RFC 7512 PKCS#11 URI. Errors start with
// "pkcs11 uri: " and never contain the PIN.
func ParseURI(s string) (*URI, error) {
	const scheme = "pkcs11:"
	if len(s) < len(scheme) || !strings.EqualFold(s[:len(scheme)], scheme) {
		return nil, errors.New("pkcs11 uri: must start with \"pkcs11:\"")
	}
	rest := s[len(scheme):]
	path, query, hasQuery := strings.Cut(rest, "?")
	u := &URI{}
	seen := map[string]bool{}
	if path != "" {
		for _, attr := range strings.Split(path, ";") {
			name, value, err := splitAttr(attr, seen)
			if err != nil {
				return nil, err
			}
			if err := u.setPath(name, value); err != nil {
				return nil, err
			}
		}
	}
	if hasQuery {
		if query == "" {
			return nil, errors.New("pkcs11 uri: empty query after '?'")
		}
		for _, attr := range strings.Split(query, "&") {
			name, value, err := splitAttr(attr, seen)
			if err != nil {
				return nil, err
			}
			if err := u.setQuery(name, value); err != nil {
				return nil, err
			}
		}
	}
	return u, u.validate()
}

// splitAttr splits "name=value", percent-decodes the value and refuses
// duplicates (RFC 7512 §2.3: an attribute must not appear more than once).
func splitAttr(attr string, seen map[string]bool) (string, string, error) {
	if attr == "" {
		return "", "", errors.New("pkcs11 uri: empty attribute (doubled or trailing separator)")
	}
	name, raw, ok := strings.Cut(attr, "=")
	if !ok {
		return "", "", fmt.Errorf("pkcs11 uri: attribute %q has no '='", safeName(name))
	}
	if name == "" {
		return "", "", errors.New("pkcs11 uri: attribute with an empty name")
	}
	if seen[name] {
		return "", "", fmt.Errorf("pkcs11 uri: attribute %q appears more than once", safeName(name))
	}
	seen[name] = true
	value, err := percentDecode(raw)
	if err != nil {
		return "", "", fmt.Errorf("pkcs11 uri: attribute %q: %w", safeName(name), err)
	}
	if value == "" {
		return "", "", fmt.Errorf("pkcs11 uri: attribute %q is empty", safeName(name))
	}
	return name, value, nil
}

// safeName bounds an attribute name quoted in an error, since it comes from
// configuration and could be long.
func safeName(name string) string {
	if len(name) > 40 {
		return name[:40] + "…"
	}
	return name
}

// percentDecode decodes RFC 3986 §2.1 percent-encoding. Unlike URL query
// decoding, '+' stays '+' (RFC 7512 has no form encoding).
func percentDecode(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return "", errors.New("bad percent-encoding (need '%' and two hex digits)")
		}
		b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
		i += 2
	}
	return b.String(), nil
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func (u *URI) setPath(name, value string) error {
	if max, ok := tokenFieldMax[name]; ok && len(value) > max {
		return fmt.Errorf("pkcs11 uri: %q is longer than the %d bytes PKCS#11 allows", name, max)
	}
	switch name {
	case "token":
		u.Token = value
	case "serial":
		u.Serial = value
	case "manufacturer":
		u.Manufacturer = value
	case "model":
		u.Model = value
	case "slot-id":
		if value[0] < '0' || value[0] > '9' {
			return errors.New("pkcs11 uri: 'slot-id' must be a decimal number")
		}
		id, err := strconv.ParseUint(value, 10, 64)
		if err != nil || uint64(uint(id)) != id {
			return errors.New("pkcs11 uri: 'slot-id' must be a decimal number")
		}
		u.SlotID, u.HasSlotID = uint(id), true
	case "pin-source", "pin-value", "module-path":
		return fmt.Errorf("pkcs11 uri: %q is a query attribute: put it after '?'", name)
	default:
		if rfc7512Unsupported[name] {
			return fmt.Errorf("pkcs11 uri: attribute %q is not supported by keyport", name)
		}
		return fmt.Errorf("pkcs11 uri: unknown path attribute %q", safeName(name))
	}
	return nil
}

func (u *URI) setQuery(name, value string) error {
	switch name {
	case "module-path":
		if !filepath.IsAbs(value) {
			return errors.New("pkcs11 uri: 'module-path' must be an absolute path")
		}
		u.ModulePath = value
	case "pin-value":
		u.PINValue = value
	case "pin-source":
		p, err := filePath(value)
		if err != nil {
			return err
		}
		u.PINSource = p
	case "token", "serial", "manufacturer", "model", "slot-id":
		return fmt.Errorf("pkcs11 uri: %q is a path attribute: put it before '?'", name)
	default:
		if rfc7512Unsupported[name] {
			return fmt.Errorf("pkcs11 uri: attribute %q is not supported by keyport", name)
		}
		return fmt.Errorf("pkcs11 uri: unknown query attribute %q", safeName(name))
	}
	return nil
}

// filePath accepts "file:/abs/path" and "file:///abs/path" (RFC 8089) and
// returns the path, cleaned: a path that starts with "//" would otherwise
// be written back as an authority ("file:" + "//x" reads as host x).
func filePath(v string) (string, error) {
	rest, ok := strings.CutPrefix(v, "file:")
	if !ok {
		return "", errors.New("pkcs11 uri: 'pin-source' must be a file: URI (file:/path/to/pin)")
	}
	if strings.HasPrefix(rest, "//") {
		host, p, _ := strings.Cut(rest[2:], "/")
		if host != "" && host != "localhost" {
			return "", errors.New("pkcs11 uri: 'pin-source' must name a local file")
		}
		rest = "/" + p
	}
	if !filepath.IsAbs(rest) {
		return "", errors.New("pkcs11 uri: 'pin-source' must be an absolute file path")
	}
	return filepath.Clean(rest), nil
}

func (u *URI) validate() error {
	switch {
	case u.HasSlotID && u.Token != "":
		return errors.New("pkcs11 uri: 'token' and 'slot-id' are mutually exclusive")
	case u.HasSlotID && u.Serial != "":
		return errors.New("pkcs11 uri: 'serial' and 'slot-id' are mutually exclusive")
	case !u.HasSlotID && u.Token == "" && u.Serial == "":
		return errors.New("pkcs11 uri: one of 'token', 'serial' or 'slot-id' is required")
	case u.ModulePath == "":
		return errors.New("pkcs11 uri: missing 'module-path' (the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so)")
	case u.PINSource != "" && u.PINValue != "":
		return errors.New("pkcs11 uri: 'pin-source' and 'pin-value' are mutually exclusive")
	case u.PINSource == "" && u.PINValue == "":
		return errors.New("pkcs11 uri: missing PIN: set 'pin-source=file:/path' or 'pin-value'")
	}
	return nil
}

// PIN returns the user PIN: pin-value, or the content of the pin-source
// file without its final line ending.
func (u *URI) PIN() (string, error) {
	if u.PINValue != "" {
		return u.PINValue, nil
	}
	b, err := os.ReadFile(u.PINSource)
	if err != nil {
		// The path is configuration, not a secret; the content never appears.
		return "", fmt.Errorf("pkcs11 uri: read pin-source: %w", err)
	}
	pin := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pin == "" {
		return "", fmt.Errorf("pkcs11 uri: pin-source %s is empty", u.PINSource)
	}
	return pin, nil
}

// String returns the URI in canonical form with any pin-value replaced by
// "REDACTED", so that it is safe to log.
func (u *URI) String() string { return u.encode(false) }

func (u *URI) encode(withPIN bool) string {
	var path, query []string
	add := func(list *[]string, name, value string, extra string) {
		if value != "" {
			*list = append(*list, name+"="+percentEncode(value, extra))
		}
	}
	add(&path, "token", u.Token, "")
	add(&path, "manufacturer", u.Manufacturer, "")
	add(&path, "serial", u.Serial, "")
	add(&path, "model", u.Model, "")
	if u.HasSlotID {
		path = append(path, "slot-id="+strconv.FormatUint(uint64(u.SlotID), 10))
	}
	add(&query, "module-path", u.ModulePath, "/")
	if u.PINSource != "" {
		query = append(query, "pin-source=file:"+percentEncode(u.PINSource, "/"))
	}
	switch {
	case u.PINValue != "" && withPIN:
		add(&query, "pin-value", u.PINValue, "")
	case u.PINValue != "":
		query = append(query, "pin-value=REDACTED")
	}
	s := "pkcs11:" + strings.Join(path, ";")
	if len(query) > 0 {
		s += "?" + strings.Join(query, "&")
	}
	return s
}

// percentEncode keeps RFC 3986 unreserved characters, a few characters RFC
// 7512 allows in values (pk11-res-avail) and extra; it encodes the rest.
func percentEncode(s, extra string) string {
	const keep = "-._~:@!$'()*,"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte(keep, c) >= 0 || strings.IndexByte(extra, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}
