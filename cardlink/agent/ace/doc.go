// Package ace is the handset's access control enforcer (GPD SEAC "ACE",
// with the part of the Open Mobile API an app sees), which `keyport agent
// --app-socket` runs beside the admin sessions of package agent: apps ask
// it over a local Unix socket for a logical channel to an applet of the
// secure element, it grants or refuses it by the app's signing
// certificate and the ARA-M's access rules, and relays the app's APDUs on
// the channel within the rule's APDU filters. See Enforcer for the trust
// model and the rule cache, Decide for the rule search, and proto.go for
// the socket protocol.
//
// It depends on gp only (and a gp.Channel to the module, a *pcsc.Reader
// in keyport agent), so its fuzz targets run on a small binary.
package ace
