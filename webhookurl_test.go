package keyport_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
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
		"https://[64:ff9b:1::a9fe:a9fe]/", "https://[::ffff:0:a9fe:a9fe]/", "https://[2002:a9fe:a9fe::1]/",
		"https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "https://[fec0::1]/", "https://[2001:db8::1]/",
		"https://192.0.2.1/", "https://bank.example:22/", "https://bank.example:0/", "https://bank.example:80/",
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
		"2a00:1450:4001:81c::200e": true, "2001:4860:4860::8888": true, "2001:200::1": true, "3ffe:ffff::1": true,
		"64:ff9b::a9fe:a9fe": false, "64:ff9b::a00:1": false,
	} {
		err := keyport.WebhookAddrAllowed(netip.MustParseAddr(s))
		if (err == nil) != ok {
			t.Errorf("WebhookAddrAllowed(%s) = %v, want allowed=%v", s, err, ok)
		}
	}
}

// Each special-purpose range, and each prefix that carries an IPv4
// address a translator or tunnel would reach, is refused in the form it
// takes, whatever the embedded address; ordinary public addresses pass.
func TestWebhookAddrAllowedRefusesSpecialAndIPv4EmbeddingIPv6Prefixes(t *testing.T) {
	for _, c := range []struct{ addr, why string }{
		{"64:ff9b:1::a9fe:a9fe", "local-use NAT64"}, // RFC 8215, to 169.254.169.254
		{"64:ff9b:1::808:808", "local-use NAT64"},   // even to a public address
		{"64:ff9b:1:ffff::1", "local-use NAT64"},
		{"::ffff:0:a9fe:a9fe", "IPv4-translated"}, // SIIT
		{"::ffff:0:808:808", "IPv4-translated"},
		{"::808:808", "IPv4-compatible"},
		{"2002:a9fe:a9fe::1", "6to4"}, {"2002:7f00:1::1", "6to4"}, {"2002:808:808::1", "6to4"},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"},
		{"2001:2::1", "IETF protocol assignments"},  // benchmarking
		{"2001:10::1", "IETF protocol assignments"}, // ORCHID
		{"2001:20::1", "IETF protocol assignments"}, // ORCHIDv2
		{"2001:1ff:ffff::1", "IETF protocol assignments"},
		{"2001:db8::1", "documentation"}, {"3fff::1", "documentation"}, {"3fff:fff:ffff::1", "documentation"},
		{"fec0::1", "site-local"}, {"feff::1", "site-local"}, {"fe00::1", "outside global unicast"},
		{"100::1", "discard-only"}, {"100:0:0:1::1", "outside global unicast"},
		{"5f00::1", "outside global unicast"}, {"4000::1", "outside global unicast"}, {"1fff::1", "outside global unicast"},
		{"192.0.2.1", "documentation"}, {"198.51.100.1", "documentation"}, {"203.0.113.1", "documentation"},
		{"::ffff:203.0.113.1", "documentation"}, {"64:ff9b::c000:201", "documentation"},
		{"192.88.99.1", "6to4 relay anycast"},
	} {
		err := keyport.WebhookAddrAllowed(netip.MustParseAddr(c.addr))
		if err == nil || !strings.Contains(err.Error(), c.why) {
			t.Errorf("WebhookAddrAllowed(%s) = %v, want a refusal naming %q", c.addr, err, c.why)
		}
	}
	for _, a := range []string{"8.8.8.8", "1.1.1.1", "93.184.215.14", "192.0.1.1", "192.0.3.1", "203.0.114.1",
		"2606:4700::1111", "2a03:2880:f10c:83:face:b00c:0:25de", "2001:200::1", "2001:db9::1", "2003::1",
		"3ffe::1", "64:ff9b::808:808", "::ffff:1.1.1.1"} {
		if err := keyport.WebhookAddrAllowed(netip.MustParseAddr(a)); err != nil {
			t.Errorf("WebhookAddrAllowed(%s): %v", a, err)
		}
	}
}

// A webhook goes to 443 or a port from 1024: the low ports of other
// services (ssh, smtp, http), and port 0, are refused at save with the
// rule in the message. A development receiver on loopback takes any port.
func TestWebhookPortsAre443OrUnprivileged(t *testing.T) {
	for _, raw := range []string{"https://bank.example:22/", "https://bank.example:25/", "https://bank.example:80/",
		"https://bank.example:0/", "https://bank.example:1023/", "https://bank.example:442/", "https://bank.example:65536/",
		"https://bank.example:99999/", "https://93.184.215.14:111/", "https://[2606:4700::1111]:22/"} {
		_, err := keyport.CheckWebhookURL(raw, false)
		var ie *keyport.InvalidError
		if !errors.As(err, &ie) || ie.Field != "webhook_url" || !strings.Contains(ie.Reason, "use 443 or a port from 1024 to 65535") &&
			!strings.Contains(ie.Reason, "not a port number") {
			t.Errorf("CheckWebhookURL(%q) = %v, want the port refused", raw, err)
		}
	}
	for _, raw := range []string{"https://bank.example/", "https://bank.example:443/", "https://bank.example:1024/",
		"https://bank.example:8443/", "https://bank.example:6379/", "https://bank.example:65535/", "https://93.184.215.14:8443/"} {
		if _, err := keyport.CheckWebhookURL(raw, false); err != nil {
			t.Errorf("CheckWebhookURL(%q): %v", raw, err)
		}
	}
	for _, raw := range []string{"http://127.0.0.1:9/events", "http://[::1]:80/", "https://127.0.0.1:22/"} {
		if _, err := keyport.CheckWebhookURL(raw, true); err != nil {
			t.Errorf("CheckWebhookURL(%q) with the development opt-in: %v", raw, err)
		}
	}
	for _, p := range []string{"", "443", "1024", "65535"} {
		if err := keyport.WebhookPortAllowed(p); err != nil {
			t.Errorf("WebhookPortAllowed(%q): %v", p, err)
		}
	}
	for _, p := range []string{"0", "1", "22", "1023", "65536", "x"} {
		if err := keyport.WebhookPortAllowed(p); err == nil {
			t.Errorf("WebhookPortAllowed(%q) = nil", p)
		}
	}
}
