package tlspsk

// LiveSessions reports how many OpenSSL sessions (SSL + BIOs + handle) are
// allocated and not yet freed.
func LiveSessions() int64 { return liveSessions.Load() }

// SSLOptions returns SSL_get_options of the connection, 0 after Close.
func (c *Conn) SSLOptions() uint64 {
	c.sslMu.Lock()
	defer c.sslMu.Unlock()
	if c.s == nil {
		return 0
	}
	return c.s.options()
}

// OpenSSL option bits (openssl/ssl.h) that tests check.
const (
	OpNoTicket                = 1 << 14
	OpNoEncryptThenMAC        = 1 << 19
	OpCipherServerPreference  = 1 << 22
	OpNoRenegotiation         = 1 << 30
	OpNoCompression           = 1 << 17
	OpDontInsertEmptyFragment = 1 << 11
)
