package main

// `streamspace dev` runs, besides the control plane, what a newcomer needs to see a
// session go Running with one command:
//
//   - a local Kubernetes cluster (etcd, kube-apiserver, controller-manager, scheduler and
//     kwok, from e2e/kube), in-process as a library: it imports no Kubernetes code, its
//     children die with this process, and its cold build (minutes, once per machine) is
//     streamed to the terminal. Fresh state on every start.
//   - a demo tenant and owner, created through the public API on first start with a
//     random password kept in <data-dir>/demo.json (mode 0600, never committed), and
//     signed in with on every later start, so the credentials stay the same.
//   - the real agent binary as a child process, enrolled with a token created through
//     the API, Kubernetes backend against the local cluster. A child rather than
//     in-process: the agent module pulls in client-go, which the control plane binary
//     must not carry (DESIGN.md §1), and a separate process is how customers run it.
//     It is restarted with backoff when it dies, except on a permanent failure.
//   - a stub stream endpoint: kwok's pods have no network, so the agent runs with
//     -dev-endpoint pointing every session at this local listener. It answers with a
//     VNC (RFB) greeting and nothing more; it is what lets "Running" (pod Ready and the
//     stream endpoint answers) be true on a laptop, not a desktop to look at.
//
// On SIGINT or SIGTERM the control plane shuts down through libs/run's steps (it gets
// the signal too), and the rest stops in the numbered order of stopDev.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"streamspace.dev/e2e/kube"
	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/streamspace"
)

// devOptions are the settings only `streamspace dev` has.
type devOptions struct {
	dataDir   string
	noCluster bool
	agentBin  string
}

// demoNamespace holds the demo agent's sessions in the local cluster.
const demoNamespace = "streamspace-demo"

// runDev runs the control plane with the local cluster, the demo account and the demo
// agent, until ctx ends (the caller's signal context) or the control plane stops.
func runDev(ctx context.Context, cfg server.Config, set streamspace.Settings, opts server.Options, dev devOptions, stdout, stderr io.Writer) int {
	say := func(format string, args ...any) { fmt.Fprintf(stderr, "streamspace dev: "+format+"\n", args...) }
	dataDir, err := filepath.Abs(dev.dataDir)
	if err != nil {
		say("%v", err)
		return 1
	}

	// The cluster starts while the control plane does: a cold build takes minutes, a warm
	// start seconds, and neither needs the other.
	clusterc := make(chan clusterResult, 1)
	clusterCtx, cancelCluster := context.WithCancel(ctx)
	defer cancelCluster()
	if !dev.noCluster {
		say("starting the local Kubernetes cluster (etcd, kube-apiserver, kwok) in %s", filepath.Join(dataDir, "kube"))
		if !kubeBuilt() {
			say("first start on this machine: building Kubernetes %s from the Go module proxy into %s; this takes about 5 minutes and 3 GB of RAM, once (skip it with --no-cluster)", kube.Version, kubeCache())
		}
		go func() {
			c, err := kube.Start(clusterCtx, kube.Options{Dir: filepath.Join(dataDir, "kube"), BuildOutput: stderr})
			clusterc <- clusterResult{c, err}
		}()
	}

	// The control plane gets its own context so that a failure here (the cluster, the
	// agent) can stop it too; a signal reaches it directly through libs/run.
	planeCtx, stopPlane := context.WithCancel(ctx)
	defer stopPlane()
	addrc := make(chan string, 1)
	var gw atomic.Pointer[gateway.Module]
	userStart := opts.OnStart
	opts.OnStart = func(s server.Started) {
		if userStart != nil {
			userStart(s)
		}
		addrc <- s.Addr
	}
	plane := newExit()
	go func() {
		plane.finish(server.Run(planeCtx, cfg, opts, func(d server.Deps) ([]server.Module, error) {
			mods, err := streamspace.ModulesWith(d, set)
			for _, m := range mods {
				if g, ok := m.(*gateway.Module); ok {
					gw.Store(g)
				}
			}
			return mods, err
		}))
	}()

	st := &devStack{say: say, stderr: stderr, dataDir: dataDir, plane: plane, stopPlane: stopPlane}
	if !dev.noCluster {
		st.clusterc, st.cancelCluster = clusterc, cancelCluster
	}
	defer st.stop()
	if code, ok := st.start(ctx, dev, dataDir, addrc, &gw, clusterc); !ok {
		return code
	}
	st.printBanner(stdout)

	select {
	case <-ctx.Done():
		say("stopping (a second Ctrl-C stops at once)")
	case <-plane.done:
		say("the control plane stopped: %v", plane.err)
	}
	return st.stop()
}

