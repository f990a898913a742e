package smpp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is an ESME's account at an SMSC and its traffic limits.
type Config struct {
	Addr       string // host:port
	SystemID   string
	Password   string // never printed: String and errors redact it
	SystemType string
	// Source is the source address of submitted messages (the OTA
	// platform's short code or MSISDN), with its TON and NPI.
	Source               string
	SourceTON, SourceNPI byte
	// DestTON and DestNPI describe the MSISDNs given to Send (default
	// international, E.164: 1 and 1).
	DestTON, DestNPI byte

	// Window is how many submit_sm may await their response at once.
	Window int
	// Rate is the most submit_sm a second (the operator's contracted
	// throughput); 0 does not limit.
	Rate float64
	// EnquireLink is the idle interval between enquire_link probes.
	EnquireLink time.Duration
	// ResponseTimeout is how long a request waits for its response before
	// the connection is taken for dead and a new one is bound.
	ResponseTimeout time.Duration
	// MinBackoff and MaxBackoff bound the waits between binds and between
	// sends of a submit the SMSC refused for now.
	MinBackoff, MaxBackoff time.Duration
	// MaxAttempts is how often a submit is sent before Send gives up.
	// Sends refused with a temporary status count, and so do sends whose
	// link was lost before their response; of those, only one is sent
	// again (the SMSC may have taken it).
	MaxAttempts int
}

// The defaults ParseURL applies.
const (
	DefaultPort            = 2775
	DefaultWindow          = 10
	DefaultEnquireLink     = 30 * time.Second
	DefaultResponseTimeout = 10 * time.Second
	DefaultMinBackoff      = 200 * time.Millisecond
	DefaultMaxBackoff      = 30 * time.Second
	DefaultMaxAttempts     = 5
)

// ParseURL reads smpp://system_id:password@host[:port]?source=…
//
// Query parameters: source, source_ton, source_npi, dest_ton, dest_npi,
// system_type, window, rate (submits a second), enquire_link, timeout,
// min_backoff, max_backoff (Go durations), attempts. Errors never quote
// the URL, which holds the password.
func ParseURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error quotes the whole input; say only what is wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Config{}, fmt.Errorf("smpp: URL: %v", redactErr(err, s))
	}
	if u.Scheme != "smpp" {
		return Config{}, fmt.Errorf("smpp: URL scheme %q, want smpp", u.Scheme)
	}
	if u.User == nil || u.User.Username() == "" {
		return Config{}, errors.New("smpp: URL has no system_id (smpp://system_id:password@host)")
	}
	pw, _ := u.User.Password()
	c := Config{
		SystemID:        u.User.Username(),
		Password:        pw,
		SourceTON:       0,
		SourceNPI:       0,
		DestTON:         1,
		DestNPI:         1,
		Window:          DefaultWindow,
		EnquireLink:     DefaultEnquireLink,
		ResponseTimeout: DefaultResponseTimeout,
		MinBackoff:      DefaultMinBackoff,
		MaxBackoff:      DefaultMaxBackoff,
		MaxAttempts:     DefaultMaxAttempts,
	}
	host := u.Hostname()
	if host == "" {
		return Config{}, errors.New("smpp: URL has no host")
	}
	port := u.Port()
	if port == "" {
		port = strconv.Itoa(DefaultPort)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return Config{}, fmt.Errorf("smpp: URL port %q", port)
	}
	c.Addr = net.JoinHostPort(host, port)
	if u.Path != "" && u.Path != "/" {
		return Config{}, errors.New("smpp: URL has a path; put parameters in the query")
	}
	q := u.Query()
	for k, vs := range q {
		if len(vs) != 1 {
			return Config{}, fmt.Errorf("smpp: URL parameter %s given %d times", k, len(vs))
		}
		v := vs[0]
		var err error
		switch k {
		case "source":
			c.Source = v
		case "system_type":
			c.SystemType = v
		case "source_ton":
			c.SourceTON, err = parseOctet(v)
		case "source_npi":
			c.SourceNPI, err = parseOctet(v)
		case "dest_ton":
			c.DestTON, err = parseOctet(v)
		case "dest_npi":
			c.DestNPI, err = parseOctet(v)
		case "window":
			c.Window, err = strconv.Atoi(v)
		case "rate":
			c.Rate, err = strconv.ParseFloat(v, 64)
		case "enquire_link":
			c.EnquireLink, err = time.ParseDuration(v)
		case "timeout":
			c.ResponseTimeout, err = time.ParseDuration(v)
		case "min_backoff":
			c.MinBackoff, err = time.ParseDuration(v)
		case "max_backoff":
			c.MaxBackoff, err = time.ParseDuration(v)
		case "attempts":
			c.MaxAttempts, err = strconv.Atoi(v)
		default:
			return Config{}, fmt.Errorf("smpp: unknown URL parameter %q", k)
		}
		if err != nil {
			return Config{}, fmt.Errorf("smpp: URL parameter %s: %q is not valid", k, v)
		}
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func parseOctet(v string) (byte, error) {
	n, err := strconv.ParseUint(v, 0, 8)
	return byte(n), err
}

// redactErr keeps an error from a URL parser free of the input.
func redactErr(err error, s string) string {
	msg := err.Error()
	if s != "" && strings.Contains(msg, s) {
		return "malformed"
	}
	if u, perr := url.Parse(s); perr == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" && strings.Contains(msg, pw) {
			return "malformed"
		}
	}
	// The parser's messages quote fragments (a bad port, an escape); the
	// fragment may be part of the password.
	if i := strings.IndexByte(msg, '"'); i >= 0 {
		return msg[:i] + "…"
	}
	return msg
}

