// Package run serves a binary's HTTP listeners and shuts them down in order.
//
// Serve marks the binary ready once every listener is serving. On SIGINT, SIGTERM or
// cancellation of its context it fails readiness, waits for load balancers to notice,
// drains in-flight requests with a deadline, forces what is left closed, and finally runs
// the closers (database pools, tracer flush) in reverse order of acquisition. The steps
// are numbered in the code so that the order is reviewed, not rediscovered.
package run
