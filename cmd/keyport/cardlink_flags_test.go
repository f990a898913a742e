package main

import (
	"flag"
	"io"
	"testing"
	"time"
)

func TestWebhookFlagsDefaultToPublicAddressesAndFiveSeconds(t *testing.T) {
	bind := func(args ...string) (*cardLinkFlags, error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cf, err := bindCardLinkFlags(fs)
		if err != nil {
			return nil, err
		}
		return cf, fs.Parse(args)
	}
	cf, err := bind()
	if err != nil || cf.loopbackHooks || cf.webhookTimeout != 5*time.Second {
		t.Fatalf("defaults: %+v %v", cf, err)
	}
	if cf, err = bind("--dev-allow-loopback-webhooks", "--webhook-timeout", "2s"); err != nil || !cf.loopbackHooks || cf.webhookTimeout != 2*time.Second {
		t.Fatalf("flags: %+v %v", cf, err)
	}
	t.Setenv("KEYPORT_DEV_ALLOW_LOOPBACK_WEBHOOKS", "1")
	t.Setenv("KEYPORT_WEBHOOK_TIMEOUT", "750ms")
	if cf, err = bind(); err != nil || !cf.loopbackHooks || cf.webhookTimeout != 750*time.Millisecond {
		t.Fatalf("environment: %+v %v", cf, err)
	}
	t.Setenv("KEYPORT_WEBHOOK_TIMEOUT", "soon")
	if _, err = bind(); err == nil {
		t.Fatal("KEYPORT_WEBHOOK_TIMEOUT=soon accepted")
	}
}

func TestReplicaFlagsLeaseAndLongPollBounds(t *testing.T) {
	bind := func(args ...string) (*cardLinkFlags, error) {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cf, err := bindCardLinkFlags(fs)
		if err != nil {
			return nil, err
		}
		return cf, fs.Parse(args)
	}
	cf, err := bind()
	if err != nil || cf.lease != 2*time.Minute || cf.wakeWait != 25*time.Second || cf.wakeCheck != 5*time.Second {
		t.Fatalf("defaults: %+v %v", cf, err)
	}
	if cf, err = bind("--admin-lease", "3s", "--wake-wait", "1m", "--wake-check", "250ms"); err != nil ||
		cf.lease != 3*time.Second || cf.wakeWait != time.Minute || cf.wakeCheck != 250*time.Millisecond {
		t.Fatalf("flags: %+v %v", cf, err)
	}
	t.Setenv("KEYPORT_ADMIN_LEASE", "45s")
	if cf, err = bind(); err != nil || cf.lease != 45*time.Second {
		t.Fatalf("environment: %+v %v", cf, err)
	}
	for _, bad := range []string{"soon", "0s", "-1s"} {
		t.Setenv("KEYPORT_WAKE_CHECK", bad)
		if _, err = bind(); err == nil {
			t.Fatalf("KEYPORT_WAKE_CHECK=%s accepted", bad)
		}
	}
}