// Validate checks the fields ParseURL cannot: lengths of the C-Octet
// strings (§4.1) and sane limits.
func (c Config) Validate() error {
	switch {
	case c.Addr == "":
		return errors.New("smpp: no SMSC address")
	case c.SystemID == "" || len(c.SystemID) > maxSystemID-1:
		return fmt.Errorf("smpp: system_id must be 1 to %d octets", maxSystemID-1)
	case len(c.Password) > maxPassword-1:
		return fmt.Errorf("smpp: password longer than %d octets", maxPassword-1)
	case len(c.SystemType) > maxSystemType-1:
		return fmt.Errorf("smpp: system_type longer than %d octets", maxSystemType-1)
	case len(c.Source) > maxAddr-1:
		return fmt.Errorf("smpp: source address longer than %d octets", maxAddr-1)
	case c.Window < 1 || c.Window > 1000:
		return fmt.Errorf("smpp: window must be 1 to 1000, got %d", c.Window)
	case c.Rate < 0:
		return fmt.Errorf("smpp: rate must not be negative, got %g", c.Rate)
	case c.EnquireLink <= 0 || c.ResponseTimeout <= 0:
		return errors.New("smpp: enquire_link and timeout must be positive")
	case c.MinBackoff <= 0 || c.MaxBackoff < c.MinBackoff:
		return errors.New("smpp: min_backoff must be positive and at most max_backoff")
	case c.MaxAttempts < 1:
		return fmt.Errorf("smpp: attempts must be at least 1, got %d", c.MaxAttempts)
	}
	return nil
}

// String is the URL with the password replaced by "xxxxx", for logs.
func (c Config) String() string {
	u := url.URL{Scheme: "smpp", Host: c.Addr}
	if c.Password != "" {
		u.User = url.UserPassword(c.SystemID, "xxxxx")
	} else {
		u.User = url.User(c.SystemID)
	}
	if c.Source != "" {
		u.RawQuery = url.Values{"source": {c.Source}}.Encode()
	}
	return u.String()
}

// GoString keeps the password out of %#v.
func (c Config) GoString() string { return c.String() }

// LogValue keeps the password out of structured logs.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }
