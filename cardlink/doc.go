// Package cardlink is keyport's road to a module in the field: the
// GlobalPlatform Amendment B ("RAM over HTTP", SCP81) admin server over
// TLS-PSK (admin.go, amdb.go), the delivery worker that wakes modules,
// expires jobs and sends signed webhooks (dispatch.go), and the push trigger
// behind keyport.Trigger (wake.go: the handset agents' wake-up channel; the
// SMPP link for the SMS trigger is sub-package smpp, not yet a Trigger).
//
// What comes in: a module's TLS-PSK connection, whose PSK identity is its
// EID and whose PSK is derived in the HSM for the handshake only; its HTTP
// POSTs (X-Admin-* headers, TS 102 226 response scripts in either framing).
// What goes out: the module's queued scripts (AE 80 … 00 00, with
// X-Admin-Targeted-Application for the SSD they are for), one per response,
// each response written in one TLS record; 204 when nothing is left. The
// use cases (which job, is the answer a proof) are keyport.Service's.
//
// Sub-packages: tlspsk (OpenSSL TLS-PSK), vcard (virtual module), pcsctest
// (private pcscd), agent (the handset agent that plays the phone), smpp (the
// SMS gateway's SMPP v3.4 ESME).
package cardlink
