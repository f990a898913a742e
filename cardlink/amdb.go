package cardlink

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// GlobalPlatform Amendment B ("RAM over HTTP", SCP81) HTTP vocabulary
// (PROTOCOLS.md §3.3; vectors/ram_http.json "headers").
const (
	HeaderProtocol     = "X-Admin-Protocol"
	HeaderFrom         = "X-Admin-From"
	HeaderNextURI      = "X-Admin-Next-URI"
	HeaderTarget       = "X-Admin-Targeted-Application"
	HeaderResume       = "X-Admin-Resume"
	HeaderScriptStatus = "X-Admin-Script-Status"

	// Protocol is the X-Admin-Protocol value of every request and response.
	Protocol = "globalplatform-remote-admin/1.0"
	// ContentTypeScript is the media type of a command script (server to card).
	ContentTypeScript = "application/vnd.globalplatform.card-content-mgt;version=1.0"
	// ContentTypeResponse is the media type of a response script (card to server).
	ContentTypeResponse = "application/vnd.globalplatform.card-content-mgt-response;version=1.0"
)

// Script statuses a card reports in X-Admin-Script-Status (PROTOCOLS.md §3.3).
const (
	StatusOK                 = "ok"
	StatusUnknownApplication = "unknown-application"
	StatusNotASecurityDomain = "not-a-security-domain"
	StatusSecurityError      = "security-error"
)

// MaxBody bounds a card's request body: a response script to a script
// that fits one TLS record. A larger body is answered 413.
const MaxBody = 64 << 10

// DefaultMaxHeaderBytes bounds a request's line and header fields when
// AdminServerConfig.MaxHeaderBytes is zero. A larger head is answered 431.
const DefaultMaxHeaderBytes = 16 << 10

// AdminRequestReader reads the requests of one connection in bounded
// memory: the request line and header fields of each request may take at
// most maxHeader bytes (plus the read-ahead of one 4 KiB buffer, as in
// net/http), the body MaxBody.
type AdminRequestReader struct {
	lr        headerLimiter
	br        *bufio.Reader
	maxHeader int64
}

// NewAdminRequestReader returns a reader of the requests on r whose heads
// are limited to maxHeader bytes (DefaultMaxHeaderBytes if it is 0 or less).
func NewAdminRequestReader(r io.Reader, maxHeader int) *AdminRequestReader {
	if maxHeader <= 0 {
		maxHeader = DefaultMaxHeaderBytes
	}
	rr := &AdminRequestReader{lr: headerLimiter{r: r}, maxHeader: int64(maxHeader)}
	rr.br = bufio.NewReader(&rr.lr)
	return rr
}

// bufSlack is what the bufio.Reader may read ahead of the head.
const bufSlack = 4096

// Read reads and checks the next request, as ReadAdminRequest does; a head
// over the limit is a *RequestError with status 431.
func (r *AdminRequestReader) Read() (*AdminRequest, error) {
	r.lr.n = r.maxHeader + bufSlack
	req, err := readRequest(r.br, func() { r.lr.n = -1 })
	if err != nil && r.lr.n == 0 {
		return nil, badRequest(http.StatusRequestHeaderFieldsTooLarge, "request header larger than %d bytes", r.maxHeader)
	}
	return req, err
}

// headerLimiter reads from r until n bytes were read (n < 0: no limit).
type headerLimiter struct {
	r io.Reader
	n int64
}

var errHeaderTooLarge = errors.New("cardlink: request header too large")

func (l *headerLimiter) Read(p []byte) (int, error) {
	if l.n == 0 {
		return 0, errHeaderTooLarge
	}
	if l.n > 0 && int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	if l.n > 0 {
		l.n -= int64(n)
	}
	return n, err
}

// AdminRequest is one card POST of an Amendment B dialog.
type AdminRequest struct {
	// URI is the request target as sent: the admin URI (param 8C) on the
	// first POST, then the X-Admin-Next-URI echoed verbatim.
	URI string
	// From is the agent ID (X-Admin-From, param 8B).
	From string
	// Resume is X-Admin-Resume: true, the card re-navigating the last URI
	// after a broken session.
	Resume bool
	// ScriptStatus is X-Admin-Script-Status; empty on a POST that answers
	// no script.
	ScriptStatus string
	// Body is the response script (AF/AB), decoded from Content-Length or
	// chunked framing; nil when there is none.
	Body []byte
}

// RequestError is a request the server refuses, with the HTTP status to
// answer and a reason for the card's log (and the operator's).
type RequestError struct {
	Status int
	Reason string
}

// Error says what was wrong with the request and which status answers it.
func (e *RequestError) Error() string {
	return fmt.Sprintf("cardlink: bad admin request (%d): %s", e.Status, e.Reason)
}

func badRequest(status int, format string, args ...any) error {
	return &RequestError{Status: status, Reason: fmt.Sprintf(format, args...)}
}

// ReadAdminRequest reads one HTTP/1.1 request from br and checks it against
// Amendment B: method POST, X-Admin-Protocol, the response-script content
// type whenever there is a body, a known script status. Bodies may use
// Content-Length or chunked framing and are limited to MaxBody. It returns
// io.EOF when the peer closed between requests, a *RequestError for a
// request the card got wrong, and other errors for a broken connection.
//
// It does not limit the header: a connection's requests are read with an
// AdminRequestReader, which does.
func ReadAdminRequest(br *bufio.Reader) (*AdminRequest, error) {
	return readRequest(br, func() {})
}

