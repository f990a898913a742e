package web

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
)

// t0 is the limiter tests' clock: each passes times derived from it.
var t0 = time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)

// resetFrom is one reset request as web.resetRequest counts it.
func resetFrom(l *rateLimiter, now time.Time, network, email string) bool {
	return l.allow(now, keyOf("reset:"+network), keyOf("reset:"+emailKey(email)))
}

// One client sends more resets for made-up addresses than the limiter
// holds keys: the victim's address, over its limit, stays over it, from
// that network and from any other, until its window ends.
func TestRateLimiterFloodOfNewAddressesDoesNotResetAnyCounter(t *testing.T) {
	l := newRateLimiter("mail", mailBurst, mailWindow, nil)
	const victim = "victim@bank.example"
	sent := 0
	now := t0
	for range mailBurst + 2 {
		if resetFrom(l, now, "ip:198.51.100.7", victim) {
			sent++
		}
	}
	for i := range rateKeysMax + 1 {
		now = now.Add(time.Millisecond) // the flood takes some 100 s: within the window
		resetFrom(l, now, "ip:198.51.100.7", fmt.Sprintf("x%d@flood.example", i))
	}
	if n := len(l.windows); n != 2 {
		t.Errorf("the refused flood left %d keys, want the network's and the victim's", n)
	}
	for range mailBurst {
		if resetFrom(l, now, "ip:198.51.100.7", victim) {
			sent++
		}
		if resetFrom(l, now, "ip:203.0.113.9", victim) {
			sent++
		}
	}
	if sent != mailBurst {
		t.Fatalf("the victim's address was mailed %d times in one window, limit %d", sent, mailBurst)
	}
	if !resetFrom(l, t0.Add(mailWindow+time.Second), "ip:198.51.100.7", victim) {
		t.Fatal("the next window does not allow the address again")
	}
}

// A client over its network limit creates no key for the addresses it
// types; one within it creates one per address.
func TestRateLimiterRefusedClientCreatesNoAddressKeys(t *testing.T) {
	l := newRateLimiter("mail", mailBurst, mailWindow, nil)
	for i := range mailBurst {
		if !resetFrom(l, t0, "ip:198.51.100.7", fmt.Sprintf("a%d@bank.example", i)) {
			t.Fatalf("attempt %d refused", i+1)
		}
	}
	if n := len(l.windows); n != 1+mailBurst {
		t.Fatalf("%d keys after %d attempts for new addresses, want %d", n, mailBurst, 1+mailBurst)
	}
	for i := range 1000 {
		if resetFrom(l, t0, "ip:198.51.100.7", fmt.Sprintf("b%d@bank.example", i)) {
			t.Fatalf("attempt over the network limit allowed")
		}
	}
	if n := len(l.windows); n != 1+mailBurst {
		t.Fatalf("%d keys after refused attempts, want %d", n, 1+mailBurst)
	}
}

// Many networks each within their limit (a botnet, or the /64s of one
// IPv6 allocation): the table never holds more than maxKeys keys, new
// clients are refused while it is full of live windows (with one warning
// a minute), clients already counted keep their allowance, and a window
// over its limit is not forgotten.
func TestRateLimiterKeysStayBoundedAndFailClosedWhenFull(t *testing.T) {
	var logs bytes.Buffer
	l := newRateLimiter("sign-in", loginBurst, loginWindow, slog.New(slog.NewTextHandler(&logs, nil)))
	l.maxKeys = 1000
	for range loginBurst {
		l.allow(t0, keyOf("ip:198.51.100.7"))
	}
	if l.allow(t0, keyOf("ip:198.51.100.7")) {
		t.Fatal("the 21st sign-in attempt was allowed")
	}
	refused := 0
	for i := range 3 * l.maxKeys {
		now := t0.Add(time.Duration(i) * 50 * time.Millisecond) // 150 s, half the window
		if !l.allow(now, keyOf(fmt.Sprintf("net:2001:db8:0:%x::/64", i))) {
			refused++
		}
		if n := len(l.windows); n > l.maxKeys {
			t.Fatalf("%d keys held, cap %d", n, l.maxKeys)
		}
	}
	if want := 3*l.maxKeys - (l.maxKeys - 1); refused != want {
		t.Errorf("%d new networks refused, want %d", refused, want)
	}
	now := t0.Add(150 * time.Second)
	if l.allow(now, keyOf("ip:198.51.100.7")) {
		t.Error("the network over its limit was forgotten when the table filled")
	}
	if !l.allow(now, keyOf("net:2001:db8:0:1::/64")) {
		t.Error("a network already counted, within its limit, was refused")
	}
	if l.allow(now, keyOf("ip:192.0.2.1")) {
		t.Error("a new network was allowed into the full table")
	}
	// Full from 50 s on: warnings at 50 s and 110 s.
	if got := strings.Count(logs.String(), "rate limiter full"); got != 2 {
		t.Errorf("%d warnings in 100 s of a full table, want 2 (one a minute):\n%s", got, logs.String())
	}
	if !strings.Contains(logs.String(), "limiter=sign-in") || !strings.Contains(logs.String(), "max_keys=1000") {
		t.Errorf("warning does not name the limiter and its cap: %s", logs.String())
	}
}

