package web

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/keyport/keyport"
)

func errorsAs(err error, target any) bool { return errors.As(err, target) }

func pathEID(c echo.Context) (keyport.EID, error) { return keyport.ParseEID(c.Param("eid")) }

func pathDomain(c echo.Context) (keyport.EID, keyport.AID, error) {
	eid, err := pathEID(c)
	if err != nil {
		return "", "", err
	}
	aid, err := keyport.ParseAID(c.Param("aid"))
	return eid, aid, err
}

// DomainJSON is a domain as the API shows it.
type DomainJSON struct {
	EID       keyport.EID                 `json:"eid"`
	AID       keyport.AID                 `json:"aid"`
	KVN       int                         `json:"kvn"`
	State     keyport.DomainState         `json:"state"`
	KeySource keyport.KeySource           `json:"key_source"`
	KCV       map[keyport.KeyUsage]string `json:"kcv,omitempty"`
	// SequenceCounter is null while the counter is resynchronizing.
	SequenceCounter *int `json:"sequence_counter"`
	// SequenceCounterState is "known", or "resynchronizing" while keyport
	// re-reads the counter in the module's next admin session.
	SequenceCounterState string `json:"sequence_counter_state"`
	// PendingKeys are the key sets the card may hold instead of KVN after
	// a key change (a rotation, or an ASSIGNED domain's second-key
	// script) whose outcome is unproven: a rotation from one of them is
	// accepted too. Only GET /api/v1/domains/{eid}/{aid} reports them,
	// to the domain's owner and the issuer.
	PendingKeys []keyport.PendingKeys `json:"pending_keys,omitempty"`
	Mine        bool                  `json:"mine"`
	UpdatedAt   time.Time             `json:"updated_at"`
	// Demo is true on a demo server (keyport demo): demo data.
	Demo bool `json:"demo,omitempty"`
}

func domainJSON(p keyport.Principal, d keyport.Domain) DomainJSON {
	j := DomainJSON{EID: d.EID, AID: d.AID, KVN: d.KVN, State: d.State, KeySource: d.KeySource,
		SequenceCounterState: d.CounterState(), Mine: d.OwnerID != "" && d.OwnerID == p.ProviderID, UpdatedAt: d.UpdatedAt}
	if !d.SeqUnverified {
		n := d.SeqCounter
		j.SequenceCounter = &n
	}
	// KCVs identify the first keys; only their holder (or the issuer) sees them.
	if j.Mine || p.Admin {
		j.KCV = d.KCV
		j.PendingKeys = d.Pending
	}
	return j
}

func (s *Server) getModule(c echo.Context) error {
	eid, err := pathEID(c)
	if err != nil {
		return err
	}
	p := principal(c)
	v, err := s.svc.LookupModule(c.Request().Context(), p, eid)
	if err != nil {
		return err
	}
	out := struct {
		EID         keyport.EID  `json:"eid"`
		ISDAID      keyport.AID  `json:"isd_aid"`
		LastSeen    *time.Time   `json:"last_seen"`
		PendingJobs int          `json:"pending_jobs"`
		Domains     []DomainJSON `json:"domains"`
		Demo        bool         `json:"demo,omitempty"`
		MSISDN      string       `json:"msisdn,omitempty"`
	}{EID: v.EID, ISDAID: v.ISDAID, LastSeen: v.LastSeen, PendingJobs: v.PendingJobs, Domains: []DomainJSON{}, Demo: s.opts.Demo, MSISDN: v.MSISDN}
	for _, d := range v.Domains {
		j := domainJSON(p, d)
		j.Demo = s.opts.Demo
		out.Domains = append(out.Domains, j)
	}
	return c.JSON(http.StatusOK, out)
}

// postWrappingKey takes the key as a PEM body (application/x-pem-file) or
// as JSON {"public_key_pem": "..."}.
func (s *Server) postWrappingKey(c echo.Context) error {
	mt, _, _ := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	var pemData []byte
	switch mt {
	case "application/x-pem-file", "application/pkix-spki", "text/plain":
		b, err := io.ReadAll(http.MaxBytesReader(c.Response(), c.Request().Body, maxJSONBody))
		if err != nil {
			return err
		}
		pemData = b
	default:
		var in struct {
			PublicKeyPEM string `json:"public_key_pem"`
		}
		if err := readJSON(c, &in); err != nil {
			return err
		}
		pemData = []byte(in.PublicKeyPEM)
	}
	k, err := s.svc.RegisterWrappingKey(c.Request().Context(), principal(c), pemData)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"id": k.ID, "sha256": k.SHA256, "bits": k.Bits, "created_at": k.CreatedAt})
}

// readClaimRequest reads the body of a claim (POST /api/v1/claims and its
// sandbox twin) and its Idempotency-Key header.
func readClaimRequest(c echo.Context) (keyport.ClaimRequest, error) {
	var in struct {
		EID           string `json:"eid"`
		AID           string `json:"aid"`
		WrappingKeyID string `json:"wrapping_key_id"`
	}
	if err := readJSON(c, &in); err != nil {
		return keyport.ClaimRequest{}, err
	}
	req := keyport.ClaimRequest{WrappingKeyID: in.WrappingKeyID, IdempotencyKey: c.Request().Header.Get("Idempotency-Key")}
	var err error
	if req.EID, err = keyport.ParseEID(in.EID); err != nil {
		return keyport.ClaimRequest{}, err
	}
	if in.AID != "" {
		if req.AID, err = keyport.ParseAID(in.AID); err != nil {
			return keyport.ClaimRequest{}, err
		}
	}
	if req.WrappingKeyID == "" {
		return keyport.ClaimRequest{}, keyport.Invalid("wrapping_key_id", "missing: register a key at /api/v1/wrapping-keys first")
	}
	return req, nil
}

