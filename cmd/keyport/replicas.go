package main

import (
	"flag"
	"fmt"
	"time"
)

// bindReplicaFlags registers serve's settings that matter when several
// replicas share one database (README, "Several replicas"): the admin
// session's lease, which a replica that dies leaves behind, and the
// bounds of the agents' wake-up long poll.
func bindReplicaFlags(fs *flag.FlagSet, cf *cardLinkFlags) error {
	for _, f := range []struct {
		name, env, def, usage string
		to                    *time.Duration
	}{
		{"admin-lease", "ADMIN_LEASE", "2m", "how long an admin session holds its module without a request: a session whose replica died blocks other sessions of the module that long, unless the module resumes it (KEYPORT_ADMIN_LEASE)", &cf.lease},
		{"wake-wait", "WAKE_WAIT", "25s", "how long the admin server holds a handset agent's wake-up long poll (KEYPORT_WAKE_WAIT)", &cf.wakeWait},
		{"wake-check", "WAKE_CHECK", "5s", "how often a held long poll looks for the module's jobs in the database: the bound on a wake-up where the database carries none between replicas (SQLite) or the bus was down (KEYPORT_WAKE_CHECK)", &cf.wakeCheck},
	} {
		v, err := env(f.env, f.def)
		if err != nil {
			return err
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("config: KEYPORT_%s must be a positive duration such as %s, got %q", f.env, f.def, v)
		}
		fs.DurationVar(f.to, f.name, d, f.usage)
	}
	return nil
}
