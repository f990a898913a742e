package keyport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"time"

	"github.com/keyport/keyport/gp"
)

// AccessRuleState is where a provider's access rule stands (DESIGN.md flow
// 9): keyport stores it in the module's ARA-M through the ISD (an issuer
// job) and believes it only when the card's read-back shows it.
//
//	PENDING --read-back shows it, refresh tag changed--> ACTIVE
//	   \--card refused / job failed--> FAILED (cause, SW)
//	any --delete--> DELETING --read-back lacks it--> REMOVED (no longer listed)
type AccessRuleState string

// The access rule states.
const (
	RulePending  AccessRuleState = "PENDING"
	RuleActive   AccessRuleState = "ACTIVE"
	RuleFailed   AccessRuleState = "FAILED"
	RuleDeleting AccessRuleState = "DELETING"
	RuleRemoved  AccessRuleState = "REMOVED"
)

// APDU access of a rule (APDU-AR-DO, D0).
const (
	APDUAlways = "always"
	APDUNever  = "never"
)

// MaxAPDUFilters bounds the filters of one rule.
const MaxAPDUFilters = 16

// APDUFilter is one APDU-AR-DO filter: a command whose header (CLA INS P1
// P2) ANDed with Mask equals Header passes.
type APDUFilter struct {
	Header string `json:"header"` // 8 hex digits
	Mask   string `json:"mask"`   // 8 hex digits
}

// AccessRule is a provider's rule for one of its domains: the device app
// named by its signing certificate's hash (and, optionally, its Android
// package) may reach the domain's AID with the APDU access given. Only
// hashes are kept; a certificate sent in PEM is hashed and dropped.
type AccessRule struct {
	ID         string // "acr_…"
	DomainID   int64
	ProviderID string
	EID        EID
	AID        AID
	// HashAlg is "sha256" or "sha1"; Hash the certificate hash, upper-case hex.
	HashAlg string
	Hash    string
	Package string
	// APDU is APDUAlways, APDUNever, or filters "HHHHHHHHMMMMMMMM" joined by ",".
	APDU string
	// NFC is the NFC-AR-DO, nil when left out.
	NFC               *bool
	CarrierPrivileges bool
	State             AccessRuleState
	// Cause and SW say why a rule FAILED.
	Cause, SW string
	// JobRef is the issuer job that last changed the rule on the card.
	JobRef               string
	CreatedAt, UpdatedAt time.Time
}

// AccessRuleRequest is the body of POST /api/v1/domains/{eid}/{aid}/access-rules.
// Exactly one of the certificate fields names the app.
type AccessRuleRequest struct {
	CertificatePEM    string          `json:"certificate_pem,omitempty"`
	CertificateSHA256 string          `json:"certificate_sha256,omitempty"`
	CertificateSHA1   string          `json:"certificate_sha1,omitempty"`
	AndroidPackage    string          `json:"android_package,omitempty"`
	APDU              json.RawMessage `json:"apdu"`
	NFC               *bool           `json:"nfc,omitempty"`
	CarrierPrivileges *bool           `json:"carrier_privileges,omitempty"`
}

// MaxAccessRuleRequest bounds the request body.
const MaxAccessRuleRequest = 64 << 10

// ParseAccessRuleRequest decodes and checks a request body (JSON, no
// unknown fields) and returns the rule it asks for, not yet bound to a
// domain. Every mistake is an *InvalidError naming the field.
func ParseAccessRuleRequest(body []byte) (*AccessRule, error) {
	if len(body) > MaxAccessRuleRequest {
		return nil, Invalid("body", "larger than %d bytes", MaxAccessRuleRequest)
	}
	var req AccessRuleRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, Invalid("body", "not an access rule request: %v", jsonReason(err))
	}
	if dec.More() {
		return nil, invalid("body", "one JSON object only")
	}
	return req.Rule()
}

