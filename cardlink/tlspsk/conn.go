package tlspsk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// maxPlaintext is the largest record payload (RFC 5246 §6.2.1: 2^14). A
// Write is cut at this size, so each piece is one record.
const maxPlaintext = 16384

// readBufSize holds the largest TLS 1.2 record (header, 2^14 + 2048).
const readBufSize = 5 + maxPlaintext + 2048

// closeNotifyTimeout bounds the close_notify write in Close, so that a
// peer that stopped reading cannot block Close.
const closeNotifyTimeout = 5 * time.Second

// aLongTimeAgo is a deadline in the past, used to interrupt blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// Conn is one side of a TLS-PSK connection over a net.Conn. It implements
// net.Conn; Read and Write run the handshake first if Handshake was not
// called. One goroutine may Read while another Writes; Close may be called
// from any goroutine.
type Conn struct {
	// Locks, in acquisition order: hsMu (the handshake), then readMu
	// (Read may take writeMu after it to send an alert) or writeMu, then
	// sslMu (every call on the SSL object, which is not thread safe, held
	// for the call only, never across network I/O). Bytes OpenSSL produces
	// are drained from the memory BIO and written to the network under one
	// writeMu hold, which keeps records in sequence-number order on the
	// wire.

	conn   net.Conn
	key    ctxKey
	keyErr error
	psk    *pskState
	hsTime time.Duration

	hsMu     sync.Mutex
	hsDone   bool  // guarded by hsMu
	hsErr    error // guarded by hsMu
	complete atomic.Bool

	readMu  sync.Mutex
	rbuf    []byte // guarded by readMu
	readErr error  // guarded by readMu; sticky

	writeMu  sync.Mutex
	out      []byte // guarded by writeMu
	writeErr error  // guarded by writeMu; sticky
	notified bool   // guarded by writeMu: close_notify was sent

	sslMu   sync.Mutex
	s       *session // guarded by sslMu; nil before the handshake and after Close
	cleanup runtime.Cleanup

	closed atomic.Bool
	info   atomic.Pointer[connInfo]
}

// connInfo is what the handshake learned, published once.
type connInfo struct {
	identity string
	cipher   string
	version  string
}

// Server returns the server side of a TLS-PSK connection over conn. The
// handshake runs on the first Read, Write or Handshake; configuration
// errors surface there.
func Server(conn net.Conn, cfg *ServerConfig) *Conn {
	c := &Conn{conn: conn}
	c.key, c.keyErr = cfg.key()
	if c.keyErr == nil {
		c.psk = &pskState{lookup: cfg.PSK}
		c.hsTime = handshakeTimeout(cfg.HandshakeTimeout)
	}
	return c
}

// Client returns the client (card) side of a TLS-PSK connection over conn.
// The handshake runs on the first Read, Write or Handshake.
func Client(conn net.Conn, cfg *ClientConfig) *Conn {
	c := &Conn{conn: conn}
	c.key, c.keyErr = cfg.key()
	if c.keyErr == nil {
		c.psk = &pskState{identity: cfg.Identity, psk: append([]byte(nil), cfg.PSK...)}
		c.hsTime = handshakeTimeout(cfg.HandshakeTimeout)
	}
	return c
}

// Handshake runs the TLS-PSK handshake if it has not run yet. It is bounded
// by ctx and by the config's HandshakeTimeout; when either ends first the
// error matches ctx's error (context.DeadlineExceeded for the timeout).
// The outcome is final: a failed handshake fails every later call.
func (c *Conn) Handshake(ctx context.Context) error {
	if c.complete.Load() {
		return nil
	}
	c.hsMu.Lock()
	defer c.hsMu.Unlock()
	if !c.hsDone {
		c.hsErr = c.handshake(ctx)
		c.hsDone = true
		if c.hsErr == nil {
			c.complete.Store(true)
		}
	}
	return c.hsErr
}

func (c *Conn) handshake(ctx context.Context) error {
	if c.keyErr != nil {
		return c.keyErr
	}
	if c.hsTime > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.hsTime)
		defer cancel()
	}
	interrupted := c.interruptOn(ctx)
	err := c.runHandshake()
	if interrupted() {
		// The past deadline left on the net.Conn makes it unusable; the
		// handshake counts as failed even if it just finished.
		return &Error{Op: "handshake", Identity: c.psk.identity, Err: ctx.Err()}
	}
	return err
}

