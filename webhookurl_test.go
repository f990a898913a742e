package keyport_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/internal/fixture"
	"github.com/keyport/keyport/store/storetest"
)

// A provider sets its webhook to an address inside keyport's network: each
// is refused at save, and the URL it had stays.
func TestWebhookURLsToLoopbackPrivateLinkLocalOrLocalNamesAreRefusedAtSave(t *testing.T) {
	ctx := context.Background()
	w := fixture.New(t, storetest.Open(t, storetest.SQLitePath(t)), 1, 1)
	p, _, _ := w.Provider(t, "Bank", fixture.RSAKeys()[0])
	if _, err := w.Svc.SetWebhook(ctx, p, "https://bank.example/keyport"); err != nil {
		t.Fatal(err)
	}
	for _, raw := range []string{
		"https://127.0.0.1/hook", "https://127.0.0.1:8443/hook", "https://[::1]/hook", "https://169.254.169.254/latest/meta-data",
		"https://10.0.0.1/hook", "https://172.16.5.4/", "https://192.168.1.1/", "https://0.0.0.0/", "https://[::]/",
		"https://100.64.0.1/", "https://[fd00::1]/", "https://[fe80::1]/", "https://[fe80::1%25eth0]/", "https://224.0.0.1/",
		"https://[ff02::1]/", "https://[::ffff:127.0.0.1]/", "https://[::ffff:169.254.169.254]/", "https://[::ffff:10.0.0.1]/",
		"https://[64:ff9b::a9fe:a9fe]/", "https://255.255.255.255/",
		"https://localhost/", "https://LOCALHOST./", "https://app.localhost/", "https://metadata.google.internal/",
		"https://printer.local/", "https://intranet/", "https://2130706433/", "https://127.1/", "https://0x7f.0x1/",
		"http://bank.example/hook", "http://127.0.0.1:9/events", "ftp://bank.example/", "https://user@bank.example/",
	} {
		if _, err := w.Svc.SetWebhook(ctx, p, raw); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("SetWebhook(%q) = %v, want ErrInvalid", raw, err)
		}
	}
	prov, err := w.Svc.GetProvider(ctx, p, p.ProviderID)
	if err != nil || prov.WebhookURL != "https://bank.example/keyport" {
		t.Fatalf("webhook after refusals: %q %v", prov.WebhookURL, err)
	}
	for _, raw := range []string{"https://hooks.bank.example:8443/k?x=1", "https://93.184.215.14/hook", "https://[2606:4700::1111]/"} {
		if _, err := w.Svc.SetWebhook(ctx, p, raw); err != nil {
			t.Errorf("SetWebhook(%q): %v", raw, err)
		}
	}
}

// The development opt-in allows a local receiver on loopback and nothing
// else: private and link-local addresses, and plain http elsewhere, stay
// refused.
func TestDevLoopbackWebhooksAllowLoopbackOnly(t *testing.T) {
	for _, raw := range []string{"http://127.0.0.1:9/events", "http://[::1]:9/events", "https://127.0.0.1:8443/"} {
		if _, err := keyport.CheckWebhookURL(raw, false); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("CheckWebhookURL(%q) without the opt-in = %v", raw, err)
		}
		if _, err := keyport.CheckWebhookURL(raw, true); err != nil {
			t.Errorf("CheckWebhookURL(%q) with the opt-in: %v", raw, err)
		}
	}
	for _, raw := range []string{"http://10.0.0.1/", "http://169.254.169.254/", "http://localhost:9/", "http://bank.example/", "https://192.168.0.10/"} {
		if _, err := keyport.CheckWebhookURL(raw, true); !errors.Is(err, keyport.ErrInvalid) {
			t.Errorf("CheckWebhookURL(%q) with the opt-in = %v, want ErrInvalid", raw, err)
		}
	}
}

func TestWebhookAddrAllowedOnlyPublicUnicast(t *testing.T) {
	for s, ok := range map[string]bool{
		"8.8.8.8": true, "93.184.215.14": true, "2606:4700::1111": true, "::ffff:8.8.8.8": true, "64:ff9b::808:808": true,
		"127.0.0.1": false, "127.9.9.9": false, "::1": false, "10.1.2.3": false, "172.31.255.255": false, "192.168.0.1": false,
		"169.254.169.254": false, "fe80::1": false, "fc00::1": false, "fd12:3456::1": false, "100.64.0.1": false,
		"100.127.255.255": false, "0.0.0.0": false, "::": false, "224.0.0.251": false, "ff05::2": false,
		"::ffff:127.0.0.1": false, "::ffff:192.168.1.1": false, "64:ff9b::7f00:1": false, "::127.0.0.1": false,
	} {
		err := keyport.WebhookAddrAllowed(netip.MustParseAddr(s))
		if (err == nil) != ok {
			t.Errorf("WebhookAddrAllowed(%s) = %v, want allowed=%v", s, err, ok)
		}
	}
}
