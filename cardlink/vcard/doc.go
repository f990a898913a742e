// Package vcard is keyport's virtual secure module: the card side of a
// GlobalPlatform UICC that talks to the real PC/SC stack through
// vsmartcard's vpcd driver.
//
// A Card holds what a module remembers across power cycles (EID, CPLC, card
// life cycle, the GP registry of security domains and applications, SCP03
// key sets with their sequence and failure counters, ARA-M access rules) and
// the volatile session state (selected application, SCP03 session,
// INSTALL [for personalization] target, GET STATUS paging). Card.Process
// answers one C-APDU with one R-APDU and never panics; it is pure apart from
// writing the state file, so it is tested without PC/SC. Serve connects a
// Card to vpcd; Run and Main are `keyport vcard`.
//
// Supported (GPCS 2.3.1 chapter 11, Amendment D v1.1.1, GPD SEAC, SGP.22):
// SELECT by AID, INITIALIZE UPDATE and EXTERNAL AUTHENTICATE at levels
// 00/01/03/11/13/33 with a pseudo-random or random card challenge, secure
// messaging on every later command, INSTALL [for install], [for make
// selectable], [for personalization] and [for extradition], STORE DATA (DGI
// 00B9/8113 key loading, BER-TLV objects, and an SSD's provider data
// objects: DGIs 0100..1FFF at level 33 in a PERSONALIZED SSD's own session,
// see dataobj.go and gp/dataobj.go), PUT KEY, GET STATUS, GET DATA,
// SET STATUS, DELETE, the ARA-M application and the ISD-R EID request.
// OTA (ota.go; ETSI TS 102 225, 3GPP TS 31.115/31.111, TS 102 223):
// ENVELOPE (SMS-PP DOWNLOAD) with SCP80 secured packets for the ISD's TAR
// 000000, concatenated or not, checked against the ISD's OTA key sets
// (KVN 1..F, KIc and KID, with the counter of the last accepted packet in
// the state file) and answered with the PoR; an Amendment B session
// trigger makes FETCH return a proactive OPEN CHANNEL for its connection
// parameters, closed by TERMINAL RESPONSE.
// Logical channels (ISO 7816-4 5.4, 7.1.2): MANAGE CHANNEL opens channels
// 1..19 and closes them, the class byte in its first (0x-3x, 8x) or
// further (4x-7x, Cx-Fx) coding picks the channel, and each channel has
// its own selected application and its own SCP03 session (secure channel
// sessions are bound to their logical channel, GPCS 10.2.1). Every
// application may be selected on several channels at once. There is no
// LOAD (no
// executable load files beyond the built-in SSD and ARA-M packages) and no
// token or DAP verification, so Delegated Management is refused.
//
// The state file holds keys in the clear: it is a test card. It is written
// atomically after every state-changing command (see writeFileAtomic), so
// killing the process at any moment leaves the previous or the new state.
package vcard
