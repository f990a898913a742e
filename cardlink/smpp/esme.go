package smpp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/wait"
)

// ESME is keyport's end of an SMPP v3.4 link to an operator's SMSC, bound
// as a transceiver: it submits SIM data download messages (Send) and
// receives their delivery receipts and the handsets' mobile-originated
// messages. It is the sender a keyport.Trigger adapter puts the secured
// trigger SMS through; what the packet holds (SCP80, TS 102 225) is built
// elsewhere and is opaque here.
//
// The link binds in the background and binds again, with backoff, after
// the SMSC closes it, stops answering enquire_link, or misses a response.
// The backoff keeps growing over links that die before they answer an
// enquire_link, so an SMSC that takes the bind and drops the link is not
// bound to again and again at MinBackoff; a link that answered one starts
// it over. A submit that had no response when the link was lost is sent
// again once on the next link: SMPP has no idempotency key, so the SMSC
// may then hold it twice (the card's SCP80 counter refuses the replay).
// When that send too has no response, Send gives up with ErrUnconfirmed
// rather than risk more copies, each of them billed and answered by the
// card. A submit still waiting for a link waits for its context.
type ESME struct {
	cfg       Config
	log       *slog.Logger
	onReceipt func(Receipt) error
	onMO      func(MO) error

	window chan struct{} // a slot per outstanding submit_sm
	pace   pacer
	ref    atomic.Uint32 // concatenation reference

	mu      sync.Mutex
	sess    *session      // nil while not bound
	ready   chan struct{} // closed when sess is set
	lastErr error

	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
}

// Handlers receive what the SMSC delivers. Each runs on the link's
// delivery goroutine, one at a time; deliver_sm is answered when it
// returns, with ESME_RX_T_APPN when it returns an error, so that the SMSC
// delivers it again. Up to 64 deliver_sm wait for the handlers; one that
// finds them all taken is answered ESME_RTHROTTLED at once, unseen by the
// handlers, for the SMSC to deliver later, so that slow handlers never
// hold up the link's responses and keepalives. Nil handlers log and
// accept.
type Handlers struct {
	Receipt func(Receipt) error
	MO      func(MO) error
	Log     *slog.Logger
}

// ErrClosed is returned by Send after Close.
var ErrClosed = errors.New("smpp: ESME closed")

// ErrUnconfirmed is returned by Send when a submit_sm went unanswered on
// two links in turn: the SMSC may hold it, once or twice, or not at all.
// Send does not send it a third time.
var ErrUnconfirmed = errors.New("smpp: submit_sm sent but not answered; the SMSC may hold it")

// errSessionLost marks a request whose link went away after it was sent
// and before its response: the peer may have acted on it.
var errSessionLost = errors.New("smpp: link lost")

// errNotSent marks a request whose link went away before the whole PDU
// was written: the peer cannot have acted on it.
var errNotSent = errors.New("smpp: link lost before the request was sent")

// inboxLen is how many deliver_sm may wait for the handlers.
const inboxLen = 64

// StatusError is an SMSC's refusal of a request: an error command_status
// or a generic_nack.
type StatusError struct {
	Command CommandID // the response: submit_sm_resp, generic_nack, bind_transceiver_resp
	Status  Status
}

func (e *StatusError) Error() string { return fmt.Sprintf("smpp: %v: %v", e.Command, e.Status) }