func jsonReason(err error) string {
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// Rule checks the request and returns the rule it asks for.
func (req AccessRuleRequest) Rule() (*AccessRule, error) {
	r := &AccessRule{}
	n := 0
	for _, s := range []string{req.CertificatePEM, req.CertificateSHA256, req.CertificateSHA1} {
		if s != "" {
			n++
		}
	}
	if n != 1 {
		return nil, invalid("certificate", "give exactly one of certificate_pem, certificate_sha256, certificate_sha1: a rule names one app (an empty hash would admit any app)")
	}
	switch {
	case req.CertificatePEM != "":
		der, err := certificateDER(req.CertificatePEM)
		if err != nil {
			return nil, err
		}
		h := sha256.Sum256(der)
		r.HashAlg, r.Hash = "sha256", strings.ToUpper(hex.EncodeToString(h[:]))
	case req.CertificateSHA256 != "":
		h, err := certHash("certificate_sha256", req.CertificateSHA256, sha256.Size)
		if err != nil {
			return nil, err
		}
		r.HashAlg, r.Hash = "sha256", h
	default:
		h, err := certHash("certificate_sha1", req.CertificateSHA1, 20)
		if err != nil {
			return nil, err
		}
		r.HashAlg, r.Hash = "sha1", h
	}
	if req.AndroidPackage != "" {
		if err := checkPackage(req.AndroidPackage); err != nil {
			return nil, err
		}
		r.Package = req.AndroidPackage
	}
	apdu, err := parseAPDUAccess(req.APDU)
	if err != nil {
		return nil, err
	}
	r.APDU = apdu
	if req.NFC != nil {
		v := *req.NFC
		r.NFC = &v
	}
	r.CarrierPrivileges = req.CarrierPrivileges != nil && *req.CarrierPrivileges
	return r, nil
}

// certificateDER decodes one PEM CERTIFICATE block holding an X.509
// certificate, and nothing else.
func certificateDER(s string) ([]byte, error) {
	b, rest := pem.Decode([]byte(s))
	if b == nil {
		return nil, invalid("certificate_pem", "not PEM: expected -----BEGIN CERTIFICATE-----")
	}
	if b.Type != "CERTIFICATE" {
		return nil, Invalid("certificate_pem", "a PEM %q block, want CERTIFICATE", clipField(b.Type))
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, invalid("certificate_pem", "one certificate only (the app's signing certificate)")
	}
	if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		return nil, invalid("certificate_pem", "not an X.509 certificate")
	}
	return b.Bytes, nil
}

func clipField(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// certHash checks a hex hash of n bytes (colons allowed, as keytool prints
// them) and returns it in upper-case hex. All zeros is refused: it names
// no certificate.
func certHash(field, s string, n int) (string, error) {
	s = strings.ReplaceAll(strings.TrimSpace(s), ":", "")
	b, err := hex.DecodeString(s)
	if err != nil {
		return "", Invalid(field, "not hex")
	}
	if len(b) != n {
		return "", Invalid(field, "%d bytes, want %d (%d hex digits)", len(b), n, 2*n)
	}
	if bytes.Count(b, []byte{0}) == n {
		return "", Invalid(field, "all zeros names no certificate")
	}
	return strings.ToUpper(hex.EncodeToString(b)), nil
}

// checkPackage checks an Android package name: dot-separated Java
// identifiers, at least two segments.
func checkPackage(p string) error {
	if len(p) > 255 {
		return invalid("android_package", "longer than 255 characters")
	}
	segs := strings.Split(p, ".")
	if len(segs) < 2 {
		return invalid("android_package", "an Android package name has at least two segments (com.example.app)")
	}
	for _, s := range segs {
		if s == "" {
			return invalid("android_package", "an empty segment")
		}
		for i, c := range s {
			letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
			if !letter && (i == 0 || c < '0' || c > '9') {
				return invalid("android_package", "segments are letters, digits and _, starting with a letter")
			}
		}
	}
	return nil
}

// parseAPDUAccess reads "always", "never" or a list of filters.
func parseAPDUAccess(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", invalid("apdu", `required: "always", "never" or a list of {"header","mask"} filters`)
	}
	var word string
	if err := json.Unmarshal(raw, &word); err == nil {
		if word != APDUAlways && word != APDUNever {
			return "", invalid("apdu", `"always", "never" or a list of {"header","mask"} filters`)
		}
		return word, nil
	}
	var fs []APDUFilter
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fs); err != nil {
		return "", invalid("apdu", `"always", "never" or a list of {"header","mask"} filters`)
	}
	if len(fs) == 0 || len(fs) > MaxAPDUFilters {
		return "", Invalid("apdu", "1 to %d filters", MaxAPDUFilters)
	}
	var out []string
	for i, f := range fs {
		h, err := hex.DecodeString(f.Header)
		if err != nil || len(h) != 4 {
			return "", Invalid(fmt.Sprintf("apdu[%d].header", i), "4 bytes in hex (8 digits): CLA INS P1 P2")
		}
		m, err := hex.DecodeString(f.Mask)
		if err != nil || len(m) != 4 {
			return "", Invalid(fmt.Sprintf("apdu[%d].mask", i), "4 bytes in hex (8 digits)")
		}
		out = append(out, strings.ToUpper(f.Header+f.Mask))
	}
	return strings.Join(out, ","), nil
}

// carrierPrivileges is the PERM-AR-DO of Android carrier privileges
// (DB 08 00…01).
var carrierPrivileges = []byte{0, 0, 0, 0, 0, 0, 0, 1}