func (s *Server) postClaim(c echo.Context) error {
	if principal(c).ProviderID == "" {
		return keyport.ErrForbidden // before the body: an admin token cannot claim
	}
	req, err := readClaimRequest(c)
	if err != nil {
		return err
	}
	claim, created, err := s.svc.Claim(c.Request().Context(), principal(c), req)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if !created {
		status = http.StatusOK
	}
	loc := "/api/v1/domains/" + string(claim.EID) + "/" + string(claim.AID)
	c.Response().Header().Set("Location", loc)
	return c.JSON(status, map[string]any{"id": claim.ID, "eid": claim.EID, "aid": claim.AID, "state": keyport.Assigned,
		"wrapping_key_id": claim.WrappingKeyID, "created_at": claim.CreatedAt, "key_package": loc + "/key-package"})
}

func (s *Server) listDomains(c echo.Context) error {
	p := principal(c)
	ds, err := s.svc.ListDomains(c.Request().Context(), p)
	if err != nil {
		return err
	}
	out := []DomainJSON{}
	for _, d := range ds {
		out = append(out, domainJSON(p, d))
	}
	return c.JSON(http.StatusOK, map[string]any{"domains": out})
}

func (s *Server) getDomain(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	p := principal(c)
	d, err := s.svc.GetDomain(c.Request().Context(), p, eid, aid)
	if err != nil {
		return err
	}
	j := domainJSON(p, *d)
	j.Demo = s.opts.Demo
	return c.JSON(http.StatusOK, j)
}

func (s *Server) getKeyPackage(c echo.Context) error {
	eid, aid, err := pathDomain(c)
	if err != nil {
		return err
	}
	pkg, err := s.svc.KeyPackage(c.Request().Context(), principal(c), eid, aid)
	if err != nil {
		return err
	}
	c.Response().Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="keyport-%s-%s.jws.json"`, eid, aid))
	return c.Blob(http.StatusOK, "application/jose+json", pkg)
}

// postBatch creates a batch: {"name","aid_prefix"?,"manufacturer_public_key_pem"?}.
// With a manufacturer key the batch is an imported one and the response
// carries the wrapped transport key for the manufacturer.
func (s *Server) postBatch(c echo.Context) error {
	var in struct {
		Name         string `json:"name"`
		AIDPrefix    string `json:"aid_prefix"`
		Manufacturer string `json:"manufacturer_public_key_pem"`
	}
	if err := readJSON(c, &in); err != nil {
		return err
	}
	var prefix keyport.AID
	if in.AIDPrefix != "" {
		var err error
		if prefix, err = keyport.ParseAID(in.AIDPrefix); err != nil {
			return err
		}
	}
	var export *keyport.TransportKeyExport
	var b *keyport.Batch
	var err error
	if in.Manufacturer != "" {
		pub, perr := keyport.ParsePublicKeyPEM([]byte(in.Manufacturer))
		if perr != nil {
			return perr
		}
		b, export, err = s.svc.CreateBatch(c.Request().Context(), principal(c), in.Name, prefix, pub)
	} else {
		b, export, err = s.svc.CreateBatch(c.Request().Context(), principal(c), in.Name, prefix, nil)
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"name": b.Name, "key_source": b.KeySource, "transport_key": export})
}

// postModules imports a manufacturer's JSON Lines file into a batch. The
// body is spooled to a temporary file so that it can be validated whole
// before anything is stored; the token is checked again once it is in.
func (s *Server) postModules(c echo.Context) error {
	extendDeadlines(c, importDeadline)
	mt, _, _ := mime.ParseMediaType(c.Request().Header.Get(echo.HeaderContentType))
	switch mt {
	case "application/x-ndjson", "application/jsonl", "application/json-lines", "text/plain":
	default:
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, "send the modules as JSON Lines (application/x-ndjson)")
	}
	verify := keyport.VerifyMode(c.QueryParam("verify"))
	f, done, err := spoolBody(s.opts.SpoolDir, "keyport-import-*.jsonl", http.MaxBytesReader(c.Response(), c.Request().Body, maxImportBody))
	if err != nil {
		return err
	}
	defer done()
	if err := stillAuthenticated(c); err != nil {
		return err
	}
	n, err := s.svc.ImportModules(c.Request().Context(), principal(c), c.Param("name"), f, verify)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"batch": c.Param("name"), "modules": n})
}

func (s *Server) listAudit(c echo.Context) error {
	after, _ := strconv.ParseInt(c.QueryParam("after"), 10, 64)
	limit, _ := strconv.Atoi(c.QueryParam("limit"))
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	evs, err := s.svc.AuditEvents(c.Request().Context(), principal(c), after, limit)
	if err != nil {
		return err
	}
	if evs == nil {
		evs = []keyport.AuditEvent{}
	}
	return c.JSON(http.StatusOK, map[string]any{"events": evs})
}

func (s *Server) verifyAudit(c echo.Context) error {
	r, err := s.svc.VerifyAudit(c.Request().Context())
	var broken *keyport.AuditBroken
	if errors.As(err, &broken) {
		return c.JSON(http.StatusOK, map[string]any{"ok": false, "row": broken.Seq, "reason": broken.Reason})
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"ok": true, "events": r.Events, "checkpoints": r.Checkpoints, "head": fmt.Sprintf("%x", r.Head),
		"keyed_head": r.Keyed})
}