// Windows are dropped once they have expired, and only then: the table
// empties as the clock moves on, and a full table takes new clients again
// as its oldest windows end.
func TestRateLimiterSweepsExpiredWindows(t *testing.T) {
	l := newRateLimiter("mail", mailBurst, mailWindow, nil)
	l.maxKeys = 100
	for i := range l.maxKeys {
		if !l.allow(t0.Add(time.Duration(i)*time.Second), keyOf(fmt.Sprintf("verify:ip:192.0.2.%d", i))) {
			t.Fatalf("client %d refused", i)
		}
	}
	if l.allow(t0.Add(mailWindow), keyOf("verify:ip:198.51.100.1")) {
		t.Fatal("a new client allowed into the full table before any window ended")
	}
	// At t0+window+1.5 s the first two windows (started at t0 and t0+1 s) have ended.
	if !l.allow(t0.Add(mailWindow+1500*time.Millisecond), keyOf("verify:ip:198.51.100.1")) {
		t.Fatal("a new client refused after the oldest windows ended")
	}
	if n := len(l.windows); n != l.maxKeys-1 {
		t.Fatalf("%d keys after the first two windows ended, want %d", n, l.maxKeys-1)
	}
	if _, ok := l.windows["verify:ip:192.0.2.2"]; !ok {
		t.Fatal("a live window was dropped")
	}
	l.allow(t0.Add(2*mailWindow+time.Hour), keyOf(""))
	if n := len(l.windows); n != 0 {
		t.Fatalf("%d keys once every window has ended", n)
	}
}

// An address longer than any real one is cut: keys stay small.
func TestEmailKeyIsBounded(t *testing.T) {
	long := strings.Repeat("a", 1<<20) + "@bank.example"
	if k := emailKey(long); len(k) > len("email:")+maxEmailKey {
		t.Fatalf("key of %d bytes", len(k))
	}
	if k := emailKey(" Ops@Bank.Example "); k != "email:ops@bank.example" {
		t.Fatalf("key %q", k)
	}
}

// keysFrom are the sign-in keys of a request from addr.
func keysFrom(addr string) []rateKey {
	r := httptest.NewRequest(http.MethodPost, "/login", nil)
	r.RemoteAddr = net.JoinHostPort(addr, "40000")
	return clientKeys("", echo.New().NewContext(r, httptest.NewRecorder()))
}

// Two IPv6 sites (a /48 each: 65,536 /64s) try to sign in from a new /64
// each time, together more times than the limiter holds keys: each /48
// stops after siteScale allowances and adds no key after that, and
// clients elsewhere, IPv4 or another site, keep signing in. Counted per
// /64 only, the flood filled the table and the limiter, failing closed,
// refused everyone new.
func TestRateLimiterIPv6SitesCannotFillTheTable(t *testing.T) {
	l := newRateLimiter("sign-in", loginBurst, loginWindow, nil)
	allowed := 0
	for i := range 1 << 16 {
		for _, site := range []string{"2001:db8:7", "2001:db8:9"} {
			now := t0.Add(time.Duration(i) * time.Millisecond) // 66 s: within the window
			if l.allow(now, keysFrom(fmt.Sprintf("%s:%x::1", site, i))...) {
				allowed++
			}
		}
	}
	if want := 2 * siteScale * loginBurst; allowed != want {
		t.Errorf("the two sites signed in %d times in one window, want %d (%d clients' allowance each)", allowed, want, siteScale)
	}
	if n, max := len(l.windows), 2*(1+siteScale*loginBurst); n > max {
		t.Errorf("the sites' flood left %d keys, at most %d expected", n, max)
	}
	now := t0.Add(2 * time.Minute)
	for _, addr := range []string{"198.51.100.7", "2001:db8:8::1", "2001:db8:7:ffff::1"} {
		ok := l.allow(now, keysFrom(addr)...)
		if inSite := strings.HasPrefix(addr, "2001:db8:7:"); ok == inSite {
			t.Errorf("sign-in from %s allowed=%v: the flooding site is refused, everyone else allowed", addr, ok)
		}
	}
}

// clientKeys: IPv4 one key, IPv6 its /48 then its /64, v4-mapped as IPv4.
func TestClientKeys(t *testing.T) {
	for addr, want := range map[string][]rateKey{
		"198.51.100.7":         {{key: "ip:198.51.100.7", scale: 1}},
		"::ffff:198.51.100.7":  {{key: "ip:198.51.100.7", scale: 1}},
		"2001:db8:1:2:3:4:5:6": {{key: "site:2001:db8:1::/48", scale: siteScale}, {key: "net:2001:db8:1:2::/64", scale: 1}},
	} {
		if got := keysFrom(addr); !slices.Equal(got, want) {
			t.Errorf("%s: keys %v, want %v", addr, got, want)
		}
	}
}
