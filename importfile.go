package keyport

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// MaxImportLine is the longest line an import file may have. A module with 32
// domains of three wrapped AES-256 keys fits in well under 16 KiB.
const MaxImportLine = 64 << 10

// importLine is one line of a manufacturer's output file (JSON Lines):
//
//	{"eid":"…","isd_aid":"A000000151000000","domains":[{"aid":"…","kvn":48,
//	  "keys":{"enc":"<b64 KWP>","mac":"…","dek":"…"},"kcv":{"enc":"EE72CB","mac":"…","dek":"…"}}]}
type importLine struct {
	EID     string         `json:"eid"`
	ISDAID  string         `json:"isd_aid"`
	Domains []importDomain `json:"domains"`
}

type importDomain struct {
	AID  string            `json:"aid"`
	KVN  *int              `json:"kvn"`
	Keys map[string]string `json:"keys"`
	KCV  map[string]string `json:"kcv"`
}

// ParseImportLine validates one line of an import file and returns the module
// it describes. The keys stay as the manufacturer wrapped them (RFC 5649 KWP
// under the batch transport key); only their shape is checked here.
func ParseImportLine(line []byte) (*ModuleImport, error) {
	var in importLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, invalid("", "not a JSON object of the import format: "+jsonReason(err))
	}
	if dec.More() {
		return nil, invalid("", "more than one JSON value on the line")
	}
	eid, err := ParseEID(in.EID)
	if err != nil {
		return nil, err
	}
	isd, err := ParseAID(in.ISDAID)
	if err != nil {
		return nil, Invalid("isd_aid", "%s", err.(*InvalidError).Reason)
	}
	if len(in.Domains) == 0 {
		return nil, invalid("domains", "a module needs at least one domain")
	}
	if len(in.Domains) > 64 {
		return nil, invalid("domains", fmt.Sprintf("at most 64 domains per module, got %d", len(in.Domains)))
	}
	m := &ModuleImport{EID: eid, ISDAID: isd}
	seen := map[AID]bool{isd: true}
	for i, d := range in.Domains {
		field := fmt.Sprintf("domains[%d]", i)
		aid, err := ParseAID(d.AID)
		if err != nil {
			return nil, Invalid(field+".aid", "%s", err.(*InvalidError).Reason)
		}
		if seen[aid] {
			return nil, Invalid(field+".aid", "AID %s appears twice on this module", aid)
		}
		seen[aid] = true
		if d.KVN == nil {
			return nil, Invalid(field+".kvn", "missing")
		}
		// GPCS 11.8.2.2: key version numbers 01–7F identify key sets; 00 and
		// 80–FF are reserved.
		if *d.KVN < 1 || *d.KVN > 0x7F {
			return nil, Invalid(field+".kvn", "key version number must be 1 to 127, got %d", *d.KVN)
		}
		dom := Domain{AID: aid, EID: eid, KVN: *d.KVN, State: Unassigned, KeySource: KeyImported,
			Imported: map[KeyUsage][]byte{}, KCV: map[KeyUsage]string{}}
		if err := checkUsages(field+".keys", d.Keys); err != nil {
			return nil, err
		}
		if err := checkUsages(field+".kcv", d.KCV); err != nil {
			return nil, err
		}
		for _, u := range Usages {
			wrapped, err := base64.StdEncoding.DecodeString(d.Keys[string(u)])
			if err != nil {
				return nil, Invalid(field+".keys."+string(u), "not standard base64")
			}
			// RFC 5649: an AES-128/192/256 key wraps to 24/32/40 bytes.
			if n := len(wrapped); n != 24 && n != 32 && n != 40 {
				return nil, Invalid(field+".keys."+string(u), "a KWP-wrapped AES key is 24, 32 or 40 bytes, got %d", n)
			}
			kcv, err := ParseKCV(d.KCV[string(u)])
			if err != nil {
				return nil, Invalid(field+".kcv."+string(u), "%s", err.(*InvalidError).Reason)
			}
			dom.Imported[u] = wrapped
			dom.KCV[u] = kcv
		}
		m.Domains = append(m.Domains, dom)
	}
	return m, nil
}

func checkUsages(field string, m map[string]string) error {
	if m == nil {
		return invalid(field, "missing")
	}
	for k := range m {
		if k != string(UsageENC) && k != string(UsageMAC) && k != string(UsageDEK) {
			return Invalid(field, "unknown key usage %q (want enc, mac, dek)", k)
		}
	}
	for _, u := range Usages {
		if _, ok := m[string(u)]; !ok {
			return Invalid(field, "missing %q", u)
		}
	}
	return nil
}

// ParseKCV validates a GP key check value: 3 bytes as 6 hex digits.
func ParseKCV(s string) (string, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 3 {
		return "", invalid("kcv", "a KCV is 6 hex digits (3 bytes)")
	}
	return strings.ToUpper(s), nil
}

func jsonReason(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	case errors.Is(err, io.EOF):
		return "empty"
	}
	return err.Error()
}

// ImportErrors lists the bad lines of an import file. The whole file is
// rejected when there is any.
type ImportErrors struct {
	Lines []*LineError
	// More is how many further bad lines were not listed.
	More int
}

func (e *ImportErrors) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "import rejected, nothing imported: %d bad line(s)", len(e.Lines)+e.More)
	for _, l := range e.Lines {
		b.WriteString("; ")
		b.WriteString(l.Error())
	}
	if e.More > 0 {
		fmt.Fprintf(&b, "; and %d more", e.More)
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ImportErrors) Is(target error) bool { return target == ErrInvalid }

// importScanner reads an import file line by line with 1-based line numbers,
// skipping blank lines.
type importScanner struct {
	sc   *bufio.Scanner
	line int
}

func newImportScanner(r io.Reader) *importScanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxImportLine)
	return &importScanner{sc: sc}
}

// next returns the next non-blank line, or io.EOF.
func (s *importScanner) next() ([]byte, error) {
	for s.sc.Scan() {
		s.line++
		b := bytes.TrimSpace(s.sc.Bytes())
		if len(b) > 0 {
			return b, nil
		}
	}
	if err := s.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &LineError{Line: s.line + 1, Err: invalid("", fmt.Sprintf("line longer than %d bytes", MaxImportLine))}
		}
		return nil, err
	}
	return nil, io.EOF
}
