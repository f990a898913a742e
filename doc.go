// Package keyport is the domain of the keyport portal: secure modules identified
// by their EID, the supplementary security domains (SSDs) the issuer pre-creates
// on them, the service providers who claim those domains, and the use cases that
// move a domain through its life (DESIGN.md, "Domain state machine").
//
// One concept per file: the domain's vocabulary (eid.go, aid.go, keys.go,
// state.go, errors.go, principal.go), then one file per thing a use case acts
// on — batch.go and importfile.go, provider.go, wrappingkey.go, module.go,
// claim.go, keypackage.go, account.go and totp.go, outbox.go, audit.go,
// stats.go — and card-link delivery: job.go (jobs and how one ends), script.go
// (second-key scripts), adminsession.go (GP Amendment B admin sessions),
// webhook.go (signed events) and worker.go (the delivery worker's steps).
// service.go holds the Service, whose fields are the ports it needs.
//
// Every port is in ports.go, and adapters implement them: hsm/ is Custody,
// LinkCustody, SecretSealer and PersoCustody; store/ is Store, its
// Committer (group commit) and its ClaimWriter (claims as data, pipelined
// on PostgreSQL); cardlink/ is a Trigger. web/ and cardlink/ drive
// the Service; the personalization station (perso/) drives it as a client
// through the gp/ card dialog. cmd/keyport wires them together. The package
// imports the standard library, gp/, the password hash (x/crypto/argon2) and
// TOTP (pquerna/otp) only.
package keyport