// interruptOn unblocks the handshake's network I/O when ctx ends, by
// setting a deadline in the past. The returned function stops watching and
// reports whether the interruption happened.
func (c *Conn) interruptOn(ctx context.Context) func() bool {
	if ctx.Done() == nil {
		return func() bool { return false }
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	var fired atomic.Bool
	go func() {
		defer close(exited)
		select {
		case <-ctx.Done():
			fired.Store(true)
			_ = c.conn.SetDeadline(aLongTimeAgo)
		case <-done:
		}
	}()
	return func() bool {
		close(done)
		<-exited
		return fired.Load()
	}
}

func (c *Conn) runHandshake() error {
	for {
		c.sslMu.Lock()
		if c.s == nil {
			if err := c.startSession(); err != nil {
				c.sslMu.Unlock()
				return err
			}
		}
		st := c.s.handshake()
		c.sslMu.Unlock()

		flushErr := c.flush()
		switch {
		case st.ret == 1:
			if flushErr != nil {
				return &Error{Op: "handshake", Identity: c.psk.identity, Err: flushErr}
			}
			return c.publish()
		case st.sslError == sslErrorWantRead && flushErr == nil:
			if err := c.fill(); err != nil {
				return &Error{Op: "handshake", Identity: c.psk.identity, Err: err}
			}
		default:
			return c.handshakeError(st, flushErr)
		}
	}
}

// startSession creates the SSL object. Called with sslMu held.
func (c *Conn) startSession() error {
	if c.closed.Load() {
		return &Error{Op: "handshake", Err: net.ErrClosed}
	}
	s, err := newSession(c.key, c.psk)
	if err != nil {
		return err
	}
	c.s = s
	// The safety net for a Conn dropped without Close. s has no pointer
	// back to c, so c can become unreachable.
	c.cleanup = runtime.AddCleanup(c, (*session).free, s)
	return nil
}

func (c *Conn) handshakeError(st status, flushErr error) error {
	e := &Error{Op: "handshake", Identity: c.psk.identity, Kind: st.kind(), OpenSSL: st.text}
	if e.Kind == nil && !c.key.server && c.key.maxVersion >= VersionTLS13 && st.has(reasonAlertIllegalParameter) {
		// A TLS 1.3 server answers a PSK binder that does not verify
		// with illegal_parameter: a wrong PSK (or an identity it refused).
		e.Kind = ErrPSKMismatch
	}
	if c.key.server {
		// A refused identity: keep the callback's cause, and the identity
		// for the log (it is not secret; the PSK never appears).
		if c.psk.err != nil {
			e.Kind, e.Err = ErrUnknownIdentity, c.psk.err
		}
		c.info.Store(&connInfo{identity: c.psk.identity})
	}
	if e.Err == nil {
		e.Err = flushErr
	}
	if e.Err == nil && e.OpenSSL == "" {
		e.Err = c.closedErr(fmt.Errorf("SSL_get_error %d", st.sslError))
	}
	return e
}

// publish records the handshake's outcome for Identity, Cipher and Version.
func (c *Conn) publish() error {
	c.sslMu.Lock()
	defer c.sslMu.Unlock()
	if c.s == nil {
		return &Error{Op: "handshake", Err: net.ErrClosed}
	}
	c.info.Store(&connInfo{identity: c.psk.identity, cipher: c.s.cipher(), version: c.s.version()})
	return nil
}

// flush sends whatever OpenSSL has queued for the peer.
func (c *Conn) flush() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.flushLocked()
}

// flushLocked drains the output BIO and writes it. Called with writeMu held.
func (c *Conn) flushLocked() error {
	if c.writeErr != nil {
		return c.writeErr
	}
	c.sslMu.Lock()
	if c.s != nil {
		c.out = c.s.drain(c.out[:0])
	}
	c.sslMu.Unlock()
	if len(c.out) == 0 {
		return nil
	}
	if _, err := c.conn.Write(c.out); err != nil {
		// Part of a record may be on the wire: the stream is broken.
		c.writeErr = err
		return err
	}
	return nil
}

