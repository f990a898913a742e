package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/cardlink"
	"github.com/keyport/keyport/cardlink/smpp"
)

// startSMPP binds the SMS gateway account when KEYPORT_SMPP_URL is set.
// Modules with an MSISDN and an OTA key set are then woken by an SCP80
// trigger SMS (cardlink.SMSTrigger, armed by armSMS once the admin server
// listens), the others through the agents' wake-up channel. Delivery
// receipts of failure and proofs of receipt with an error status that the
// module's OTA keys authenticate are recorded on the module's waiting jobs;
// other proofs of receipt are only logged (cardlink.ErrPoRIgnored).
func startSMPP(a *app) (stop func(), err error) {
	if a.cfg.SMPP == nil {
		return func() {}, nil
	}
	log := a.log.With("component", "smpp")
	box := &smsTriggerBox{}
	e, err := smpp.New(*a.cfg.SMPP, smpp.Handlers{
		Log: log,
		Receipt: func(r smpp.Receipt) error {
			log.Info("smpp: delivery receipt", "message_id", r.MessageID, "state", r.State, "err", r.Err)
			if t := box.t.Load(); t != nil {
				if err := t.Receipt(context.Background(), r.MessageID, r.State, r.Err); err != nil {
					log.Warn("smpp: receipt not recorded", "message_id", r.MessageID, "err", err)
				}
			}
			return nil
		},
		MO: func(m smpp.MO) error {
			_, por := m.ResponsePacket()
			log.Info("smpp: mobile-originated message", "octets", len(m.UserData), "proof_of_receipt", por)
			if t := box.t.Load(); t != nil && por {
				if st, err := t.ProofOfReceipt(context.Background(), m.From, m.UserData); err != nil {
					log.Warn("smpp: proof of receipt not read", "err", err)
				} else {
					log.Info("smpp: proof of receipt", "status", st)
				}
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	box.sender = e
	a.sms = box
	log.Info("smpp: ESME binding", "smsc", *a.cfg.SMPP)
	return func() { e.Close() }, nil
}

// smsTriggerBox is the SMS trigger before and after the admin server's
// address is known: until armSMS it reaches nobody (keyport.ErrNoSMSReach,
// so the wake-up channel is used).
type smsTriggerBox struct {
	sender cardlink.SMSSender
	t      atomic.Pointer[cardlink.SMSTrigger]
}

func (b *smsTriggerBox) Wake(ctx context.Context, eid keyport.EID) error {
	t := b.t.Load()
	if t == nil {
		return fmt.Errorf("no admin server for the trigger SMS to name: %w", keyport.ErrNoSMSReach)
	}
	return t.Wake(ctx, eid)
}

// armSMS makes the SMS trigger name the admin server listening on addr (or
// KEYPORT_SMS_ADMIN_ADDR).
func (a *app) armSMS(addr net.Addr) error {
	if a.sms == nil {
		return nil
	}
	s := a.cfg.SMSAdminAddr
	if s == "" {
		s = addr.String()
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Addr().IsUnspecified() {
		return fmt.Errorf("config: the trigger SMS must name the admin server by IP address and port as handsets reach it (KEYPORT_SMS_ADMIN_ADDR), not %q", s)
	}
	t, err := cardlink.NewSMSTrigger(cardlink.SMSTriggerConfig{Sender: a.sms.sender,
		Reach: keyport.SMSReach{Service: a.svc, OTA: a.hsm}, Admin: ap, Log: a.log.With("component", "sms-trigger")})
	if err != nil {
		return err
	}
	a.sms.t.Store(t)
	a.log.Info("trigger SMS names the admin server", "addr", ap.String())
	return nil
}