// Card returns the rule as the ARA-M REF-AR-DO keyport stores (PROTOCOLS.md
// §4): the domain's AID, the certificate hash, the package, and the AR-DO.
func (r *AccessRule) Card() (gp.AccessRule, error) {
	aid := r.AID.Bytes()
	if len(aid) < 5 {
		return gp.AccessRule{}, fmt.Errorf("keyport: access rule %s: AID %q is not an application's", r.ID, r.AID)
	}
	h, err := hex.DecodeString(r.Hash)
	if err != nil || (len(h) != 20 && len(h) != sha256.Size) {
		return gp.AccessRule{}, fmt.Errorf("keyport: access rule %s: bad stored hash", r.ID)
	}
	g := gp.AccessRule{AID: aid, DeviceAppID: h, Package: r.Package}
	switch r.APDU {
	case APDUAlways:
		g.APDU = []byte{0x01}
	case APDUNever:
		g.APDU = []byte{0x00}
	default:
		for _, f := range strings.Split(r.APDU, ",") {
			b, err := hex.DecodeString(f)
			if err != nil || len(b) != 8 {
				return gp.AccessRule{}, fmt.Errorf("keyport: access rule %s: bad stored filter", r.ID)
			}
			g.APDU = append(g.APDU, b...)
		}
	}
	if r.NFC != nil {
		g.NFC = []byte{0}
		if *r.NFC {
			g.NFC = []byte{1}
		}
	}
	if r.CarrierPrivileges {
		g.Perm = carrierPrivileges
	}
	return g, nil
}

// AccessRuleView is a rule as the API shows it.
type AccessRuleView struct {
	ID                string          `json:"id"`
	EID               EID             `json:"eid"`
	AID               AID             `json:"aid"`
	CertificateSHA256 string          `json:"certificate_sha256,omitempty"`
	CertificateSHA1   string          `json:"certificate_sha1,omitempty"`
	AndroidPackage    string          `json:"android_package,omitempty"`
	APDU              any             `json:"apdu"`
	NFC               *bool           `json:"nfc,omitempty"`
	CarrierPrivileges bool            `json:"carrier_privileges"`
	State             AccessRuleState `json:"state"`
	Cause             string          `json:"cause,omitempty"`
	SW                string          `json:"sw,omitempty"`
	Job               string          `json:"job,omitempty"`
	CreatedAt         time.Time       `json:"created_at"`
	UpdatedAt         time.Time       `json:"updated_at"`
}

