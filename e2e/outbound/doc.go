// Package outbound proves that the agent tunnel is outbound-only (issue 5, §4).
//
// The test builds the real binaries (`streamspace` and `streamspace-agent`) and runs them
// in two network namespaces joined by a veth pair, 10.77.0.0/30:
//
//	ssob-cp-<pid>   10.77.0.1  the control plane: `streamspace dev`, with its private
//	                           PostgreSQL on the namespace's own 127.0.0.1
//	ssob-site-<pid> 10.77.0.2  the customer's site: streamspace-agent, behind an nftables
//	                           input policy of drop that admits only loopback and
//	                           established/related traffic (STACK.md's rule set)
//
// The control plane gets a namespace of its own rather than the root one, so nothing the
// test proves depends on the root namespace's routes or firewall, and the 10.77.0.0/30
// addresses never exist outside the two private namespaces: no traffic leaves the
// machine. PostgreSQL therefore cannot be the machine's server on the root namespace's
// 127.0.0.1; `streamspace dev` starts its own private cluster, which the binary does on a
// laptop anyway, and which then listens on the control plane namespace's loopback.
//
// The test process itself stays in the root namespace. It reaches the admin API (on the
// control plane namespace's 127.0.0.1) and probes the agent's namespace through sockets
// created on a thread that has entered the namespace in question (setns(2)): such a
// socket belongs to that namespace for its whole life, whichever thread uses it later.
//
// Everything needs root. The test fails, never skips, without it or without `ip` and
// `nft`: `bash infra/dev/ensure-netns-tools.sh` installs the tools, and `task test` runs
// it first.
package outbound
