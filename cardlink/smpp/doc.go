// Package smpp is keyport's SMS gateway link: an SMPP v3.4 ESME (bound as a
// transceiver) that sends the GP Amendment B trigger to a module as a SIM
// data download short message (PROTOCOLS.md §3.1; TS 31.115 §6: UDHI, PID
// 7F, DCS F6, the Command Packet Identifier 70 in the user data header,
// concatenated with IEI 00 past one message) and takes back the SMSC's
// delivery receipts and the handsets' mobile-originated messages (a proof
// of receipt carries IEI 71).
//
// What comes in: a Config (ParseURL: smpp://system_id:password@host:port?source=…),
// an MSISDN and a secured command packet, opaque here (SCP80 is built in
// gp/). What goes out: submit_sm PDUs within a window of outstanding
// requests and a rate limit, resent with backoff when the SMSC refuses them
// for now; receipts and MO messages to the Handlers.
//
// Files: pdu.go (the PDU codec), udh.go (segments and user data headers),
// receipt.go (delivery receipts, MO messages), config.go (the URL),
// esme.go (bind, enquire_link, window, rate, resend, unbind).
//
// The codec is keyport's own rather than a library's: the trigger needs
// exact control of each segment's user data header (IEI 70 in the first
// segment only, next to the concatenation element), of which submits were
// answered when a link is lost, and a parser small enough to fuzz.
package smpp
