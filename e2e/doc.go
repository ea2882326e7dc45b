// Package e2e holds StreamSpace's whole-system tests: real binaries, real PostgreSQL, a
// real kube-apiserver, real QUIC and (as the features land) a real browser.
//
// The tests build the binaries they run with `go build`, so they exercise exactly what a
// user runs. The packages below it:
//
//	site      the end-to-end test: sign-up to a session's Deployment in a customer's
//	          cluster behind an outbound-only firewall, and the whole-stack benchmark
//	outbound  the agent tunnel is outbound-only
//	charts    the Helm charts against a real kube-apiserver
//	kube      a local Kubernetes control plane (library and kubeup command)
//	netns     network namespaces, the site's firewall, probes
//	harness   building and running the binaries, the API client
package e2e
