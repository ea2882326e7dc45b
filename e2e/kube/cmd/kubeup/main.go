// Command kubeup starts the local Kubernetes control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler and kwok) in a
// directory, prints the admin kubeconfig's path on stdout once the cluster is
// ready, and runs until SIGINT or SIGTERM, then stops it cleanly.
//
//	go run ./e2e/kube/cmd/kubeup -dir .dev/kube
//	export KUBECONFIG=.dev/kube/kubeconfig
//
// Progress and the first, cold build's output (minutes) go to stderr. The
// cluster's state is fresh on every start; <dir>/ready exists while it is up,
// and <dir>/logs holds each process's log. The processes die with kubeup,
// even if it is killed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"streamspace.dev/e2e/kube"
)

func main() {
	dir := flag.String("dir", filepath.Join(os.TempDir(), "streamspace-kube"), "state directory (PKI, etcd data, logs, kubeconfig)")
	timeout := flag.Duration("timeout", 15*time.Minute, "limit for the build and the startup")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("kubeup: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ready := filepath.Join(*dir, "ready")
	_ = os.Remove(ready) // stale, from a kubeup that was killed
	startCtx, cancel := context.WithTimeout(ctx, *timeout)
	c, err := kube.Start(startCtx, kube.Options{Dir: *dir, Logf: log.Printf})
	cancel()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(ready, []byte(c.Server()+"\n"), 0o644); err != nil {
		_ = c.Stop()
		log.Fatal(err)
	}
	log.Printf("up: %s; logs in %s; Ctrl-C to stop", c.Server(), filepath.Join(c.Dir(), "logs"))
	fmt.Println(c.Kubeconfig())

	<-ctx.Done()
	log.Print("stopping")
	_ = os.Remove(ready)
	if err := c.Stop(); err != nil {
		log.Fatal(err)
	}
}
