// Package tlspsk is keyport's TLS-PSK transport for GlobalPlatform
// Amendment B "RAM over HTTPS" (SCP81) admin sessions: a card's security
// domain opens a TCP connection over BIP and runs a TLS handshake with a
// pre-shared key (RFC 4279), the PSK being the SD key of type '85'
// (PROTOCOLS.md §3.1, §3.5). TLS 1.2 only by default (DefaultCiphers);
// TLS 1.0 and 1.1 and the CBC-SHA suites with Legacy (LegacyCiphers); TLS
// 1.3 with an external PSK (RFC 8446 §2.2, GP Amd B v1.2) next to TLS 1.2
// with TLS13 (DefaultCiphersuites; OpenSSL's psk_find_session and
// psk_use_session callbacks, the key carried as a SHA-256 session).
//
// Go's crypto/tls has no PSK cipher suites (PROTOCOLS.md §6), so the TLS
// state machine here is OpenSSL 3's libssl, reached through cgo. Go keeps
// the socket: libssl reads and writes two memory BIOs and this package moves
// bytes between them and any net.Conn, so deadlines, contexts and net.Pipe
// work as they do for crypto/tls, and no file descriptor is shared with C.
//
// What comes in: a net.Conn (or an address) and a ServerConfig or
// ClientConfig. What goes out: a *Conn, which is a net.Conn carrying the
// decrypted stream, plus the PSK identity the peer used, the negotiated
// cipher suite and protocol version.
//
// Behaviour fixed for cards (PROTOCOLS.md §3.5, from otaman's live card):
// no session tickets, no encrypt_then_mac, the server's cipher order wins,
// no compression, no renegotiation, no session resumption (no TLS 1.3
// NewSessionTicket either), and a Write of
// at most 16 KiB goes out as exactly one TLS record, so that one HTTP
// response fits in one record. Close sends close_notify. A server never
// sends unknown_psk_identity: an identity its PSK callback refuses fails
// the handshake exactly as a wrong PSK does (ServerConfig.PSK).
//
// OpenSSL's error queue is per OS thread and goroutines move between
// threads, so every libssl call is wrapped in C (shim.c) to clear the queue,
// make the call and collect the queue within one cgo call, on one thread.
// Failures come back as *Error, matching ErrUnknownIdentity or
// ErrPSKMismatch where OpenSSL's reason codes say so. No error carries a key.
//
// Each Conn owns one OpenSSL SSL object and its two BIOs; Close frees them,
// and a runtime cleanup frees those of a Conn dropped without Close.
package tlspsk
