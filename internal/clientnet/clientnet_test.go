package clientnet

import (
	"net/netip"
	"slices"
	"testing"
)

// IPv4 one source, IPv6 its /48 then its /64, v4-mapped as IPv4.
func TestOfCountsAnIPv6AddressAgainstItsSiteThenItsSubnet(t *testing.T) {
	for addr, want := range map[string][]Source{
		"198.51.100.7":         {{Key: "ip:198.51.100.7", Scale: 1}},
		"::ffff:198.51.100.7":  {{Key: "ip:198.51.100.7", Scale: 1}},
		"2001:db8:1:2:3:4:5:6": {{Key: "site:2001:db8:1::/48", Scale: SiteScale}, {Key: "net:2001:db8:1:2::/64", Scale: 1}},
		"fe80::1%eth0":         {{Key: "site:fe80::/48", Scale: SiteScale}, {Key: "net:fe80::/64", Scale: 1}},
	} {
		if got := Of(netip.MustParseAddr(addr)); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", addr, got, want)
		}
	}
}