// clusterResult is what starting the local cluster gave.
type clusterResult struct {
	c   *kube.Cluster
	err error
}

// devStack is everything runDev started, for the banner and the ordered stop.
type devStack struct {
	say       func(string, ...any)
	stderr    io.Writer
	plane     *exit
	stopPlane context.CancelFunc

	dataDir string
	base    string // http://host:port of the control plane
	// clusterc delivers the cluster while it starts; stop takes it from there if start
	// did not, after cancelling a start still under way.
	clusterc      <-chan clusterResult
	cancelCluster context.CancelFunc
	demo          demoAccount
	cluster       *kube.Cluster
	stub          net.Listener
	agent         *agentProc
	agentOK       agentSummary

	stopped bool
	code    int
}

// start brings everything up in order. It returns ok=false with an exit code when
// something could not start (ctx ending counts: the user pressed Ctrl-C).
func (st *devStack) start(ctx context.Context, dev devOptions, dataDir string, addrc <-chan string,
	gw *atomic.Pointer[gateway.Module], clusterc <-chan clusterResult) (int, bool) {
	fail := func(format string, args ...any) (int, bool) {
		if ctx.Err() != nil {
			return st.stop(), false
		}
		st.say(format, args...)
		st.stop()
		return 1, false
	}

	// 1. The control plane.
	var addr string
	select {
	case addr = <-addrc:
	case <-st.plane.done:
		return fail("the control plane did not start: %v", st.plane.err)
	case <-ctx.Done():
		return fail("")
	}
	st.base = "http://" + addr
	if err := waitHTTP(ctx, st.base+"/readyz", 2*time.Minute, st.plane); err != nil {
		return fail("the control plane never became ready: %v", err)
	}
	api := &apiClient{base: st.base}

	// 2. The demo tenant and its owner.
	demo, err := ensureDemo(ctx, api, dataDir)
	if err != nil {
		return fail("demo account: %v", err)
	}
	st.demo = demo

	// 3. The cluster, or the agent's simulated backend without one.
	agentArgs := []string{"-backend", "memory"}
	if !dev.noCluster {
		var r clusterResult
		select {
		case r = <-clusterc:
			st.clusterc = nil
		case <-ctx.Done():
			return fail("")
		}
		if r.err != nil {
			return fail("the local Kubernetes cluster did not start: %v\n"+
				"  Its build needs Go, bash and the Go module proxy (e2e/kube/build.sh; logs under %s).\n"+
				"  Without a cluster, run `task dev -- --no-cluster`: the demo agent then simulates sessions in memory.",
				r.err, filepath.Join(dataDir, "kube", "logs"))
		}
		st.cluster = r.c
		if err := createNamespace(ctx, r.c, demoNamespace); err != nil {
			return fail("creating namespace %s in the local cluster: %v", demoNamespace, err)
		}
		if st.stub, err = startStreamStub(); err != nil {
			return fail("stream stub: %v", err)
		}
		agentArgs = []string{"-backend", "kubernetes", "-namespace", demoNamespace,
			"-kubeconfig", r.c.Kubeconfig(), "-dev-endpoint", st.stub.Addr().String()}
	}

	// 4. The demo agent: built from this checkout unless given, enrolled on first start.
	bin, err := agentBinary(ctx, dev.agentBin, dataDir, st.say)
	if err != nil {
		return fail("%v", err)
	}
	g := gw.Load()
	if g == nil {
		return fail("the control plane has no agent gateway")
	}
	healthAddr, err := freeAddr()
	if err != nil {
		return fail("%v", err)
	}
	stateDir := filepath.Join(dataDir, "agent")
	args := append([]string{
		"-gateway", g.Gateway().Addr(), "-server-name", "localhost",
		"-enroll-url", st.base + gateway.EnrollPath, "-state-dir", stateDir,
		"-name", demoAgentName, "-health-listen", healthAddr,
	}, agentArgs...)
	if !enrolled(stateDir) {
		tokenFile, err := createEnrollmentToken(ctx, api, demo, stateDir)
		if err != nil {
			return fail("enrollment token: %v", err)
		}
		args = append(args, "-token-file", tokenFile)
	}
	st.agent = superviseAgent(bin, args, st.stderr, st.say)

	// 5. Wait until the agent is ready (tunnel up, backend synced) and the control plane
	// lists it online.
	st.say("waiting for the demo agent %q to connect", demoAgentName)
	if err := waitHTTP(ctx, "http://"+healthAddr+"/readyz", 3*time.Minute, st.agent.gaveUp); err != nil {
		return fail("the demo agent never became ready: %v (its log is above; to enroll it again, remove %s)", err, stateDir)
	}
	if st.agentOK, err = waitAgentOnline(ctx, api, demo); err != nil {
		return fail("the demo agent: %v", err)
	}
	return 0, true
}

