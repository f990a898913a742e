package keyport

import (
	"context"
	"sync"
	"time"
)

// OutboxMessage is a notification written in the same transaction as the
// change it reports (a webhook to send, a job to start).
type OutboxMessage struct {
	ID        int64
	Topic     string
	Payload   string
	CreatedAt time.Time
	SentAt    *time.Time
}

// Outbox returns the newest queued messages (admins only). E-mail rows hold
// a redacted body (LinkWithheld in place of any one-time link).
func (s *Service) Outbox(ctx context.Context, p Principal, topic string, limit int) ([]OutboxMessage, error) {
	if !p.Admin {
		return nil, ErrForbidden
	}
	return s.Store.ListOutbox(ctx, topic, limit)
}

// EmailMessage is the payload of an outbox row of topic "email".
type EmailMessage struct {
	To      string `json:"to"`
	Subject string `json:"subject"`
	Body    string `json:"body"`
}

// LinkWithheld stands in the outbox for the one-time link of an e-mail:
// the link (and its token) is never stored, only handed to the Mailer.
const LinkWithheld = "[link withheld: only the e-mail itself carries it]"

// mail is a queued e-mail: its outbox row (redacted) and the live message
// with the link, which exists only in memory until deliver hands it on.
type mail struct {
	row  *OutboxMessage
	live EmailMessage
}

// deliver sends the live message through the Mailer, if there is one, and
// marks its outbox row sent. Without a Mailer (or when it fails) the link is
// lost: the row stays unsent, and the user asks for a new link once mail
// works. The log names the recipient and outbox row only.
func (s *Service) deliver(ctx context.Context, m *mail) {
	em := m.live
	if s.Mailer == nil {
		s.log().Warn("e-mail not sent: no mailer configured (--smtp-url); the outbox keeps it without its link",
			"to", em.To, "subject", em.Subject, "outbox", m.row.ID)
		return
	}
	if err := s.Mailer.Send(ctx, em.To, em.Subject, em.Body); err != nil {
		s.log().Warn("e-mail not sent; the outbox keeps it without its link", "to", em.To, "outbox", m.row.ID, "err", err)
		return
	}
	if err := s.Store.MarkOutboxSent(ctx, m.row.ID, s.now().UTC()); err != nil {
		s.log().Warn("outbox not marked sent", "outbox", m.row.ID, "err", err)
	}
	s.log().Info("e-mail sent", "to", em.To, "subject", em.Subject, "outbox", m.row.ID)
}

// laterTimeout bounds what later runs.
const laterTimeout = time.Minute

// later runs fn after the caller has answered, so that an answer takes as
// long whether it sends a message or not (a locked account, a password
// reset: otherwise the time of the mail server's answer would tell who has
// an account). Drain waits for what later still runs.
func (s *Service) later(fn func(ctx context.Context)) {
	s.mailing.add()
	go func() {
		defer s.mailing.finish()
		ctx, cancel := context.WithTimeout(context.Background(), laterTimeout)
		defer cancel()
		fn(ctx)
	}()
}

// Drain waits until the e-mails sent after their answers are handed to the
// Mailer or given up: keyport serve calls it when it stops.
func (s *Service) Drain() { s.mailing.wait() }

// pending counts what later runs. Unlike a sync.WaitGroup it may be waited
// for while more is added (a request answered while Drain waits).
type pending struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil while n is 0
}

func (p *pending) add() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == 0 {
		p.idle = make(chan struct{})
	}
	p.n++
}

func (p *pending) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n--; p.n == 0 {
		close(p.idle)
		p.idle = nil
	}
}

// wait returns once nothing is pending, at some moment after it was called.
func (p *pending) wait() {
	p.mu.Lock()
	idle := p.idle
	p.mu.Unlock()
	if idle != nil {
		<-idle
	}
}
