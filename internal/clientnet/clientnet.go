// Package clientnet says what a client's address counts against in
// keyport's rate limits and connection caps, the same for the web server
// and the card-link admin server: an IPv4 address is one source; an IPv6
// address counts against its /48 (a site: RFC 6177), which has SiteScale
// single sources' allowance, and then against its /64 (one host, or one
// subscriber, usually holds a whole /64). Without the /48 a site holding
// 65,536 /64s would have as many allowances, and could fill a limiter's
// table with counts still running, which refuses every new client.
package clientnet

import "net/netip"

// SiteScale is how many single sources' allowances an IPv6 /48 has: a
// site's hosts share it.
const SiteScale = 16

// Source is one count a client's attempt adds to.
type Source struct {
	// Key names it: "ip:" and the address, "site:" and the /48, or "net:"
	// and the /64.
	Key string
	// Scale is how many single sources' allowances it has: 1, or
	// SiteScale for a site.
	Scale int
}

// Of returns the sources address a counts against, widest first; an
// IPv4-mapped IPv6 address counts as its IPv4 address.
func Of(a netip.Addr) []Source {
	a = a.Unmap()
	if a.Is6() {
		site, _ := a.Prefix(48)
		host, _ := a.Prefix(64)
		return []Source{{Key: "site:" + site.String(), Scale: SiteScale}, {Key: "net:" + host.String(), Scale: 1}}
	}
	return []Source{{Key: "ip:" + a.String(), Scale: 1}}
}
