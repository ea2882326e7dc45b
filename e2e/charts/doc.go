// Package charts tests the Helm charts in infra/charts against a real kube-apiserver
// (package e2e/kube): they lint, render, pass server-side apply (dry run, then for real),
// and their Deployments' pods are created by the controllers under the "restricted" Pod
// Security Standard.
//
// The helm binary is built from the Go module proxy by infra/dev/build-helm.sh into a cache
// outside the repository (the first build takes minutes, later runs reuse it); the module
// imports no Helm code.
package charts
