package main

import (
	"github.com/keyport/keyport/cardlink/smpp"
)

// startSMPP binds the SMS gateway account when KEYPORT_SMPP_URL is set and
// logs what the SMSC delivers. Nothing sends through it yet: the trigger
// SMS needs a module's MSISDN (no column holds it) and its SCP80 packet
// (built in gp/), so the delivery worker still wakes handset agents only.
func startSMPP(a *app) (stop func(), err error) {
	if a.cfg.SMPP == nil {
		return func() {}, nil
	}
	log := a.log.With("component", "smpp")
	e, err := smpp.New(*a.cfg.SMPP, smpp.Handlers{
		Log: log,
		Receipt: func(r smpp.Receipt) error {
			log.Info("smpp: delivery receipt", "message_id", r.MessageID, "state", r.State, "err", r.Err)
			return nil
		},
		MO: func(m smpp.MO) error {
			_, por := m.ResponsePacket()
			log.Info("smpp: mobile-originated message", "octets", len(m.UserData), "proof_of_receipt", por)
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	log.Info("smpp: ESME binding", "smsc", *a.cfg.SMPP)
	return func() { e.Close() }, nil
}
