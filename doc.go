// Package keyport is the domain of the keyport portal: secure modules identified
// by their EID, the supplementary security domains (SSDs) the issuer pre-creates
// on them, the service providers who claim those domains, and the use cases that
// move a domain through its life (DESIGN.md, "Domain state machine").
//
// The package depends only on the standard library and gp/. Adapters implement
// the small interfaces in ports.go: hsm/ is Custody, store/ is Store; web/ and
// cardlink/ drive the Service. cmd/keyport wires them together.
package keyport
