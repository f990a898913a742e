// Package keyport is the domain of the keyport portal: secure modules identified
// by their EID, the supplementary security domains (SSDs) the issuer pre-creates
// on them, the service providers who claim those domains, and the use cases that
// move a domain through its life (DESIGN.md, "Domain state machine").
//
// One concept per file, starting with the vocabulary (eid.go, aid.go, keys.go,
// state.go, errors.go, principal.go); the README's "Layout" section lists every
// file and what it holds. service.go holds the Service, whose fields are the
// ports it needs.
//
// Every port is in ports.go, and adapters implement them: hsm/ is the custody
// ports (Custody, LinkCustody, SecretSealer, PersoCustody, CardKeys,
// OTACustody, KeyMigrator); store/ is Store with its Committer (group commit),
// ClaimWriter (claims as data, pipelined on PostgreSQL), AuditSealer, WakeBus
// and Exclusive (the deployment's lock); cardlink/ is the
// Triggers (the agent's wake-up hub, the replicas' wake-up bus, SMS) and, in
// cardlink/sandbox, the FaultBook; web/ is Metrics. web/ and cardlink/ drive the
// Service; the personalization station (perso/) drives it as a client through
// the gp/ card dialog. cmd/keyport wires them together. The package imports the
// standard library, gp/, internal/wait, the password hash (x/crypto/argon2), TOTP
// (pquerna/otp) and WebAuthn (go-webauthn) only.
package keyport
