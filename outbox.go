package keyport

import (
	"context"
	"encoding/json"
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

// Outbox returns the newest queued messages (admins only); e-mails sent
// without SMTP wait here.
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

// deliver sends a queued e-mail through the Mailer, if there is one, and
// marks it sent. The log names the recipient and outbox row only: the body
// holds a one-time link.
func (s *Service) deliver(ctx context.Context, m *OutboxMessage) {
	var em EmailMessage
	_ = json.Unmarshal([]byte(m.Payload), &em)
	if s.Mailer == nil {
		s.log().Info("e-mail queued in the outbox (no SMTP configured; the admin console shows it)",
			"to", em.To, "subject", em.Subject, "outbox", m.ID)
		return
	}
	if err := s.Mailer.Send(ctx, em.To, em.Subject, em.Body); err != nil {
		s.log().Warn("e-mail not sent; it stays in the outbox", "to", em.To, "outbox", m.ID, "err", err)
		return
	}
	if err := s.Store.MarkOutboxSent(ctx, m.ID, s.now().UTC()); err != nil {
		s.log().Warn("outbox not marked sent", "outbox", m.ID, "err", err)
	}
	s.log().Info("e-mail sent", "to", em.To, "subject", em.Subject, "outbox", m.ID)
}