// fill reads once from the network and hands the bytes to OpenSSL. It
// returns io.EOF when the peer closed the connection.
func (c *Conn) fill() error {
	c.readMu.Lock()
	defer c.readMu.Unlock()
	return c.fillLocked()
}

// fillLocked is fill with readMu held.
func (c *Conn) fillLocked() error {
	if c.rbuf == nil {
		c.rbuf = make([]byte, readBufSize)
	}
	n, err := c.conn.Read(c.rbuf)
	if n > 0 {
		c.sslMu.Lock()
		defer c.sslMu.Unlock()
		if c.s == nil {
			return net.ErrClosed
		}
		// A network error that came with data shows up on the next read.
		return c.s.feed(c.rbuf[:n])
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return c.closedErr(err)
}

// closedErr replaces an error caused by our own Close with net.ErrClosed.
func (c *Conn) closedErr(err error) error {
	if c.closed.Load() && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("%w (%v)", net.ErrClosed, err)
	}
	return err
}

// Read reads decrypted application data. It returns io.EOF after the
// peer's close_notify, and also when the peer closed TCP between records
// (as crypto/tls does; HTTP framing detects truncation); a connection cut
// inside a record gives io.ErrUnexpectedEOF.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.Handshake(context.Background()); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if len(p) > maxPlaintext {
		p = p[:maxPlaintext]
	}
	c.readMu.Lock()
	defer c.readMu.Unlock()
	if c.readErr != nil {
		return 0, c.readErr
	}
	for {
		c.sslMu.Lock()
		if c.s == nil {
			c.sslMu.Unlock()
			return 0, &Error{Op: "read", Err: net.ErrClosed}
		}
		st := c.s.read(p)
		buffered := st.sslError == sslErrorWantRead && c.s.buffered()
		reply := c.s.outPending()
		c.sslMu.Unlock()

		if reply {
			// A warning alert (no_renegotiation) or a fatal one.
			_ = c.flush()
		}
		if st.ret > 0 {
			return st.ret, nil
		}
		switch st.sslError {
		case sslErrorWantRead:
			err := c.fillLocked()
			if err == nil {
				continue
			}
			if errors.Is(err, io.EOF) {
				if buffered {
					err = io.ErrUnexpectedEOF
				}
				c.readErr = err
				return 0, err
			}
			if isTimeout(err) {
				// Nothing was consumed: the connection stays usable.
				return 0, err
			}
			c.readErr = &Error{Op: "read", Err: err}
			return 0, c.readErr
		case sslErrorZeroReturn:
			c.readErr = io.EOF
			return 0, io.EOF
		default:
			c.readErr = &Error{Op: "read", Identity: c.psk.identity, Err: c.sslErr(st), OpenSSL: st.text}
			return 0, c.readErr
		}
	}
}

// sslErr gives a cause for a failed call whose queue may be empty.
func (c *Conn) sslErr(st status) error {
	if st.text != "" {
		return nil
	}
	return c.closedErr(fmt.Errorf("SSL_get_error %d", st.sslError))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Write encrypts p and sends it. A p of at most 16 KiB goes out as one TLS
// record (SSL_write makes one record per call up to the maximum fragment
// length; empty fragments are off, see shim.c), so one Write per HTTP
// response gives one record per response, as some cards need. Larger p is
// cut into 16 KiB records. A failed network write breaks the connection
// for writing, since part of a record may have been sent.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.Handshake(context.Background()); err != nil {
		return 0, err
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeErr != nil {
		return 0, c.writeErr
	}
	written := 0
	for written < len(p) {
		chunk := p[written:min(len(p), written+maxPlaintext)]
		c.sslMu.Lock()
		if c.s == nil {
			c.sslMu.Unlock()
			return written, &Error{Op: "write", Err: net.ErrClosed}
		}
		st := c.s.write(chunk)
		c.out = c.s.drain(c.out[:0])
		c.sslMu.Unlock()
		if st.ret <= 0 {
			c.writeErr = &Error{Op: "write", Identity: c.psk.identity, Err: c.sslErr(st), OpenSSL: st.text}
			return written, c.writeErr
		}
		if _, err := c.conn.Write(c.out); err != nil {
			c.writeErr = &Error{Op: "write", Err: c.closedErr(err)}
			return written, c.writeErr
		}
		written += st.ret
	}
	return written, nil
}