// New starts an ESME for cfg; it binds in the background. Close it.
func New(cfg Config, h Handlers) (*ESME, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	e := &ESME{
		cfg:       cfg,
		log:       log.With("smsc", cfg.Addr, "system_id", cfg.SystemID),
		onReceipt: h.Receipt,
		onMO:      h.MO,
		window:    make(chan struct{}, cfg.Window),
		ready:     make(chan struct{}),
		stop:      make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	if cfg.Rate > 0 {
		e.pace.every = time.Duration(float64(time.Second) / cfg.Rate)
	}
	go e.run()
	return e, nil
}

// Close unbinds (waiting at most ResponseTimeout for unbind_resp), closes
// the connection and ends Send calls still waiting.
func (e *ESME) Close() error {
	e.closeOnce.Do(func() { close(e.stop) })
	<-e.stopped
	return nil
}

// Send submits a secured command packet to the handset msisdn as SIM data
// download (TS 31.115: UDHI, PID 7F, DCS F6, the Command Packet Identifier
// in the user data header), concatenated when it does not fit one message,
// with a delivery receipt requested. It returns the SMSC's message ids,
// one per segment in order; the receipts carry the same ids. On an error
// it returns the ids of the segments the SMSC had already accepted.
func (e *ESME) Send(ctx context.Context, msisdn string, packet []byte) ([]string, error) {
	if err := checkMSISDN(msisdn); err != nil {
		return nil, err
	}
	segs, err := Segments(packet, byte(e.ref.Add(1)))
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(segs))
	for i, ud := range segs {
		body, err := ShortMessage{
			SourceTON:          e.cfg.SourceTON,
			SourceNPI:          e.cfg.SourceNPI,
			Source:             e.cfg.Source,
			DestTON:            e.cfg.DestTON,
			DestNPI:            e.cfg.DestNPI,
			Dest:               msisdn,
			ESMClass:           ESMClassUDHI,
			ProtocolID:         PIDSIMDataDownload,
			RegisteredDelivery: 0x01, // §5.2.17: receipt on success and failure
			DataCoding:         DCSSIMData,
			ShortMessage:       ud,
		}.Encode()
		if err != nil {
			return ids, err
		}
		id, err := e.submit(ctx, body)
		if err != nil {
			return ids, fmt.Errorf("smpp: submit segment %d of %d to %s: %w", i+1, len(segs), keyport.MaskedMSISDN(msisdn), err)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

func checkMSISDN(s string) error {
	if s == "" || len(s) > maxAddr-1 {
		return fmt.Errorf("smpp: MSISDN must be 1 to %d digits", maxAddr-1)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return fmt.Errorf("smpp: MSISDN %s is not all digits (character %d is %q)", keyport.MaskedMSISDN(s), i+1, s[i:i+1])
		}
	}
	return nil
}

// submit sends one submit_sm until the SMSC accepts it, refuses it for
// good, or ctx ends. Every send counts against MaxAttempts, whether the
// SMSC refused it for now or the link was lost before its response; of
// the latter only one is sent again, since the SMSC may have taken it.
func (e *ESME) submit(ctx context.Context, body []byte) (string, error) {
	sends, refused, unanswered := 0, 0, 0
	var lost error // why the last unanswered send had no response
	// fail says so when an earlier send may be held all the same.
	fail := func(err error) error {
		if lost == nil {
			return err
		}
		return fmt.Errorf("%w; an earlier send had no response (%v): %w", err, lost, ErrUnconfirmed)
	}
	for {
		s, err := e.bound(ctx)
		if err != nil {
			return "", fail(err)
		}
		select {
		case e.window <- struct{}{}:
		case <-ctx.Done():
			return "", fail(ctx.Err())
		}
		if err := e.pace.wait(ctx); err != nil {
			<-e.window
			return "", fail(err)
		}
		p, err := s.request(ctx, SubmitSM, body, e.cfg.ResponseTimeout)
		<-e.window
		if errors.Is(err, errNotSent) {
			continue // the SMSC never had it: sent on the next link
		}
		if errors.Is(err, errSessionLost) {
			sends++
			unanswered++
			lost = err
			if unanswered > 1 || sends >= e.cfg.MaxAttempts {
				return "", fmt.Errorf("%w (sent %d times; last: %v)", ErrUnconfirmed, sends, err)
			}
			e.log.Warn("smpp: link lost before submit_sm_resp; sending it once more on the next link", "err", err, "attempt", sends)
			continue
		}
		if err != nil {
			return "", fail(err)
		}
		sends++
		if p.ID == GenericNack || p.Status != StatusOK {
			serr := &StatusError{Command: p.ID, Status: p.Status}
			refused++
			if !p.Status.Temporary() || sends >= e.cfg.MaxAttempts {
				return "", fail(serr)
			}
			pause := e.backoff(refused - 1)
			e.log.Info("smpp: submit refused for now; sending it again", "status", p.Status.String(), "attempt", sends, "wait", pause)
			if err := wait.Sleep(ctx, pause); err != nil {
				return "", fail(fmt.Errorf("%w (last: %v)", err, serr))
			}
			continue
		}
		if p.ID != SubmitSMResp {
			return "", fail(fmt.Errorf("smpp: %v answered submit_sm", p.ID))
		}
		id, err := DecodeMessageID(p.Body)
		if err != nil {
			return "", fail(err)
		}
		if id == "" {
			return "", fail(errors.New("smpp: submit_sm_resp without message_id"))
		}
		return id, nil
	}
}

// bound returns the bound link, waiting for one.
func (e *ESME) bound(ctx context.Context) (*session, error) {
	for {
		select {
		case <-e.stop:
			return nil, ErrClosed
		default:
		}
		e.mu.Lock()
		s, ready, last := e.sess, e.ready, e.lastErr
		e.mu.Unlock()
		if s != nil {
			select {
			case <-s.dead:
				// Dead but not yet taken down by run: take it down
				// here, or a submit would spin on it.
				e.drop(s)
				continue
			default:
				return s, nil
			}
		}
		select {
		case <-ready:
		case <-e.stop:
			return nil, ErrClosed
		case <-ctx.Done():
			if last != nil {
				return nil, fmt.Errorf("smpp: not bound (last: %v): %w", last, ctx.Err())
			}
			return nil, fmt.Errorf("smpp: not bound: %w", ctx.Err())
		}
	}
}

// run binds, keeps the link alive and binds again, until Close. Failed
// binds and links lost before they answered an enquire_link count as
// failures in a row, each waiting longer; a link that answered one resets
// the count when it is lost.
func (e *ESME) run() {
	defer close(e.stopped)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-e.stop
		cancel()
	}()
	for failures := 0; ; {
		s, err := e.bind(ctx)
		if err != nil {
			e.mu.Lock()
			e.lastErr = err
			e.mu.Unlock()
			pause := e.backoff(failures)
			failures++
			e.log.Warn("smpp: bind failed", "err", err, "retry_in", pause)
			if wait.Sleep(ctx, pause) != nil {
				return
			}
			continue
		}
		go e.read(s)
		go e.deliveries(s)
		e.mu.Lock()
		e.sess, e.lastErr = s, nil
		close(e.ready)
		e.mu.Unlock()

		e.keepalive(ctx, s)
		e.drop(s)
		select {
		case <-e.stop:
			e.unbind(s)
			return
		default:
		}
		<-s.dead
		e.mu.Lock()
		e.lastErr = s.err
		e.mu.Unlock()
		if s.proven.Load() {
			failures = 0
		}
		pause := e.backoff(failures)
		failures++
		e.log.Warn("smpp: link lost; binding again", "err", s.err, "answered_enquire_link", s.proven.Load(), "retry_in", pause)
		if wait.Sleep(ctx, pause) != nil {
			return
		}
	}
}

// drop takes s down as the bound link, once.
func (e *ESME) drop(s *session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sess == s {
		e.sess, e.ready = nil, make(chan struct{})
	}
}

// bind connects and sends bind_transceiver (§4.1.5).
func (e *ESME) bind(ctx context.Context) (*session, error) {
	d := net.Dialer{Timeout: e.cfg.ResponseTimeout}
	conn, err := d.DialContext(ctx, "tcp", e.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("smpp: connect: %w", err)
	}
	// Close must not wait out the bind's deadline.
	stopClosing := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopClosing()
	body, err := Bind{SystemID: e.cfg.SystemID, Password: e.cfg.Password, SystemType: e.cfg.SystemType}.Encode()
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = conn.SetDeadline(time.Now().Add(e.cfg.ResponseTimeout))
	if _, err := conn.Write(PDU{ID: BindTransceiver, Seq: 1, Body: body}.Marshal()); err != nil {
		conn.Close()
		return nil, fmt.Errorf("smpp: bind_transceiver: %w", err)
	}
	p, err := ReadPDU(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("smpp: bind_transceiver_resp: %w", err)
	}
	if p.ID == GenericNack || p.Status != StatusOK {
		conn.Close()
		return nil, &StatusError{Command: p.ID, Status: p.Status}
	}
	if p.ID != BindTransceiverResp || p.Seq != 1 {
		conn.Close()
		return nil, fmt.Errorf("smpp: %v #%d answered bind_transceiver #1", p.ID, p.Seq)
	}
	_ = conn.SetDeadline(time.Time{})
	sysID, _ := DecodeBindResp(p.Body)
	e.log.Info("smpp: bound as transceiver", "smsc_system_id", sysID)
	return &session{
		conn:    conn,
		seq:     1,
		pending: map[uint32]chan PDU{},
		inbox:   make(chan PDU, inboxLen),
		dead:    make(chan struct{}),
		timeout: e.cfg.ResponseTimeout,
	}, nil
}

// keepalive sends enquire_link every EnquireLink (§4.11) until the link
// dies or Close; a missing enquire_link_resp kills the link, and the
// first one that comes marks the link proven (run's backoff starts over).
func (e *ESME) keepalive(ctx context.Context, s *session) {
	t := time.NewTicker(e.cfg.EnquireLink)
	defer t.Stop()
	for {
		select {
		case <-s.dead:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := s.request(ctx, EnquireLink, nil, e.cfg.ResponseTimeout); err != nil {
				if ctx.Err() == nil {
					s.kill(fmt.Errorf("smpp: enquire_link: %w", err))
				}
				return
			}
			s.proven.Store(true)
		}
	}
}

// unbind ends the link politely (§4.2).
func (e *ESME) unbind(s *session) {
	select {
	case <-s.dead:
		return
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ResponseTimeout)
	defer cancel()
	if _, err := s.request(ctx, Unbind, nil, e.cfg.ResponseTimeout); err != nil {
		e.log.Warn("smpp: unbind", "err", err)
	}
	s.kill(ErrClosed)
}

// read dispatches the PDUs the SMSC sends until the link dies. It never
// waits for the handlers: responses and enquire_link are handled as they
// come, and a deliver_sm that finds the inbox full is answered
// ESME_RTHROTTLED (§5.1.3, a temporary error; the SMSC delivers it again
// later) instead of holding up the PDUs behind it.
func (e *ESME) read(s *session) {
	r := bufio.NewReader(s.conn)
	throttled := 0 // deliver_sm refused since the inbox was last found with room
	for {
		p, err := ReadPDU(r)
		if err != nil {
			if errors.Is(err, ErrPDU) {
				// §4.3: a PDU whose header cannot be used is nacked;
				// the stream's framing is lost, so the link goes too.
				_ = s.write(PDU{ID: GenericNack, Status: StatusInvCmdLen})
			}
			s.kill(fmt.Errorf("smpp: read: %w", err))
			return
		}
		if p.ID.IsResponse() {
			s.mu.Lock()
			ch := s.pending[p.Seq]
			s.mu.Unlock()
			if ch == nil {
				e.log.Warn("smpp: response to no outstanding request", "command", p.ID.String(), "seq", p.Seq, "status", p.Status.String())
				continue
			}
			select {
			case ch <- p: // buffered: the first response per request
			default:
			}
			continue
		}
		switch p.ID {
		case EnquireLink:
			_ = s.write(PDU{ID: EnquireLinkResp, Seq: p.Seq})
		case DeliverSM:
			select {
			case s.inbox <- p:
				if throttled > 0 {
					e.log.Info("smpp: handlers caught up; taking deliver_sm again", "throttled", throttled)
					throttled = 0
				}
			default:
				if throttled == 0 {
					e.log.Warn("smpp: handlers behind; answering deliver_sm ESME_RTHROTTLED for the SMSC to deliver later", "waiting", inboxLen)
				}
				throttled++
				_ = s.write(PDU{ID: DeliverSMResp, Status: StatusThrottled, Seq: p.Seq, Body: encodeMessageID("")})
			}
		case Unbind:
			_ = s.write(PDU{ID: UnbindResp, Seq: p.Seq})
			s.kill(errors.New("smpp: the SMSC unbound"))
			return
		default:
			_ = s.write(PDU{ID: GenericNack, Status: StatusInvCmdID, Seq: p.Seq})
		}
	}
}

// deliveries hands deliver_sm to the handlers and answers each.
func (e *ESME) deliveries(s *session) {
	for {
		select {
		case p := <-s.inbox:
			st := e.deliver(p)
			_ = s.write(PDU{ID: DeliverSMResp, Status: st, Seq: p.Seq, Body: encodeMessageID("")})
		case <-s.dead:
			return
		}
	}
}

func (e *ESME) deliver(p PDU) Status {
	m, err := DecodeShortMessage(p.Body)
	if err != nil {
		e.log.Warn("smpp: deliver_sm refused", "err", err)
		return StatusPermAppErr
	}
	if t := m.ESMClass & esmClassTypeMask; t == ESMClassDeliveryReceipt || t == esmClassIntermediate {
		r, err := receiptFrom(m)
		if err != nil {
			e.log.Warn("smpp: delivery receipt refused", "err", err)
			return StatusPermAppErr
		}
		if e.onReceipt == nil {
			e.log.Info("smpp: delivery receipt", "message_id", r.MessageID, "state", r.State, "err", r.Err)
			return StatusOK
		}
		if err := e.onReceipt(r); err != nil {
			e.log.Warn("smpp: delivery receipt not recorded; the SMSC will deliver it again", "message_id", r.MessageID, "err", err)
			return StatusTempAppErr
		}
		return StatusOK
	}
	mo := MO{From: m.Source, To: m.Dest, ESMClass: m.ESMClass, ProtocolID: m.ProtocolID, DataCoding: m.DataCoding, UserData: m.UserData()}
	if e.onMO == nil {
		e.log.Info("smpp: mobile-originated message", "from", keyport.MaskedMSISDN(mo.From), "octets", len(mo.UserData))
		return StatusOK
	}
	if err := e.onMO(mo); err != nil {
		e.log.Warn("smpp: mobile-originated message not taken; the SMSC will deliver it again", "from", keyport.MaskedMSISDN(mo.From), "err", err)
		return StatusTempAppErr
	}
	return StatusOK
}

// backoff is MinBackoff doubled n times, at most MaxBackoff, plus up to a
// quarter more so that many ESMEs do not come back in step.
func (e *ESME) backoff(n int) time.Duration {
	d := e.cfg.MaxBackoff
	if n < 30 {
		if b := e.cfg.MinBackoff << n; b > 0 && b < d {
			d = b
		}
	}
	return d + rand.N(d/4+1)
}

// pacer spaces submits by every (the throughput limit).
type pacer struct {
	every time.Duration
	mu    sync.Mutex
	next  time.Time
}

func (p *pacer) wait(ctx context.Context) error {
	if p.every == 0 {
		return nil
	}
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.every)
	p.mu.Unlock()
	if d := time.Until(at); d > 0 {
		return wait.Sleep(ctx, d)
	}
	return nil
}

