// Package clientaddr tells who is calling: the TCP peer of a request, or, when that peer
// is a proxy the operator trusts, the address that proxy says it forwarded for.
//
// Throttles and audit logs key on this address, so trusting X-Forwarded-For from anyone
// would let a caller pick their own key (and dodge a lockout), while ignoring it behind a
// load balancer would put every user behind one address (and lock them all out at once).
// Only a configured list of proxy networks resolves the dilemma.
package clientaddr

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Proxies is the set of networks whose X-Forwarded-For is believed. The zero value
// trusts no one: the TCP peer is the client.
type Proxies []netip.Prefix

// Parse reads a comma-separated list of CIDRs or bare addresses ("10.0.0.0/8,
// 192.168.1.7"). An empty list trusts no one.
func Parse(list string) (Proxies, error) {
	var ps Proxies
	for f := range strings.SplitSeq(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", f, err)
			}
			ps = append(ps, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("trusted proxy %q: %w", f, err)
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			// Addresses are compared unmapped, so a mapped network is kept as IPv4.
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		ps = append(ps, p.Masked())
	}
	return ps, nil
}

// trusted reports whether a is inside one of the networks.
func (ps Proxies) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Of returns the client address of r. It starts from the TCP peer and, while the address
// in hand is a trusted proxy, steps one hop left along X-Forwarded-For (every header
// line, in order): the first address not vouched for by a trusted proxy is the client.
// Entries a trusted proxy appended are believed; anything left of the first untrusted
// hop was written by the client and is ignored. A malformed entry stops the walk at the
// proxy that forwarded it.
func (ps Proxies) Of(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || len(ps) == 0 || !ps.trusted(peer) {
		return host
	}
	var hops []string
	for _, line := range r.Header.Values("X-Forwarded-For") {
		for h := range strings.SplitSeq(line, ",") {
			hops = append(hops, strings.TrimSpace(h))
		}
	}
	client := peer
	for i := len(hops) - 1; i >= 0 && ps.trusted(client); i-- {
		a, err := netip.ParseAddr(hops[i])
		if err != nil {
			break
		}
		client = a.Unmap()
	}
	return client.String()
}
