package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keyport/keyport/cardlink/smpp"
	"github.com/keyport/keyport/hsm"
)

// config is keyport's one configuration: flags over KEYPORT_* environment
// variables over defaults. Secrets may come from files (KEYPORT_*_FILE).
type config struct {
	DataDir   string // KEYPORT_DATA_DIR, default ./var
	DB        string // KEYPORT_DB: SQLite path or postgres:// URL; default <data>/keyport.db
	HSM       string // KEYPORT_HSM: RFC 7512 URI; default the SoftHSM token under <data>/softhsm
	Addr      string // KEYPORT_ADDR, default 127.0.0.1:8080
	AdminAddr string // KEYPORT_ADMIN_ADDR: card-link admin server (TLS-PSK); empty: off
	// MetricsAddr (KEYPORT_METRICS_ADDR) is where serve answers GET
	// /metrics; empty: off. Never the public address.
	MetricsAddr string
	// AdminLegacyTLS (KEYPORT_ADMIN_LEGACY_TLS) lets the admin server also
	// speak TLS 1.0/1.1 and the CBC-SHA suites, for modules that need them.
	AdminLegacyTLS bool
	// AdminTLS13 (KEYPORT_ADMIN_TLS13) lets the admin server also speak
	// TLS 1.3 with an external PSK (GP Amd B v1.2), next to TLS 1.2.
	AdminTLS13 bool
	OAEPHash   string // KEYPORT_OAEP_HASH: sha1 (SoftHSM) or sha256
	// HSMSessions (KEYPORT_HSM_SESSIONS) bounds the PKCS#11 sessions in
	// use at once; 0: twice the CPUs, at least 4 (hsm.Config.PoolSize).
	HSMSessions int
	// DualControl (KEYPORT_DUAL_CONTROL) is how many different admins an
	// operation that releases a secret or custody needs; 1 is development.
	DualControl int
	LogFormat   string // KEYPORT_LOG_FORMAT: text or json
	// SMPP (KEYPORT_SMPP_URL or KEYPORT_SMPP_URL_FILE) is the SMS gateway
	// account, smpp://system_id:password@host:port?source=…; nil: off. It
	// has no flag: the URL holds a password, which a command line shows.
	SMPP    *smpp.Config
	smppURL string
	// SMSAdminAddr (KEYPORT_SMS_ADMIN_ADDR) is the admin server's IP:port
	// as handsets reach it, named in the trigger SMS; default the admin
	// server's listening address.
	SMSAdminAddr string
}

// defaultDualControl is --dual-control's default: two admins.
const defaultDualControl = 2

// env returns KEYPORT_<name>, or the trimmed content of the file named by
// KEYPORT_<name>_FILE, or def. Setting both is an error, not a guess.
func env(name, def string) (string, error) {
	v, hasV := os.LookupEnv("KEYPORT_" + name)
	f, hasF := os.LookupEnv("KEYPORT_" + name + "_FILE")
	switch {
	case hasV && hasF:
		return "", fmt.Errorf("config: set KEYPORT_%s or KEYPORT_%s_FILE, not both", name, name)
	case hasF:
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("config: KEYPORT_%s_FILE: %w", name, err)
		}
		return strings.TrimSpace(string(b)), nil
	case hasV:
		return v, nil
	}
	return def, nil
}

// redacted is a string flag whose value, as the flag package shows it
// (--help's defaults), goes through redact.
type redacted struct {
	p      *string
	redact func(string) string
}

func (r redacted) String() string {
	if r.p == nil || *r.p == "" {
		return ""
	}
	return r.redact(*r.p)
}

func (r redacted) Set(v string) error { *r.p = v; return nil }

// redactHSM is a PKCS#11 URI without its PIN (hsm.URI's String), for
// what is shown or logged.
func redactHSM(uri string) string {
	u, err := hsm.ParseURI(uri)
	if err != nil {
		return "(a PKCS#11 URI that does not parse)"
	}
	return u.String()
}