// View returns the rule as the API shows it.
func (r *AccessRule) View() AccessRuleView {
	v := AccessRuleView{ID: r.ID, EID: r.EID, AID: r.AID, AndroidPackage: r.Package, NFC: r.NFC,
		CarrierPrivileges: r.CarrierPrivileges, State: r.State, Cause: r.Cause, SW: r.SW, Job: r.JobRef,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
	if r.HashAlg == "sha1" {
		v.CertificateSHA1 = r.Hash
	} else {
		v.CertificateSHA256 = r.Hash
	}
	switch r.APDU {
	case APDUAlways, APDUNever:
		v.APDU = r.APDU
	default:
		var fs []APDUFilter
		for _, f := range strings.Split(r.APDU, ",") {
			if len(f) == 16 {
				fs = append(fs, APDUFilter{Header: f[:8], Mask: f[8:]})
			}
		}
		v.APDU = fs
	}
	return v
}

// AddAccessRule stores rule r for the caller's PERSONALIZED domain eid/aid
// and queues the issuer job that puts it in the module's ARA-M. The rule
// is PENDING until the job's read-back shows it on the card. Another rule
// of the domain for the same app (hash and package) is a conflict; a
// module whose ISD keys keyport does not hold is refused (ErrNoISDKeys);
// in both cases nothing is stored.
func (s *Service) AddAccessRule(ctx context.Context, p Principal, eid EID, aid AID, r *AccessRule) (*AccessRule, *Job, error) {
	d, err := s.ownDomain(ctx, p, eid, aid)
	if err != nil {
		return nil, nil, err
	}
	now := s.now().UTC()
	rule := *r
	rule.ID, rule.DomainID, rule.ProviderID, rule.EID, rule.AID = NewID("acr"), d.ID, p.ProviderID, d.EID, d.AID
	rule.State, rule.CreatedAt, rule.UpdatedAt = RulePending, now, now
	g, err := rule.Card()
	if err != nil {
		return nil, nil, err
	}
	j, err := s.QueueIssuerJob(ctx, IssuerJobRequest{EID: eid, Domain: d, Op: OpStoreAccessRule,
		Params: ruleParams{Rules: []string{rule.ID}, Rule: hex.EncodeToString(g.Bytes())}, Actor: p.Actor(), Action: "access-rule.add",
		In: func(ctx context.Context, tx Repo) error {
			d, err := tx.GetDomain(ctx, eid, aid) // re-read inside the transaction
			if err != nil {
				return err
			}
			if d.State != Personalized || d.OwnerID != p.ProviderID {
				return fmt.Errorf("%w: domain is %s; access rules are for a PERSONALIZED domain", ErrConflict, d.State)
			}
			rules, err := tx.ListAccessRules(ctx, d.ID)
			if err != nil {
				return err
			}
			for _, o := range rules {
				if o.Hash == rule.Hash && o.Package == rule.Package {
					return fmt.Errorf("%w: rule %s already names this app for the domain (%s); delete it first", ErrConflict, o.ID, o.State)
				}
			}
			return tx.CreateAccessRule(ctx, &rule)
		}})
	if err != nil {
		return nil, nil, err
	}
	rule.JobRef = j.Ref
	return &rule, j, nil
}

// RequestAccessRule is AddAccessRule for a request as the API and the
// portal take it: the domain is checked first (another provider's is
// ErrNotFound whatever the body says), then the request.
func (s *Service) RequestAccessRule(ctx context.Context, p Principal, eid EID, aid AID, req AccessRuleRequest) (*AccessRule, *Job, error) {
	if _, err := s.ownDomain(ctx, p, eid, aid); err != nil {
		return nil, nil, err
	}
	r, err := req.Rule()
	if err != nil {
		return nil, nil, err
	}
	return s.AddAccessRule(ctx, p, eid, aid, r)
}

// ownDomain is the caller's PERSONALIZED domain; another provider's is
// ErrNotFound, one in another state ErrConflict.
func (s *Service) ownDomain(ctx context.Context, p Principal, eid EID, aid AID) (*Domain, error) {
	if p.ProviderID == "" {
		return nil, fmt.Errorf("%w: only the domain's provider sets its access rules", ErrForbidden)
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	if d.State != Personalized {
		return nil, fmt.Errorf("%w: domain is %s; access rules are for a PERSONALIZED domain", ErrConflict, d.State)
	}
	return d, nil
}

// ListAccessRules lists a domain's rules (REMOVED ones left out) for its
// provider, or for an admin.
func (s *Service) ListAccessRules(ctx context.Context, p Principal, eid EID, aid AID) ([]AccessRule, error) {
	if !p.Admin && p.ProviderID == "" {
		return nil, ErrForbidden
	}
	d, err := s.Store.GetDomain(ctx, eid, aid)
	if err != nil {
		return nil, err
	}
	if !p.Admin && d.OwnerID != p.ProviderID {
		return nil, ErrNotFound
	}
	return s.Store.ListAccessRules(ctx, d.ID)
}

// DeleteAccessRule queues the issuer job that deletes rule id from the
// module's ARA-M; the rule is DELETING until the read-back no longer shows
// it, then REMOVED. A rule already DELETING is returned as it is.
func (s *Service) DeleteAccessRule(ctx context.Context, p Principal, eid EID, aid AID, id string) (*AccessRule, *Job, error) {
	d, err := s.ownDomain(ctx, p, eid, aid)
	if err != nil {
		return nil, nil, err
	}
	if !strings.HasPrefix(id, "acr_") || len(id) > 64 {
		return nil, nil, ErrNotFound
	}
	r, err := s.Store.GetAccessRule(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if r.DomainID != d.ID || r.State == RuleRemoved {
		return nil, nil, ErrNotFound
	}
	if r.State == RuleDeleting {
		return r, nil, nil
	}
	g, err := r.Card()
	if err != nil {
		return nil, nil, err
	}
	j, err := s.QueueIssuerJob(ctx, IssuerJobRequest{EID: eid, Domain: d, Op: OpDeleteAccessRule,
		Params: ruleParams{Rules: []string{r.ID}, Rule: hex.EncodeToString(g.Bytes())}, Actor: p.Actor(), Action: "access-rule.delete"})
	if err != nil {
		return nil, nil, err
	}
	r.State, r.JobRef = RuleDeleting, j.Ref
	return r, j, nil
}

// RemoveDomainAccessRules queues the issuer job that deletes every ARA-M
// rule of domain d's AID (Command-Delete by AID-REF-DO), whether keyport
// knows of it or not, and confirms by read-back that none is left; the
// domain's rules are DELETING meanwhile and REMOVED when the job is DONE.
// Release calls it before the SSD is deleted: an app must not keep access
// to an AID the next owner gets.
func (s *Service) RemoveDomainAccessRules(ctx context.Context, actor string, d *Domain) (*Job, error) {
	return s.QueueIssuerJob(ctx, IssuerJobRequest{EID: d.EID, Domain: d, Op: OpRemoveDomainAccessRules,
		Params: ruleParams{AID: d.AID}, Actor: actor, Action: "access-rule.remove-all"})
}