// session is one bound connection.
type session struct {
	conn    net.Conn
	timeout time.Duration
	wmu     sync.Mutex // one PDU written at a time

	mu      sync.Mutex
	seq     uint32
	pending map[uint32]chan PDU

	inbox  chan PDU    // deliver_sm for the handlers
	proven atomic.Bool // an enquire_link was answered
	dead   chan struct{}
	once   sync.Once
	err    error // why it died; set before dead closes
}

func (s *session) kill(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.dead)
		s.conn.Close()
	})
}

func (s *session) write(p PDU) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.timeout))
	if _, err := s.conn.Write(p.Marshal()); err != nil {
		s.kill(fmt.Errorf("smpp: write %v: %w", p.ID, err))
		return err
	}
	return nil
}

// request sends a PDU and waits for its response. A link that dies before
// the PDU is written is errNotSent; one that dies after, or a response
// later than timeout (which kills the link), is errSessionLost.
func (s *session) request(ctx context.Context, id CommandID, body []byte, timeout time.Duration) (PDU, error) {
	s.mu.Lock()
	// §5.1.2.4: sequence numbers run from 1 to 0x7FFFFFFF.
	s.seq++
	if s.seq > 0x7FFFFFFF {
		s.seq = 1
	}
	seq := s.seq
	ch := make(chan PDU, 1)
	s.pending[seq] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, seq)
		s.mu.Unlock()
	}()
	if err := s.write(PDU{ID: id, Seq: seq, Body: body}); err != nil {
		// A failed Write left at most part of the PDU on the wire, and
		// the link is killed: the peer cannot take it as a request.
		return PDU{}, fmt.Errorf("%w: %v", errNotSent, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case p := <-ch:
		return p, nil
	case <-s.dead:
		select {
		case p := <-ch: // read just before the link went
			return p, nil
		default:
		}
		return PDU{}, fmt.Errorf("%w: %v", errSessionLost, s.err)
	case <-ctx.Done():
		return PDU{}, ctx.Err()
	case <-t.C:
		s.kill(fmt.Errorf("smpp: no response to %v #%d within %v", id, seq, timeout))
		return PDU{}, fmt.Errorf("%w: %v", errSessionLost, s.err)
	}
}