// Close sends close_notify (RFC 5246 §7.2.1) if the handshake completed and
// no Write is in progress, closes the underlying connection and frees the
// OpenSSL objects. It does not wait for the peer's close_notify.
func (c *Conn) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return &Error{Op: "close", Err: net.ErrClosed}
	}
	var notifyErr error
	// A Write in progress holds writeMu: Close then only breaks the
	// connection, as crypto/tls does.
	if c.complete.Load() && c.writeMu.TryLock() {
		notifyErr = c.closeNotifyLocked()
		c.writeMu.Unlock()
	}
	err := c.conn.Close()

	c.sslMu.Lock()
	if c.s != nil {
		c.cleanup.Stop()
		c.s.free()
		c.s = nil
	}
	c.sslMu.Unlock()

	if notifyErr != nil {
		return &Error{Op: "close", Err: notifyErr}
	}
	if err != nil {
		return &Error{Op: "close", Err: err}
	}
	return nil
}

// CloseWrite sends close_notify if the handshake completed, then shuts
// down the writing side of the underlying connection when it can (a
// *net.TCPConn does). The peer sees the end of the stream while this side
// may still read, for instance to drain a request it will not answer, so
// that closing does not reset the connection before the peer has read the
// answer. Close is still needed afterwards.
func (c *Conn) CloseWrite() error {
	var notifyErr error
	if c.complete.Load() {
		c.writeMu.Lock()
		notifyErr = c.closeNotifyLocked()
		c.writeMu.Unlock()
	}
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		if err := cw.CloseWrite(); err != nil && notifyErr == nil {
			notifyErr = err
		}
	}
	if notifyErr != nil {
		return &Error{Op: "close", Err: notifyErr}
	}
	return nil
}

// closeNotifyLocked queues and sends close_notify, once. Called with
// writeMu held.
func (c *Conn) closeNotifyLocked() error {
	if c.writeErr != nil || c.notified {
		return nil
	}
	c.notified = true
	c.sslMu.Lock()
	if c.s == nil {
		c.sslMu.Unlock()
		return nil
	}
	st := c.s.shutdown()
	c.sslMu.Unlock()
	if st.ret <= 0 {
		return fmt.Errorf("send close_notify: %s", st.text)
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(closeNotifyTimeout))
	return c.flushLocked()
}

// Identity returns the PSK identity: on the server, the one the client
// sent (set once the handshake has reached the PSK lookup, so also after
// an unknown-identity failure); on the client, the configured one. It is
// "" before the handshake.
func (c *Conn) Identity() string {
	if i := c.info.Load(); i != nil {
		return i.identity
	}
	return ""
}

// Cipher returns the negotiated suite in OpenSSL's naming, such as
// "PSK-AES128-CBC-SHA256", or "" before the handshake.
func (c *Conn) Cipher() string {
	if i := c.info.Load(); i != nil {
		return i.cipher
	}
	return ""
}

// Version returns the negotiated protocol, "TLSv1", "TLSv1.1" or
// "TLSv1.2", or "" before the handshake.
func (c *Conn) Version() string {
	if i := c.info.Load(); i != nil {
		return i.version
	}
	return ""
}

// NetConn returns the underlying connection, for socket options such as
// TCP_QUICKACK. Reading or writing it directly corrupts the TLS stream.
func (c *Conn) NetConn() net.Conn { return c.conn }

// LocalAddr returns the underlying connection's local address.
func (c *Conn) LocalAddr() net.Addr { return c.conn.LocalAddr() }

// RemoteAddr returns the underlying connection's remote address.
func (c *Conn) RemoteAddr() net.Addr { return c.conn.RemoteAddr() }

// SetDeadline sets the underlying connection's read and write deadlines.
// A write that times out breaks the connection for writing; a read that
// times out does not.
func (c *Conn) SetDeadline(t time.Time) error { return c.conn.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.conn.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.conn.SetWriteDeadline(t) }
