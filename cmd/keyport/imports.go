package main

import (
	"context"
	"time"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/wait"
)

// importSweepEvery is how often a replica looks for imports whose process
// stopped (keyport.ImportStaleAfter).
const importSweepEvery = time.Minute

// startImportSweep runs the import sweep of this replica until the returned
// stop is called (or ctx ends). Every replica sweeps; two finishing the same
// import only share the work.
func startImportSweep(ctx context.Context, a *app) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait.Every(ctx, importSweepEvery, func(ctx context.Context) error {
			_, err := a.svc.SweepImports(ctx, time.Now().Add(-keyport.ImportStaleAfter), 10)
			return err
		}, func(err error) { a.log.Warn("import sweep", "err", err) })
	}()
	return func() {
		cancel()
		<-done
	}
}