// readRequest is ReadAdminRequest; headDone runs once the head is read,
// before the body.
func readRequest(br *bufio.Reader, headDone func()) (*AdminRequest, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		var ne interface{ Timeout() bool }
		if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, err
		}
		return nil, badRequest(http.StatusBadRequest, "not an HTTP/1.1 request: %v", err)
	}
	headDone()
	defer req.Body.Close()
	body, err := io.ReadAll(io.LimitReader(req.Body, MaxBody+1))
	if err != nil {
		return nil, badRequest(http.StatusBadRequest, "body: %v", err)
	}
	if len(body) > MaxBody {
		return nil, badRequest(http.StatusRequestEntityTooLarge, "body larger than %d bytes", MaxBody)
	}
	return checkAdminRequest(req, body)
}

func checkAdminRequest(req *http.Request, body []byte) (*AdminRequest, error) {
	if req.Method != http.MethodPost {
		return nil, badRequest(http.StatusMethodNotAllowed, "method %s: an admin agent POSTs", req.Method)
	}
	if p := req.Header.Get(HeaderProtocol); p != Protocol {
		return nil, badRequest(http.StatusBadRequest, "%s is %q, want %q", HeaderProtocol, p, Protocol)
	}
	r := &AdminRequest{URI: req.RequestURI, From: req.Header.Get(HeaderFrom)}
	switch v := strings.ToLower(req.Header.Get(HeaderResume)); v {
	case "", "false":
	case "true":
		r.Resume = true
	default:
		return nil, badRequest(http.StatusBadRequest, "%s is %q, want true or false", HeaderResume, v)
	}
	r.ScriptStatus = req.Header.Get(HeaderScriptStatus)
	switch r.ScriptStatus {
	case "", StatusOK, StatusUnknownApplication, StatusNotASecurityDomain, StatusSecurityError:
	default:
		return nil, badRequest(http.StatusBadRequest, "unknown %s %q", HeaderScriptStatus, r.ScriptStatus)
	}
	if len(body) > 0 {
		if err := checkMediaType(req.Header.Get("Content-Type"), ContentTypeResponse); err != nil {
			return nil, err
		}
		if r.ScriptStatus == "" {
			return nil, badRequest(http.StatusBadRequest, "a response script without %s", HeaderScriptStatus)
		}
		r.Body = body
	}
	return r, nil
}

// checkMediaType compares a Content-Type with an Amendment B media type,
// ignoring case and parameter spacing; the version parameter must match.
func checkMediaType(got, want string) error {
	gmt, gp, err := mime.ParseMediaType(got)
	wmt, wp, _ := mime.ParseMediaType(want)
	if err != nil || gmt != wmt || gp["version"] != wp["version"] {
		return badRequest(http.StatusUnsupportedMediaType, "Content-Type %q, want %q", got, want)
	}
	return nil
}

// AdminResponse is one server answer of an Amendment B dialog.
type AdminResponse struct {
	// Status is 200 with a script, 204 to end the session, or an error.
	Status int
	// NextURI is X-Admin-Next-URI: where the card posts the script's
	// response. A 200 without it ends the session after the script.
	NextURI string
	// Target is X-Admin-Targeted-Application (//aid/RID/PIX), for a script
	// aimed at an SD other than the one holding the PSK.
	Target string
	// Body is the command script (200) or the reason (errors).
	Body []byte
	// ContentType overrides the script media type (wake-up answers).
	ContentType string
	// Chunked frames the body in chunks of ChunkSize bytes (default 100,
	// as the reference server did) instead of Content-Length.
	Chunked   bool
	ChunkSize int
	// Close adds Connection: close.
	Close bool
	// End says the session is over (the final 204): the server sends
	// close_notify and closes the connection after it (PROTOCOLS.md §3.5)
	// rather than waiting for the idle timeout. It changes nothing on the
	// wire before the close.
	End bool
}

// Bytes encodes the whole response, head and body, so that it is written
// with one Write and so goes out in one TLS record (PROTOCOLS.md §3.5).
func (r AdminResponse) Bytes() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", r.Status, http.StatusText(r.Status))
	fmt.Fprintf(&b, "%s: %s\r\n", HeaderProtocol, Protocol)
	if r.NextURI != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", HeaderNextURI, r.NextURI)
	}
	if r.Target != "" {
		fmt.Fprintf(&b, "%s: %s\r\n", HeaderTarget, r.Target)
	}
	if r.Close {
		b.WriteString("Connection: close\r\n")
	}
	if r.Status == http.StatusNoContent {
		b.WriteString("\r\n")
		return b.Bytes()
	}
	ct := r.ContentType
	if ct == "" {
		ct = ContentTypeScript
		if r.Status != http.StatusOK {
			ct = "text/plain; charset=utf-8"
		}
	}
	fmt.Fprintf(&b, "Content-Type: %s\r\n", ct)
	if !r.Chunked {
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n", len(r.Body))
		b.Write(r.Body)
		return b.Bytes()
	}
	b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	size := r.ChunkSize
	if size <= 0 {
		size = 100
	}
	for body := r.Body; len(body) > 0; {
		n := min(size, len(body))
		b.WriteString(strconv.FormatInt(int64(n), 16) + "\r\n")
		b.Write(body[:n])
		b.WriteString("\r\n")
		body = body[n:]
	}
	b.WriteString("0\r\n\r\n")
	return b.Bytes()
}
