// Package netns builds the network namespaces of the end-to-end tests: a customer's site
// behind an outbound-only firewall and the control plane beside it, joined by a veth pair,
// with no traffic ever leaving the machine.
//
// It also lets the test process itself act inside a namespace without moving: Do runs a
// function on an OS thread that has entered the namespace, and a socket created there
// belongs to that namespace for its whole life, whichever goroutine uses it later. Dialer
// and Listen build on that.
//
// Everything needs root, `ip` and `nft`: RequireRoot fails a test (never skips it) with
// the command that fixes it.
package netns
