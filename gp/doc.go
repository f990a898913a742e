// Package gp holds keyport's GlobalPlatform and ETSI card codecs: pure
// functions and small state machines over bytes, with no I/O of their own
// and only the standard library. Everything here can be checked against the published
// vectors in testdata/ (copied from /work/shared/vectors).
//
// Main types, by file:
//
//   - apdu.go: Command (C-APDU, ISO 7816-4 5.1, short and extended) and
//     Response (R-APDU), with ParseCommand, ParseResponse and Bytes.
//   - sw.go: SW, a status word with its name, and *SWError, the error a
//     card status becomes.
//   - tlv.go: BER-TLV (ISO 7816-4 5.2, ITU-T X.690): Tag, TLV, ParseTLV,
//     ParseAllTLV, Encode, EncodeLength.
//   - scp03.go: SCP03 (GP Amendment D): StaticKey (the static key behind a
//     small interface so that it may live in an HSM), AESKey, KeySet, KDF,
//     HostSession (off-card entity) and CardSession (security domain).
//   - host.go: Channel (what carries APDUs to a card; the I/O lives behind
//     it) and Host, the host side of a card dialog over it: Send (wrapped
//     by an open SCP03 session), SendOK, Select, InitializeUpdate with the
//     card cryptogram checked before ExternalAuthenticate, GET STATUS
//     paging, key versions, and INSName, the one table of command names.
//   - commands.go: builders for SELECT, INITIALIZE UPDATE, INSTALL, STORE
//     DATA, GET STATUS, GET DATA, DELETE, SET STATUS (GPCS chapter 11).
//   - putkey.go: PUT KEY (GPCS 11.8, AmdD Table 7-10), key encryption
//     under the static Key-DEK, the GP KCV, STORE DATA key loading DGIs.
//   - registry.go: Privileges, LifeCycle and GET STATUS parsing.
//   - carddata.go: GET DATA objects: CPLC, key information, card
//     recognition data, sequence counter, extended card resources.
//   - script.go: ETSI TS 102 226 expanded remote APDU scripts (AE/AA
//     command scripts, AF/AB response scripts).
//   - channel.go: logical channels (ISO 7816-4 5.4): the channel in the
//     class byte (ChannelOf, OnChannel), MANAGE CHANNEL, and
//     LogicalChannel, a Channel that sends everything on one channel.
//   - aram.go: GP SE Access Control (ARA-M) REF-AR-DO rules: building,
//     storing and deleting them, and Host.AccessRules / Host.RefreshTag,
//     the paged reads a handset's enforcer makes.
//   - eid.go: byte-level EID (GET EID response) and AID helpers.
//   - diversify.go: GPPro-style key diversification (emv, visa2, kdf3).
//   - scp80.go: SCP80 secured packets (ETSI TS 102 225, SMS dialect of
//     3GPP TS 31.115): SPI, CommandPacket.Seal, ParseCommandPacket and
//     SecuredPacket.Open (a wrong checksum or cipher is a *PoRError with
//     its PoR status), CheckCounter for the SPI counter modes, PoRs
//     (ResponsePacket.SealSMS, OpenSMSPoR), and the KIc/KID keys behind
//     OTACipher/OTAChecksum (OTAKey: AES-CBC/AES-CMAC, 3DES-CBC/CBC-MAC).
//   - smspp.go: SMS-PP framing: user data headers (IEI 70, IEI 00
//     concatenation: SMSPPSegments, JoinSMSPP), SMS-DELIVER TPDUs (PID 7F,
//     DCS F6), the CAT objects around them (ENVELOPE SMS-PP DOWNLOAD D1,
//     proactive OPEN CHANNEL D0, TERMINAL RESPONSE) and the Amendment B
//     administration session trigger (81).
//
// Errors start with "gp: ". Decoders never panic; malformed input yields an
// error that wraps ErrMalformed (or ErrTruncated when bytes are missing).
// Card-side SCP03 failures are *SWError values carrying the status word the
// card should answer with.
package gp
