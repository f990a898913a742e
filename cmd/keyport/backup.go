package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/store"
)

// cmdBackup writes a consistent copy of the database to a new file while
// the server runs (store.Backup). The HSM token is not in it.
func cmdBackup(ctx context.Context, args []string) error {
	var out *string
	cfg, _, err := parseCommand("backup", args, func(fs *flag.FlagSet) {
		out = fs.String("out", "", "the new backup file (never overwritten)")
	})
	if err != nil {
		return err
	}
	if *out == "" {
		return exitError{2, errors.New("backup: give --out FILE")}
	}
	st, err := store.Open(ctx, cfg.DB)
	if err != nil {
		return err
	}
	defer st.Close()
	info, err := st.Backup(ctx, *out)
	if errors.Is(err, store.ErrInUse) {
		return exitError{5, err}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "backup: %s, %d bytes, %s schema version %d\n", *out, info.Bytes, info.Dialect, info.SchemaVersion)
	fmt.Fprintln(stdout, "backup: the HSM token is not in it; back the token up as well (README, \"Backup and restore\")")
	return nil
}

// cmdRestore restores a backup into the configured database, which must
// not exist unless --force; then the schema is checked as serve checks it.
// It holds the database's use lock throughout: it refuses (exit 5) while a
// keyport serve, a backup or another restore uses the database, and a
// serve starting meanwhile fails.
func cmdRestore(ctx context.Context, args []string) error {
	var from *string
	var force *bool
	cfg, _, err := parseCommand("restore", args, func(fs *flag.FlagSet) {
		from = fs.String("from", "", "the backup file made by keyport backup")
		force = fs.Bool("force", false, "overwrite a database that exists already (refused while a keyport serve uses it: stop every server first)")
	})
	if err != nil {
		return err
	}
	if *from == "" {
		return exitError{2, errors.New("restore: give --from FILE")}
	}
	info, err := store.RestoreOptions{Force: *force, AfterRestore: func(ctx context.Context, info *store.BackupInfo) error {
		fmt.Fprintf(stdout, "restore: %s schema version %d restored into %s\n", info.Dialect, info.SchemaVersion, redactDSN(cfg.DB))
		if info.SchemaVersion != store.LatestVersion() {
			return nil
		}
		return finishRestoredImports(ctx, cfg.DB)
	}}.Restore(ctx, *from, cfg.DB)
	if errors.Is(err, store.ErrBackupExists) {
		return exitError{4, err}
	}
	if errors.Is(err, store.ErrInUse) {
		return exitError{5, err}
	}
	if err != nil {
		return err
	}
	if info.SchemaVersion < store.LatestVersion() {
		fmt.Fprintf(stdout, "restore: this keyport needs version %d: run keyport migrate\n", store.LatestVersion())
	}
	fmt.Fprintln(stdout, "restore: with the matching HSM token in place, run keyport audit verify, then keyport serve")
	return nil
}

// finishRestoredImports finishes the imports a backup caught half-way: no
// process loads them into the database just restored, so one still loading
// is dropped (its file must be imported again) and a committed one is
// published.
func finishRestoredImports(ctx context.Context, dsn string) error {
	st, err := store.Open(ctx, dsn)
	if err != nil {
		return err
	}
	defer st.Close()
	svc := &keyport.Service{Store: st, Log: slog.New(slog.DiscardHandler)}
	for {
		imps, err := svc.SweepImports(ctx, time.Time{}, 100)
		if err != nil {
			return fmt.Errorf("restore: finish imports: %w", err)
		}
		for _, imp := range imps {
			if imp.State == keyport.ImportPublishing {
				fmt.Fprintf(stdout, "restore: an import committed as the backup was taken (%d modules) is now published\n", imp.Modules)
			} else {
				fmt.Fprintf(stdout, "restore: an import still loading as the backup was taken (%d modules stored so far) was dropped: import its file again\n", imp.Modules)
			}
		}
		if len(imps) < 100 {
			return nil
		}
	}
}
