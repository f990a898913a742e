package tlspsk

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Protocol versions, with the wire values of RFC 5246 §6.2.1 (the same
// numbers as crypto/tls's VersionTLS1x constants).
const (
	VersionTLS10 uint16 = 0x0301
	VersionTLS11 uint16 = 0x0302
	VersionTLS12 uint16 = 0x0303
	VersionTLS13 uint16 = 0x0304 // RFC 8446 (only with TLS13 set)
)

// DefaultCiphersuites is the TLS 1.3 suite list used when a config with
// TLS13 leaves Ciphersuites empty: TLS_AES_128_GCM_SHA256 ('1301', RFC
// 8446 B.4). TLS 1.3 suites are an OpenSSL list of their own
// (SSL_CTX_set_ciphersuites); only SHA-256 suites can carry the external
// PSK here (TLS_AES_128_GCM_SHA256, TLS_AES_128_CCM_SHA256,
// TLS_CHACHA20_POLY1305_SHA256).
const DefaultCiphersuites = "TLS_AES_128_GCM_SHA256"

// DefaultCiphers is the cipher list used when a config leaves Ciphers
// empty and Legacy off, in the server's order of preference:
// TLS_PSK_WITH_AES_128_GCM_SHA256 ('00A8', RFC 5487 §3.1),
// TLS_PSK_WITH_AES_128_CCM ('C0A4', RFC 6655 §4) and
// TLS_PSK_WITH_AES_128_CBC_SHA256 ('00AE', RFC 5487 §3.2, the suite GP Amd B
// makes mandatory), all TLS 1.2 only.
const DefaultCiphers = "PSK-AES128-GCM-SHA256:PSK-AES128-CCM:PSK-AES128-CBC-SHA256"

// LegacyCiphers is the cipher list used when a config leaves Ciphers empty
// and turns Legacy on: DefaultCiphers, then TLS_PSK_WITH_AES_128_CBC_SHA
// ('008C', what otaman's card negotiated over TLS 1.0) and
// TLS_PSK_WITH_AES_256_CBC_SHA ('008D') (RFC 4279 §2). @SECLEVEL=0 is
// needed because OpenSSL 3 refuses TLS 1.0 and 1.1 at any higher security
// level.
const LegacyCiphers = DefaultCiphers + ":PSK-AES128-CBC-SHA:PSK-AES256-CBC-SHA:@SECLEVEL=0"

// DefaultHandshakeTimeout bounds a handshake when a config leaves
// HandshakeTimeout zero. A card on a slow bearer needs a few seconds; a
// peer that stays silent must not hold a session for ever.
const DefaultHandshakeTimeout = 60 * time.Second

// RFC 4279 §5.3 asks for identities and PSKs of at least 128 and 64 bytes;
// these are OpenSSL 3.0's limits (PSK_MAX_IDENTITY_LEN, PSK_MAX_PSK_LEN),
// less the identity's terminating NUL.
const (
	maxIdentityLen = 255
	maxPSKLen      = 512
)

// ServerConfig configures the admin-server side of a TLS-PSK session. It
// must not be modified once passed to Listen, NewListener or Server.
type ServerConfig struct {
	// PSK returns the pre-shared key for the identity the client sent in
	// its ClientKeyExchange (RFC 4279 §2). It runs during the handshake,
	// inside OpenSSL's PSK callback, on the goroutine doing the handshake;
	// it may block (an HSM or database lookup) but is not interrupted by
	// HandshakeTimeout. A non-nil error or an empty key refuses the
	// identity: the handshake goes on with a dummy key (derived from a
	// per-process random secret and the identity), so that it fails on the
	// client's Finished exactly as with a wrong PSK and the client sees
	// the same bad_record_mac alert either way (registered identities
	// cannot be told from unknown ones); on the server it fails with
	// ErrUnknownIdentity and the lookup's error. The returned slice is
	// copied into OpenSSL and then wiped (zeroed), so PSK must return a
	// slice of its own for each call (a freshly unsealed key, or a copy),
	// never one it keeps. Required.
	PSK func(identity string) (psk []byte, err error)

	// IdentityHint, when set, is sent in a ServerKeyExchange (RFC 4279
	// §2). SCP81 cards know their identity and usually get none.
	IdentityHint string

	// Ciphers is an OpenSSL cipher list; empty means DefaultCiphers, or
	// LegacyCiphers with Legacy. With Legacy and no @SECLEVEL in the
	// list, ":@SECLEVEL=0" is appended so that OpenSSL 3 accepts TLS 1.0
	// and 1.1.
	Ciphers string

	// MinVersion and MaxVersion bound the protocol version (VersionTLS10
	// to VersionTLS13); zero means VersionTLS12 (VersionTLS10 with Legacy)
	// and VersionTLS12 (VersionTLS13 with TLS13). A MinVersion below TLS
	// 1.2 needs Legacy; a MaxVersion of TLS 1.3 needs TLS13.
	MinVersion, MaxVersion uint16

	// TLS13 also offers TLS 1.3 with an external PSK (RFC 8446 2.2; GP
	// Amd B v1.2), next to TLS 1.2: the identity is the one of the
	// ClientHello's pre_shared_key extension, looked up with PSK as for
	// TLS 1.2, and the key is used with a SHA-256 suite of Ciphersuites.
	// No NewSessionTicket is sent; psk_ke (no (EC)DHE) is accepted from
	// clients that offer only that. Off (the default), TLS 1.2 is the
	// highest version.
	TLS13 bool

	// Ciphersuites is the OpenSSL TLS 1.3 suite list (used with TLS13);
	// empty means DefaultCiphersuites. SHA-256 suites only.
	Ciphersuites string

	// Legacy allows TLS 1.0 and 1.1 and the CBC-SHA suites (LegacyCiphers)
	// at OpenSSL security level 0, for modules whose profile needs them
	// (PROTOCOLS.md §3.5: otaman's card spoke TLS 1.0 with '008C'). Off,
	// only TLS 1.2 with DefaultCiphers is offered.
	Legacy bool

	// HandshakeTimeout bounds each handshake, on top of any context
	// deadline; zero means DefaultHandshakeTimeout, negative means none.
	HandshakeTimeout time.Duration
}

// ClientConfig configures the card side of a TLS-PSK session: the handset
// agent and load tests. It must not be modified once passed to Dial or
// Client.
type ClientConfig struct {
	// Identity is the PSK identity sent in the ClientKeyExchange (GP Amd B
	// session parameter tag 85). Required, 1 to 255 bytes, no NUL.
	Identity string

	// PSK is the pre-shared key, 1 to 512 bytes. Required.
	PSK []byte

	// Ciphers, MinVersion, MaxVersion, Legacy, TLS13, Ciphersuites and
	// HandshakeTimeout mean what they mean in ServerConfig. The client
	// offers Ciphers in this order; with TLS13 it offers TLS 1.3 with its
	// identity and key as an external PSK, and TLS 1.2 as well unless
	// MinVersion is VersionTLS13.
	Ciphers                string
	MinVersion, MaxVersion uint16
	Legacy                 bool
	TLS13                  bool
	Ciphersuites           string
	HandshakeTimeout       time.Duration
}

// ctxKey names one OpenSSL SSL_CTX: everything the SSL_CTX is built from.
// The PSK callback and key are per connection, not part of it.
type ctxKey struct {
	server       bool
	ciphers      string
	ciphersuites string
	minVersion   uint16
	maxVersion   uint16
	hint         string
}

func (c *ServerConfig) key() (ctxKey, error) {
	if c == nil {
		return ctxKey{}, errors.New("tlspsk: nil ServerConfig")
	}
	if c.PSK == nil {
		return ctxKey{}, errors.New("tlspsk: ServerConfig.PSK is nil")
	}
	if strings.IndexByte(c.IdentityHint, 0) >= 0 {
		return ctxKey{}, errors.New("tlspsk: ServerConfig.IdentityHint contains a NUL byte")
	}
	return buildKey(true, c.Legacy, c.TLS13, c.Ciphers, c.Ciphersuites, c.MinVersion, c.MaxVersion, c.IdentityHint)
}

func (c *ClientConfig) key() (ctxKey, error) {
	if c == nil {
		return ctxKey{}, errors.New("tlspsk: nil ClientConfig")
	}
	if c.Identity == "" || len(c.Identity) > maxIdentityLen || strings.IndexByte(c.Identity, 0) >= 0 {
		return ctxKey{}, fmt.Errorf("tlspsk: ClientConfig.Identity must be 1 to %d bytes without NUL", maxIdentityLen)
	}
	if len(c.PSK) == 0 || len(c.PSK) > maxPSKLen {
		return ctxKey{}, fmt.Errorf("tlspsk: ClientConfig.PSK must be 1 to %d bytes", maxPSKLen)
	}
	return buildKey(false, c.Legacy, c.TLS13, c.Ciphers, c.Ciphersuites, c.MinVersion, c.MaxVersion, "")
}

func buildKey(server, legacy, tls13 bool, ciphers, suites string, minV, maxV uint16, hint string) (ctxKey, error) {
	if minV == 0 {
		minV = VersionTLS12
		if legacy {
			minV = VersionTLS10
		}
	}
	if maxV == 0 {
		maxV = VersionTLS12
		if tls13 {
			maxV = VersionTLS13
		}
	}
	top, span := VersionTLS12, "TLS 1.0 to 1.2 (TLS 1.3 needs TLS13)"
	if tls13 {
		top, span = VersionTLS13, "TLS 1.0 to 1.3"
	}
	for _, v := range []uint16{minV, maxV} {
		if v < VersionTLS10 || v > top {
			return ctxKey{}, fmt.Errorf("tlspsk: protocol version %#04x is outside %s", v, span)
		}
	}
	if minV > maxV {
		return ctxKey{}, fmt.Errorf("tlspsk: MinVersion %#04x is above MaxVersion %#04x", minV, maxV)
	}
	if minV < VersionTLS12 && !legacy {
		return ctxKey{}, fmt.Errorf("tlspsk: MinVersion %#04x is below TLS 1.2: TLS 1.0 and 1.1 need Legacy", minV)
	}
	switch {
	case ciphers == "" && legacy:
		ciphers = LegacyCiphers
	case ciphers == "":
		ciphers = DefaultCiphers
	case legacy && !strings.Contains(ciphers, "@SECLEVEL"):
		ciphers += ":@SECLEVEL=0"
	}
	if strings.IndexByte(ciphers, 0) >= 0 {
		return ctxKey{}, errors.New("tlspsk: cipher list contains a NUL byte")
	}
	if maxV < VersionTLS13 {
		suites = "" // not used below TLS 1.3
	} else {
		if suites == "" {
			suites = DefaultCiphersuites
		}
		for _, s := range strings.Split(suites, ":") {
			if !strings.HasPrefix(s, "TLS_") || !strings.HasSuffix(s, "_SHA256") {
				return ctxKey{}, fmt.Errorf("tlspsk: TLS 1.3 suite %q: only SHA-256 suites can carry the PSK", s)
			}
		}
	}
	return ctxKey{server: server, ciphers: ciphers, ciphersuites: suites, minVersion: minV, maxVersion: maxV, hint: hint}, nil
}

func handshakeTimeout(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultHandshakeTimeout
	case d < 0:
		return 0
	}
	return d
}
