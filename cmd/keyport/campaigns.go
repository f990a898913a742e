package main

import (
	"context"
	"os"
	"strconv"

	"github.com/keyport/keyport"
)

// startCampaigns runs the campaign runner of this replica until the
// returned stop is called (or ctx ends). Its lease holder is the host name
// and process ID, so a restarted replica takes a campaign over once the
// old lease expires (30 s), and the target rows keep it from queueing any
// target twice.
func startCampaigns(ctx context.Context, a *app) func() {
	host, _ := os.Hostname()
	r := &keyport.CampaignRunner{Service: a.svc, Holder: host + "/" + strconv.Itoa(os.Getpid())}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	a.log.Info("campaign runner started", "holder", r.Holder)
	return func() {
		cancel()
		<-done
	}
}
