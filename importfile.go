package keyport

import (
	"bufio"
	"bytes"
	"context"
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
//	  "keys":{"enc":"<b64 KWP>","mac":"…","dek":"…"},"kcv":{"enc":"EE72CB","mac":"…","dek":"…"}}],
//	  "msisdn":"+4915200000001"}
//
// msisdn is optional (E.164; module_ota, migration 11).
type importLine struct {
	EID     string         `json:"eid"`
	ISDAID  string         `json:"isd_aid"`
	Domains []importDomain `json:"domains"`
	// MSISDN is optional: the module's E.164 number, for SMS reach.
	MSISDN string `json:"msisdn,omitempty"`
}

type importDomain struct {
	AID  string      `json:"aid"`
	KVN  *int        `json:"kvn"`
	Keys *importKeys `json:"keys"`
	KCV  *importKeys `json:"kcv"`
}

// importKeys holds one value per key usage. Fixed fields, not a map: the
// decoder is several times faster, and an unknown usage is refused as an
// unknown field.
type importKeys struct {
	ENC *string `json:"enc"`
	MAC *string `json:"mac"`
	DEK *string `json:"dek"`
}

func (k *importKeys) get(u KeyUsage) *string {
	switch u {
	case UsageENC:
		return k.ENC
	case UsageMAC:
		return k.MAC
	}
	return k.DEK
}

// ParseImportLine validates one line of an import file and returns the module
// it describes. The keys stay as the manufacturer wrapped them (RFC 5649 KWP
// under the batch transport key); only their shape is checked here.
func ParseImportLine(line []byte) (*ModuleImport, error) {
	var in importLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return nil, invalid("", "not a JSON object of the import format: "+DescribeJSONError(err))
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
	msisdn, err := NormalizeMSISDN(in.MSISDN)
	if err != nil {
		return nil, err
	}
	m := &ModuleImport{EID: eid, ISDAID: isd, MSISDN: msisdn}
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
			Wrapped: map[KeyUsage][]byte{}, KCV: map[KeyUsage]string{}}
		if err := checkUsages(field+".keys", d.Keys); err != nil {
			return nil, err
		}
		if err := checkUsages(field+".kcv", d.KCV); err != nil {
			return nil, err
		}
		for _, u := range Usages {
			wrapped, err := base64.StdEncoding.DecodeString(*d.Keys.get(u))
			if err != nil {
				return nil, Invalid(field+".keys."+string(u), "not standard base64")
			}
			// RFC 5649: an AES-128/192/256 key wraps to 24/32/40 bytes.
			if n := len(wrapped); n != 24 && n != 32 && n != 40 {
				return nil, Invalid(field+".keys."+string(u), "a KWP-wrapped AES key is 24, 32 or 40 bytes, got %d", n)
			}
			kcv, err := ParseKCV(*d.KCV.get(u))
			if err != nil {
				return nil, Invalid(field+".kcv."+string(u), "%s", err.(*InvalidError).Reason)
			}
			dom.Wrapped[u] = wrapped
			dom.KCV[u] = kcv
		}
		m.Domains = append(m.Domains, dom)
	}
	return m, nil
}