// bind registers the common flags on fs with environment defaults.
func (c *config) bind(fs *flag.FlagSet) error {
	var err error
	get := func(name, def string) string {
		v, e := env(name, def)
		if e != nil && err == nil {
			err = e
		}
		return v
	}
	fs.StringVar(&c.DataDir, "data-dir", get("DATA_DIR", "./var"), "data directory (KEYPORT_DATA_DIR)")
	// Their defaults come from the environment and may hold a password or
	// a PIN: --help shows them redacted.
	c.DB, c.HSM = get("DB", ""), get("HSM", "")
	fs.Var(redacted{&c.DB, redactDSN}, "db", "SQLite `file` or postgres:// URL (KEYPORT_DB, KEYPORT_DB_FILE); default <data-dir>/keyport.db")
	fs.Var(redacted{&c.HSM, redactHSM}, "hsm", "PKCS#11 `URI`, RFC 7512 (KEYPORT_HSM, KEYPORT_HSM_FILE); default a SoftHSM token in <data-dir>/softhsm")
	fs.StringVar(&c.Addr, "addr", get("ADDR", "127.0.0.1:8080"), "HTTP listen address (KEYPORT_ADDR)")
	fs.StringVar(&c.AdminAddr, "admin-addr", get("ADMIN_ADDR", ""), "card-link admin server address, TLS-PSK (KEYPORT_ADMIN_ADDR)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", get("METRICS_ADDR", ""), "Prometheus /metrics listen address, for a management network only; empty: off (KEYPORT_METRICS_ADDR)")
	legacy, lerr := strconv.ParseBool(get("ADMIN_LEGACY_TLS", "false"))
	if lerr != nil && err == nil {
		err = fmt.Errorf("config: KEYPORT_ADMIN_LEGACY_TLS: %w", lerr)
	}
	fs.BoolVar(&c.AdminLegacyTLS, "admin-legacy-tls", legacy,
		"admin server: also accept TLS 1.0/1.1 and the CBC-SHA suites, for modules whose profile needs them (KEYPORT_ADMIN_LEGACY_TLS)")
	tls13, terr := strconv.ParseBool(get("ADMIN_TLS13", "false"))
	if terr != nil && err == nil {
		err = fmt.Errorf("config: KEYPORT_ADMIN_TLS13: %w", terr)
	}
	fs.BoolVar(&c.AdminTLS13, "admin-tls13", tls13,
		"admin server: also accept TLS 1.3 with an external PSK (TLS_AES_128_GCM_SHA256), for modules whose profile needs it (KEYPORT_ADMIN_TLS13)")
	fs.StringVar(&c.OAEPHash, "oaep-hash", get("OAEP_HASH", "sha1"), "RSA-OAEP hash of the key wrap: sha1 or sha256 (KEYPORT_OAEP_HASH)")
	sessions, serr := strconv.Atoi(get("HSM_SESSIONS", "0"))
	if serr != nil && err == nil {
		err = fmt.Errorf("config: KEYPORT_HSM_SESSIONS: %w", serr)
	}
	fs.IntVar(&c.HSMSessions, "hsm-sessions", sessions,
		"PKCS#11 sessions in use at once; 0: twice the CPUs, at least 4. A software token on few cores may do more with one per core (KEYPORT_HSM_SESSIONS)")
	dual, derr := strconv.Atoi(get("DUAL_CONTROL", strconv.Itoa(defaultDualControl)))
	if derr != nil && err == nil {
		err = fmt.Errorf("config: KEYPORT_DUAL_CONTROL: %w", derr)
	}
	fs.IntVar(&c.DualControl, "dual-control", dual,
		"admins needed to export a module PSK or a transport key, create an admin token or approve a provider; 1 turns dual control off, for development (KEYPORT_DUAL_CONTROL)")
	fs.StringVar(&c.LogFormat, "log-format", get("LOG_FORMAT", "text"), "log format: text or json (KEYPORT_LOG_FORMAT)")
	c.smppURL = get("SMPP_URL", "")
	fs.StringVar(&c.SMSAdminAddr, "sms-admin-addr", get("SMS_ADMIN_ADDR", ""), "admin server IP:port the trigger SMS names, as handsets reach it; default the admin server's address (KEYPORT_SMS_ADMIN_ADDR)")
	return err
}

func (c *config) finish() error {
	if c.OAEPHash != "sha1" && c.OAEPHash != "sha256" {
		return fmt.Errorf("config: --oaep-hash must be sha1 or sha256, got %q", c.OAEPHash)
	}
	if c.HSMSessions < 0 || c.HSMSessions > 1024 {
		return fmt.Errorf("config: --hsm-sessions must be 0 (automatic) to 1024, got %d", c.HSMSessions)
	}
	if c.DualControl < 1 || c.DualControl > 9 {
		return fmt.Errorf("config: --dual-control must be 1 to 9 admins, got %d", c.DualControl)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("config: --log-format must be text or json, got %q", c.LogFormat)
	}
	if c.smppURL != "" {
		sc, err := smpp.ParseURL(c.smppURL)
		if err != nil {
			return fmt.Errorf("config: KEYPORT_SMPP_URL: %w", err)
		}
		c.SMPP = &sc
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return err
	}
	c.DataDir = abs
	if c.DB == "" {
		c.DB = filepath.Join(c.DataDir, "keyport.db")
	}
	return nil
}

// storeInDataDir says whether the database and the HSM are the embedded
// defaults in the data directory (neither --db nor --hsm given otherwise).
// Call it after finish.
func (c *config) storeInDataDir() bool {
	return c.HSM == "" && c.DB == filepath.Join(c.DataDir, "keyport.db")
}
