// Package e2e holds StreamSpace's whole-system tests: real binaries, real PostgreSQL, and
// (as the features land) a real kube-apiserver, real QUIC and a real browser.
//
// The tests build the binaries they run with `go build`, so they exercise exactly what a
// user runs.
package e2e