func checkUsages(field string, k *importKeys) error {
	if k == nil {
		return invalid(field, "missing")
	}
	for _, u := range Usages {
		if k.get(u) == nil {
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

// DescribeJSONError says in words what is wrong with a JSON document, for
// the person who sent it (the one wording for the import file, key packages
// and API bodies).
func DescribeJSONError(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	case errors.Is(err, io.EOF):
		return "empty"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "ends in the middle of a value"
	}
	// `json: unknown field "x"` and the like: the message without its prefix.
	if msg, ok := strings.CutPrefix(err.Error(), "json: "); ok {
		return msg
	}
	return "malformed JSON"
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

// lineScanner reads a JSON Lines upload (an import file, a campaign's
// scripts) line by line with 1-based line numbers, skipping blank lines. A
// line longer than max is a *LineError naming it.
type lineScanner struct {
	sc   *bufio.Scanner
	max  int
	line int
	// read counts the bytes scanned so far, blank lines and newlines
	// included.
	read int
}

func newLineScanner(r io.Reader, max int) *lineScanner {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, min(64<<10, max)), max)
	return &lineScanner{sc: sc, max: max}
}

// next returns the next non-blank line, or io.EOF.
func (s *lineScanner) next() ([]byte, error) {
	for s.sc.Scan() {
		s.line++
		s.read += len(s.sc.Bytes()) + 1
		b := bytes.TrimSpace(s.sc.Bytes())
		if len(b) > 0 {
			return b, nil
		}
	}
	if err := s.sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return nil, &LineError{Line: s.line + 1, Err: invalid("", fmt.Sprintf("line longer than %d bytes", s.max))}
		}
		return nil, err
	}
	return nil, io.EOF
}

// maxListedImportErrors bounds how many bad lines an ImportErrors names.
const maxListedImportErrors = 100

// parsedLine is one line of an import file, parsed, or why it is not.
type parsedLine struct {
	m   *ModuleImport // Line is set even when err is
	err error
}

// parseAhead parses the file's lines on its own goroutine, a bounded number
// ahead of the reader, until the file ends or ctx is done.
//
// The bound is above the store's chunk (500 modules, written in one go while
// no line is read): with less, the parser filled the channel early in each
// chunk's write and then sat idle, and the writer then waited for the rest
// of the next chunk to be parsed, so the two goroutines took turns instead
// of overlapping. A thousand parsed modules of 8 domains are some 8 MB.
func parseAhead(ctx context.Context, file io.Reader) <-chan parsedLine {
	out := make(chan parsedLine, 1024)
	go func() {
		defer close(out)
		sc := newLineScanner(file, MaxImportLine)
		for {
			line, err := sc.next()
			if err == io.EOF {
				return
			}
			var pl parsedLine
			if err != nil {
				var le *LineError
				if !errors.As(err, &le) {
					err = &LineError{Line: sc.line + 1, Err: fmt.Errorf("read: %w", err)}
				}
				pl.err = err
			} else if pl.m, pl.err = ParseImportLine(line); pl.err != nil {
				pl.m = &ModuleImport{}
			}
			if pl.m != nil {
				pl.m.Line = sc.line
			}
			select {
			case out <- pl:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// VerifyMode says how many imported KCVs are checked inside the HSM.
type VerifyMode string

// Verify modes for ImportModules.
const (
	VerifyAll    VerifyMode = "all"
	VerifySample VerifyMode = "sample" // the first module and every 997th
	VerifyNone   VerifyMode = "none"
)

func (s *Service) checkImportedKCVs(ctx context.Context, batch string, m *ModuleImport) error {
	for _, d := range m.Domains {
		for _, u := range Usages {
			kcv, err := s.Custody.ImportedKCV(ctx, batch, d.Wrapped[u])
			if err != nil {
				if errors.Is(err, ErrUnavailable) {
					return err
				}
				return Invalid("domains.keys."+string(u), "domain %s: the key does not unwrap under the batch transport key", d.AID)
			}
			if kcv != d.KCV[u] {
				return Invalid("domains.kcv."+string(u), "domain %s: KCV %s does not match the key (HSM computes %s)", d.AID, d.KCV[u], kcv)
			}
		}
	}
	return nil
}

// ModuleImport is one module of an import file, validated.
type ModuleImport struct {
	Line    int
	EID     EID
	ISDAID  AID
	Domains []Domain // State, KeySource, Wrapped, KCV, KVN, AID set
	// ISDKeys and PSK as Module has them.
	ISDKeys KeyBlobs
	PSK     []byte
	// MSISDN (E.164 digits, optional) and the OTA key set (perso's, as
	// blobs under the ISD KEK, at OTAKVN) for SMS reach (ota.go).
	MSISDN  string
	OTAKVN  int
	OTAKeys KeyBlobs
}
