// Package site is StreamSpace's end-to-end test (issue 7, §6): the whole product, from
// a tenant's sign-up to a session's Deployment in a customer's Kubernetes cluster, with
// nothing faked but the containers.
//
// The test builds the real binaries and runs them in two network namespaces joined by a
// veth pair, 10.77.0.0/30 (e2e/netns):
//
//	sssite-cp-<pid>    10.77.0.1  the control plane: `streamspace dev` (every service in
//	                              one process) with its private PostgreSQL
//	sssite-site-<pid>  10.77.0.2  the customer's site, behind an input policy of drop
//	                              that admits only loopback and established traffic:
//	                              the local Kubernetes control plane (etcd,
//	                              kube-apiserver, controller-manager, scheduler, kwok;
//	                              e2e/kube) and streamspace-agent with its Kubernetes
//	                              backend
//
// The agent reaches the control plane only outbound; the test proves that nothing can
// open a connection into the site, before and while the tunnel is up.
//
// kwok runs no containers: it marks Pods Ready and gives them fake IPs from
// kube.PodCIDR. The agent only calls a session Running once a TCP dial to the Pod's IP
// and stream port answers, so inside the site that whole range is made local (`ip route
// add local 10.244.0.0/16 dev lo`) and a small listener on the template's stream port
// answers for every Pod. The agent's own resolver and dialer are used unchanged.
//
// The test process stays in the root namespace and reaches the API and the
// kube-apiserver through sockets made inside the right namespace (netns.Dialer).
//
// TestCustomerSite walks the steps in order: sign-up, enrollment with a token
// from the API, a session from a catalog template seen Running through the API and the
// live stream (SSE), hibernate, wake, stop, delete, and repair of a Deployment deleted
// behind a killed agent's back. BenchmarkCreateToRunning measures create → Running
// through the same stack.
//
// Everything needs root, `ip`, `nft`, PostgreSQL's binaries and the cached Kubernetes
// binaries (e2e/kube/build.sh builds them; cold, about 5 minutes). Missing any, the test
// fails with the command that fixes it.
package site
