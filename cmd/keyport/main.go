// Command keyport is the one binary of keyport: the portal server and every
// tool around it (DESIGN.md, "Commands").
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `keyport — security domains on secure modules, without a TSM

usage: keyport <command> [flags]

  serve                      portal, REST API (and card-link) on --addr
  demo [--modules 3 --domains 4] [--pcsc]
                             serve demo data (default ./var/demo): virtual modules, agents, a demo provider
  migrate                    apply database migrations
  hsm init                   create the token's long-lived keys (idempotent)
  batch create NAME          create a batch; --export-to manufacturer.pem for an imported batch
  import --batch NAME FILE   import a manufacturer's JSON Lines file
  perso --reader R --batch B personalize the module in PC/SC reader R: --domains N SSDs, derived keys
  provider add NAME --email  create an approved provider and print its API token
  admin token [--ttl D]      create an issuer-admin API token (default 90 days)
  admin token list|revoke ID list issuer-admin tokens (owner, expiry, last use) or revoke one
  admin user add EMAIL       create an issuer-admin portal user; prints its password once (replaced at first sign-in)
  admin user disable|enable EMAIL
                             disable an admin user (signed out, tokens refused) or enable again
  audit verify               verify the audit chain and its HSM checkpoints
  backup --out F             consistent copy of the database while the server runs (not the HSM token)
  restore --from F [--force] restore a backup into the database (refuses an existing one unless --force,
                             and any a keyport serve is using)
  sp keygen --out PREFIX     (provider tool) make an RSA-3072 wrapping key pair
  sp unwrap PACKAGE --key K  (provider tool) verify and unwrap a key package
  sp script --package P --key K --counter N (--new-keys F | --generate)
                             (provider tool) build the second-key SCP03 script
  sp data put|get --keys K (--counter N | --portal URL) --dgi 0101 [--in F | --count N]
                             (provider tool) store or read data objects through card-link, SCP03 level 33
  sp data read --keys K --script S --job J
                             (provider tool) verify and decrypt a data job's answer offline
  sp serve --keys K --tls-cert C --tls-key K --dgi 0101 --count N
                             (provider tool) the provider's server of the live data path (app relay)
  domain lock|unlock|release EID AID
                             queue the issuer's lock, unlock or release of a domain; the card confirms it
  module psk EID --out F     write a module's TLS-PSK for the handset agent (admin, audited, dual control)
  module shared-msisdns      list the MSISDNs several modules have (from before keyport refused it)
  approval list|request OP TARGET|approve ID|execute ID [--out F]|cancel ID
                             dual control: one operator requests, another approves, the first executes
  agent --reader R --server HOST:PORT --psk-identity ID --psk-file F [--app-socket PATH]
                             handset agent: admin sessions for the module in reader R;
                             with --app-socket also the access control enforcer for apps
  app --socket PATH --cert app.pem --aid AID [--apdu HEX ...]
                             play a provider's mobile app: a channel through the enforcer
  app relay --socket PATH --cert app.pem --aid AID --server URL --ca ca.pem
                             play a provider's mobile app relaying sp serve's session to its domain
  vcard --state FILE         run a virtual secure module attached to vpcd
  bench claims|lookup        measure claims/s and EID lookups against same-run baselines

Commands that change state take --operator NAME (default: the OS user) for the audit trail.
Common flags (and environment): --data-dir (KEYPORT_DATA_DIR), --db (KEYPORT_DB),
--hsm (KEYPORT_HSM), --addr (KEYPORT_ADDR), --oaep-hash (KEYPORT_OAEP_HASH).
Run "keyport <command> -h" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, "keyport:", ee.err)
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "keyport:", err)
		os.Exit(1)
	}
}

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitError{2, errors.New("no command")}
	}
	sub := func(name string) []string {
		if len(args) < 2 {
			return nil
		}
		if args[1] == name {
			return args[2:]
		}
		return nil
	}
	switch args[0] {
	case "serve":
		return cmdServe(ctx, args[1:])
	case "demo":
		return cmdDemo(ctx, args[1:])
	case "migrate":
		return cmdMigrate(ctx, args[1:])
	case "hsm":
		if a := sub("init"); a != nil || (len(args) == 2 && args[1] == "init") {
			return cmdHSMInit(ctx, a)
		}
	case "batch":
		if len(args) >= 2 && args[1] == "create" {
			return cmdBatchCreate(ctx, args[2:])
		}
	case "import":
		return cmdImport(ctx, args[1:])
	case "perso":
		return cmdPerso(ctx, args[1:])
	case "provider":
		if len(args) >= 2 && args[1] == "add" {
			return cmdProviderAdd(ctx, args[2:])
		}
	case "admin":
		if len(args) >= 3 && args[1] == "token" && args[2] == "list" {
			return cmdAdminTokenList(ctx, args[3:])
		}
		if len(args) >= 3 && args[1] == "token" && args[2] == "revoke" {
			return cmdAdminTokenRevoke(ctx, args[3:])
		}
		if len(args) >= 2 && args[1] == "token" {
			return cmdAdminToken(ctx, args[2:])
		}
		if len(args) >= 3 && args[1] == "user" {
			switch args[2] {
			case "add":
				return cmdAdminUserAdd(ctx, args[3:])
			case "disable":
				return cmdAdminUserDisable(ctx, args[3:], true)
			case "enable":
				return cmdAdminUserDisable(ctx, args[3:], false)
			}
		}
	case "audit":
		if len(args) >= 2 && args[1] == "verify" {
			return cmdAuditVerify(ctx, args[2:])
		}
	case "sp":
		if len(args) >= 2 {
			switch args[1] {
			case "keygen":
				return cmdSPKeygen(args[2:])
			case "unwrap":
				return cmdSPUnwrap(ctx, args[2:])
			case "script":
				return cmdSPScript(ctx, args[2:])
			case "data":
				return cmdSPData(ctx, args[2:])
			case "serve":
				return cmdSPServe(ctx, args[2:])
			}
		}
	case "domain":
		if len(args) >= 2 && (args[1] == "lock" || args[1] == "unlock" || args[1] == "release") {
			return cmdDomain(ctx, args[1], args[2:])
		}
	case "module":
		if len(args) >= 2 && args[1] == "psk" {
			return cmdModulePSK(ctx, args[2:])
		}
		if len(args) >= 2 && args[1] == "shared-msisdns" {
			return cmdModuleSharedMSISDNs(ctx, args[2:])
		}
	case "approval":
		return cmdApproval(ctx, args[1:])
	case "backup":
		return cmdBackup(ctx, args[1:])
	case "restore":
		return cmdRestore(ctx, args[1:])
	case "vcard":
		return cmdVCard(ctx, args[1:])
	case "agent":
		return cmdAgent(ctx, args[1:])
	case "app":
		return cmdApp(ctx, args[1:])
	case "bench":
		return cmdBench(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return exitError{2, fmt.Errorf("unknown command %q", joinArgs(args))}
}

func joinArgs(a []string) string {
	if len(a) > 2 {
		a = a[:2]
	}
	s := ""
	for i, x := range a {
		if i > 0 {
			s += " "
		}
		s += x
	}
	return s
}

// Where commands write; tests replace them to read what a user would see.
var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)