// stop stops what start started, in order, once; it returns the exit code.
func (st *devStack) stop() int {
	if st.stopped {
		return st.code
	}
	st.stopped = true
	// 1. The agent first, while the gateway and the cluster still answer: it drains its
	// in-flight applies and says Goodbye.
	if st.agent != nil {
		st.say("shutdown step 1: stopping the demo agent")
		st.agent.stop(20 * time.Second)
	}
	// 2. The control plane (its own numbered steps are in its log). A signal has already
	// started its shutdown; otherwise this asks for it.
	st.stopPlane()
	st.say("shutdown step 2: waiting for the control plane to drain")
	<-st.plane.done
	// 3. The stub stream endpoint.
	if st.stub != nil {
		st.say("shutdown step 3: closing the stub stream endpoint")
		_ = st.stub.Close()
	}
	// 4. The local cluster, last: the agent used it until step 1 ended. One still
	// starting is cancelled and waited for, so no child outlives us.
	if st.clusterc != nil {
		st.cancelCluster()
		st.cluster = (<-st.clusterc).c
	}
	if st.cluster != nil {
		st.say("shutdown step 4: stopping the local Kubernetes cluster")
		if err := st.cluster.Stop(); err != nil {
			st.say("stopping the local cluster: %v", err)
			st.code = 1
		}
	}
	if st.plane.err != nil {
		st.say("%v", st.plane.err)
		st.code = 1
	}
	st.say("stopped; the private PostgreSQL keeps running for the next start (`task clean` stops it and removes all local state)")
	return st.code
}

// exit is the end of something running in the background: err is set before done
// closes.
type exit struct {
	done chan struct{}
	err  error
}

func newExit() *exit { return &exit{done: make(chan struct{})} }

func (e *exit) finish(err error) {
	e.err = err
	close(e.done)
}

// waitHTTP polls url until it answers 200, ctx ends, timeout passes or gone finishes.
func waitHTTP(ctx context.Context, url string, timeout time.Duration, gone *exit) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	client := &http.Client{Timeout: 2 * time.Second}
	last := "no answer"
	for {
		resp, err := client.Get(url)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("%s: still %s after %v", url, last, timeout)
		case <-gone.done:
			return fmt.Errorf("it stopped (%v) while %s answered %s", gone.err, url, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// kubeCache is where e2e/kube/build.sh keeps the binaries (its default or
// STREAMSPACE_KUBE_CACHE).
func kubeCache() string {
	if d := os.Getenv("STREAMSPACE_KUBE_CACHE"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "streamspace", "kube", kube.Version)
}

// kubeBuilt reports whether a build has completed, only to warn before a cold one;
// build.sh itself decides whether the cache is up to date.
func kubeBuilt() bool {
	if d := os.Getenv("STREAMSPACE_KUBE_BIN"); d != "" {
		return true
	}
	_, err := os.Stat(filepath.Join(kubeCache(), "stamp"))
	return err == nil
}

// createNamespace creates ns in c; the cluster's state is fresh on every start.
func createNamespace(ctx context.Context, c *kube.Cluster, ns string) error {
	obj := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}
	err := c.Do(ctx, http.MethodPost, "/api/v1/namespaces", obj, nil)
	var apiErr *kube.APIError
	if errors.As(err, &apiErr) && apiErr.StatusCode == http.StatusConflict {
		return nil
	}
	return err
}

// startStreamStub listens on a loopback port and greets every connection as a VNC
// server would (RFB 3.8), then holds it until the peer closes. It is the "stream
// endpoint" of every demo session: see the file comment.
func startStreamStub() (net.Listener, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				if _, err := io.WriteString(conn, "RFB 003.008\n"); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, conn)
			}()
		}
	}()
	return ln, nil
}
