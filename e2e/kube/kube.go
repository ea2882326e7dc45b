// Package kube runs a real, local Kubernetes control plane for tests and
// `task dev`: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
// kwok (which fakes a Node and the status of its Pods and volumes), all on
// 127.0.0.1, without kubelet or containers.
//
// The binaries are built from the Go module proxy by build.sh (next to this
// file) into a cache outside the repository, ${STREAMSPACE_KUBE_CACHE:-
// $HOME/.cache/streamspace/kube/v1.37.2}. The first, cold build takes minutes;
// later starts take seconds. The package itself imports no Kubernetes code: it
// runs processes and speaks plain HTTPS+JSON to the apiserver.
//
//	c := kube.ForTest(t, kube.Options{})
//	cfg, _ := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
//
// With Options.NetNS the whole control plane runs inside a network namespace,
// as a customer's cluster sits inside their site (e2e/site does this).
//
// See ../../../shared/STACK.md for the recipe and its pitfalls.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"streamspace.dev/e2e/netns"
)

// Version is the Kubernetes version of the control plane.
const Version = "v1.37.2"

// NodeName is the name of the single fake Node that kwok manages.
const NodeName = "kwok-node-0"

// PodCIDR is the range kwok gives Pod IPs from. Nothing routes it; a test that
// needs a Pod's IP to answer makes the range local in its namespace (`ip route
// add local <PodCIDR> dev lo`) and listens on the Pod's port.
const PodCIDR = "10.244.0.0/16"

// StorageClassName is the name of the default StorageClass, whose volumes
// kwok provisions and binds.
const StorageClassName = "kwok-volume"

// Options configures Start. The zero value is usable.
type Options struct {
	// Dir is the state directory (PKI, etcd data, logs, kubeconfig). Each
	// process gets its own subdirectory. Empty means a new temporary directory
	// that Stop removes.
	Dir string

	// BinDir holds prebuilt binaries (etcd, kube-apiserver,
	// kube-controller-manager, kube-scheduler, kwok) and kwok-stages.yaml. When
	// set, build.sh is not run. Defaults to $STREAMSPACE_KUBE_BIN, else the
	// output of build.sh.
	BinDir string

	// CacheDir is passed to build.sh as STREAMSPACE_KUBE_CACHE. Empty keeps
	// build.sh's default.
	CacheDir string

	// BuildScript is the path of build.sh. Defaults to $STREAMSPACE_KUBE_BUILD,
	// else the build.sh next to this package's source, else e2e/kube/build.sh
	// found by walking up from the working directory.
	BuildScript string

	// BuildOutput receives build.sh's progress output. Defaults to os.Stderr,
	// so a cold build of several minutes is visible while it runs.
	BuildOutput io.Writer

	// NodeAllocatable is the fake Node's capacity and allocatable. Defaults to
	// cpu=256, memory=1Ti, pods=1000: room for hundreds of small sessions.
	NodeAllocatable map[string]string

	// ExtraArgs adds flags to a process, by name ("etcd", "kube-apiserver",
	// "kube-controller-manager", "kube-scheduler", "kwok"). They come after the
	// defaults, so a flag given again here wins.
	ExtraArgs map[string][]string

	// NetNS, when set, names a network namespace (under /var/run/netns) in which
	// every process runs: the whole control plane then listens on that
	// namespace's 127.0.0.1, as a customer's cluster would sit inside their
	// site. The Cluster's own client (Do, HTTPClient) opens its connections
	// inside the namespace; the kubeconfig works for processes started in it.
	NetNS string

	// Logf, when set, receives one line per startup step with its timing.
	Logf func(format string, args ...any)
}

// Cluster is a running local control plane. It is safe for concurrent use.
type Cluster struct {
	dir        string
	removeDir  bool
	bin        string
	stages     string
	kubeconfig string
	pki        *pki
	client     *http.Client
	logf       func(string, ...any)
	netns      string
	extra      map[string][]string

	etcdURL string // http://127.0.0.1:port
	apiPort int

	spawn    *spawner
	mu       sync.Mutex // guards procs
	procs    map[string]*proc
	stopOnce sync.Once
	stopErr  error
}

// ForTest starts a cluster for t, in a directory under t.TempDir(), and stops
// it when the test ends. It fails t if the cluster cannot start. On failure
// the tail of each process log is written to the test log.
func ForTest(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("kube: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"} {
				t.Logf("--- %s (%s), last lines:\n%s", name, c.LogPath(name), tail(c.LogPath(name), 3000))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("kube: stop: %v", err)
		}
	})
	return c
}

// Start builds the binaries if needed and starts a cluster. ctx bounds the
// build and the startup only; the cluster runs until Stop. Children die with
// the calling process even if Stop is never called (PR_SET_PDEATHSIG), and
// each runs in its own process group, which Stop kills.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	t0 := time.Now()
	logf := opts.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	bin, err := ensureBinaries(ctx, opts)
	if err != nil {
		return nil, err
	}
	logf("kube: binaries ready in %v (%s)", time.Since(t0).Round(time.Millisecond), bin)

	dir, removeDir := opts.Dir, false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "streamspace-kube-"); err != nil {
			return nil, err
		}
		removeDir = true
	} else if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}

	// A port picked free may be taken by someone else before the process
	// binds it; retry the whole startup with new ports in that case.
	for attempt := 1; ; attempt++ {
		c := &Cluster{
			dir: dir, removeDir: removeDir, bin: bin,
			stages: filepath.Join(bin, "kwok-stages.yaml"),
			logf:   logf, netns: opts.NetNS, extra: opts.ExtraArgs, procs: map[string]*proc{},
		}
		if c.spawn, err = newSpawner(opts.NetNS); err != nil {
			if removeDir {
				_ = os.RemoveAll(dir)
			}
			return nil, err
		}
		err := c.start(ctx, opts, t0)
		if err == nil {
			return c, nil
		}
		c.removeDir = false
		_ = c.Stop()
		if attempt < 3 && errors.Is(err, errPortInUse) && ctx.Err() == nil {
			logf("kube: %v; retrying with new ports", err)
			continue
		}
		if removeDir {
			_ = os.RemoveAll(dir)
		}
		return nil, err
	}
}

var errPortInUse = errors.New("port already in use")

func (c *Cluster) start(ctx context.Context, opts Options, t0 time.Time) error {
	var err error
	step := time.Now()
	if c.pki, err = genPKI(filepath.Join(c.dir, "pki")); err != nil {
		return fmt.Errorf("kube: pki: %w", err)
	}
	c.client = c.newHTTPClient()
	c.logf("kube: pki in %v", time.Since(step).Round(time.Millisecond))

	ports, err := c.freePorts(3)
	if err != nil {
		return err
	}
	etcdPort, peerPort := ports[0], ports[1]
	c.apiPort = ports[2]
	c.etcdURL = "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	c.kubeconfig = filepath.Join(c.dir, "kubeconfig")
	if err := os.WriteFile(c.kubeconfig, c.kubeconfigYAML(), 0o600); err != nil {
		return err
	}

	// etcd. Its data dir is fresh on every attempt.
	step = time.Now()
	etcdDir := filepath.Join(c.dir, "etcd")
	_ = os.RemoveAll(filepath.Join(etcdDir, "data"))
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	if err := c.run("etcd", []string{
		"--name=default",
		"--data-dir=" + filepath.Join(etcdDir, "data"),
		"--listen-client-urls=" + c.etcdURL,
		"--advertise-client-urls=" + c.etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=default=" + peerURL,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync",
		"--log-level=warn",
	}, nil); err != nil {
		return err
	}
	if err := c.waitHTTP(ctx, "etcd", c.etcdURL+"/health", c.plainClient(), 30*time.Second); err != nil {
		return err
	}
	c.logf("kube: etcd ready in %v", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := c.StartAPIServer(ctx); err != nil {
		return err
	}
	c.logf("kube: kube-apiserver ready in %v", time.Since(step).Round(time.Millisecond))

	// The controllers start in parallel with the Node and StorageClass.
	step = time.Now()
	kc := "--kubeconfig=" + c.kubeconfig
	if err := c.run("kube-controller-manager", []string{
		kc,
		"--leader-elect=false",
		"--secure-port=0",
		"--service-account-private-key-file=" + c.pki.saKey,
		"--root-ca-file=" + c.pki.caCert,
		"--use-service-account-credentials=false",
		"--cluster-signing-cert-file=" + c.pki.caCert,
		"--cluster-signing-key-file=" + c.pki.caKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		// The client-side defaults (20 QPS, 30 burst) make a burst of sessions
		// measure the controller-manager's rate limiter: each session costs it
		// about eight writes. This cluster is a test rig, not a shared apiserver.
		"--kube-api-qps=1000", "--kube-api-burst=2000",
		"--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20",
		"--concurrent-service-endpoint-syncs=20",
		// kwok renews its Node's Lease late under a load of hundreds of pods (or a
		// busy CI machine); the node lifecycle controller would then mark every pod
		// NotReady, and kwok never readies a Running pod again. A long grace period
		// keeps that artefact out of tests.
		"--node-monitor-grace-period=10m",
		"--v=1",
	}, nil); err != nil {
		return err
	}
	if err := c.run("kube-scheduler", []string{
		kc, "--leader-elect=false", "--secure-port=0",
		"--kube-api-qps=1000", "--kube-api-burst=2000", "--v=1",
	}, nil); err != nil {
		return err
	}
	if err := c.run("kwok", []string{
		kc,
		"--config=" + c.stages,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
		"--cidr=" + PodCIDR,
		"--node-ip=127.0.0.1",
	}, []string{"KWOK_WORKDIR=" + filepath.Join(c.dir, "kwok")}); err != nil {
		return err
	}

	if err := c.createNode(ctx, opts.NodeAllocatable); err != nil {
		return err
	}
	if err := c.createStorageClass(ctx); err != nil {
		return err
	}
	if err := c.waitNodeReady(ctx, 60*time.Second); err != nil {
		return err
	}
	c.logf("kube: node %s Ready in %v; cluster up in %v (kubeconfig %s)",
		NodeName, time.Since(step).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), c.kubeconfig)
	return nil
}

// run starts a named process, with its ExtraArgs after args, and records it.
func (c *Cluster) run(name string, args, env []string) error {
	args = append(args[:len(args):len(args)], c.extra[name]...)
	p, err := c.startProc(name, filepath.Join(c.bin, name), args, env)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.procs[name] = p
	c.mu.Unlock()
	return nil
}

func (c *Cluster) proc(name string) *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[name]
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) on the
// same port and waits until /readyz is OK.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	if p := c.proc("kube-apiserver"); p != nil && !p.exited() {
		return errors.New("kube: kube-apiserver is already running")
	}
	if err := c.run("kube-apiserver", []string{
		"--etcd-servers=" + c.etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--secure-port=" + strconv.Itoa(c.apiPort),
		"--cert-dir=" + filepath.Join(c.dir, "kube-apiserver"),
		"--tls-cert-file=" + c.pki.serverCert,
		"--tls-private-key-file=" + c.pki.serverKey,
		"--client-ca-file=" + c.pki.caCert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + c.pki.saPub,
		"--service-account-signing-key-file=" + c.pki.saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--authorization-mode=Node,RBAC",
		"--shutdown-watch-termination-grace-period=2s",
		"--v=1",
	}, nil); err != nil {
		return err
	}
	return c.waitHTTP(ctx, "kube-apiserver", c.Server()+"/readyz", c.client, 90*time.Second)
}

// StopAPIServer stops kube-apiserver gracefully, leaving every other process
// running. Clients see connection errors until StartAPIServer.
func (c *Cluster) StopAPIServer() {
	c.proc("kube-apiserver").stop(20 * time.Second)
}

// RestartAPIServer stops kube-apiserver and starts it again on the same port
// and with the same data, then waits until it is ready. Watches break and
// informers must re-list and re-watch.
func (c *Cluster) RestartAPIServer(ctx context.Context) error {
	t0 := time.Now()
	c.StopAPIServer()
	c.logf("kube: kube-apiserver stopped in %v", time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	if err := c.StartAPIServer(ctx); err != nil {
		return err
	}
	c.logf("kube: kube-apiserver ready again in %v", time.Since(t0).Round(time.Millisecond))
	return nil
}

// Stop stops every process, etcd last (the apiserver hangs on shutdown
// without it), and removes the state directory if Start created it. It is
// idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		var wg sync.WaitGroup
		for _, n := range []string{"kwok", "kube-scheduler", "kube-controller-manager"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.proc(n).stop(10 * time.Second)
			}()
		}
		wg.Wait()
		c.proc("kube-apiserver").stop(20 * time.Second)
		c.proc("etcd").stop(10 * time.Second)
		c.spawn.close()
		if c.removeDir {
			c.stopErr = os.RemoveAll(c.dir)
		}
	})
	return c.stopErr
}

// Kubeconfig returns the path of a kubeconfig for the admin user
// (O=system:masters), for client-go's clientcmd or kubectl.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// Dir returns the state directory.
func (c *Cluster) Dir() string { return c.dir }

// NetNS returns the network namespace the processes run in ("" for the caller's).
func (c *Cluster) NetNS() string { return c.netns }

// Server returns the apiserver's URL, https://127.0.0.1:<port> (inside NetNS when set).
func (c *Cluster) Server() string { return "https://127.0.0.1:" + strconv.Itoa(c.apiPort) }

// LogPath returns the log file of a process: "etcd", "kube-apiserver",
// "kube-controller-manager", "kube-scheduler" or "kwok".
func (c *Cluster) LogPath(name string) string { return filepath.Join(c.dir, "logs", name+".log") }

// CAFile returns the PEM file of the cluster CA.
func (c *Cluster) CAFile() string { return c.pki.caCert }

// AdminCertFile returns the PEM file of the admin client certificate.
func (c *Cluster) AdminCertFile() string { return c.pki.adminCert }

// AdminKeyFile returns the PEM file of the admin client key.
func (c *Cluster) AdminKeyFile() string { return c.pki.adminKey }

// HTTPClient returns an HTTP client that trusts the cluster CA and presents
// the admin client certificate.
func (c *Cluster) HTTPClient() *http.Client { return c.client }

// waitHTTP polls url until it answers 200, the process exits, or the timeout.
func (c *Cluster) waitHTTP(ctx context.Context, name, url string, hc *http.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := c.proc(name)
	var last string
	for {
		if p.exited() {
			return c.procErr(p)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, b)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube: %s not ready at %s: %v (last: %s); log %s:\n%s",
				name, url, ctx.Err(), last, p.logPath, tail(p.logPath, 2000))
		case <-p.done:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// procErr describes a process that exited during startup.
func (c *Cluster) procErr(p *proc) error {
	lg := tail(p.logPath, 3000)
	err := fmt.Errorf("kube: %s exited during startup (%v); log %s:\n%s", p.name, p.err, p.logPath, lg)
	if strings.Contains(lg, "address already in use") {
		return fmt.Errorf("%w: %w", errPortInUse, err)
	}
	return err
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 of the cluster's
// namespace.
func (c *Cluster) freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := netns.Listen(c.netns, "tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ensureBinaries returns the directory holding the five binaries and the
// kwok Stage config, running build.sh if needed.
func ensureBinaries(ctx context.Context, opts Options) (string, error) {
	dir := opts.BinDir
	if dir == "" {
		dir = os.Getenv("STREAMSPACE_KUBE_BIN")
	}
	if dir != "" {
		return dir, checkBinaries(dir)
	}
	script, err := findBuildScript(opts.BuildScript)
	if err != nil {
		return "", err
	}
	out := opts.BuildOutput
	if out == nil {
		out = os.Stderr
	}
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Env = os.Environ()
	if opts.CacheDir != "" {
		cmd.Env = append(cmd.Env, "STREAMSPACE_KUBE_CACHE="+opts.CacheDir)
	}
	cmd.Stderr = out
	stdout, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kube: cannot build the local Kubernetes control plane with %s: %w "+
			"(its output is above; it needs Go and the Go module proxy, about 5 minutes and 3 GB of RAM cold; "+
			"run it by hand to see the problem, or point STREAMSPACE_KUBE_BIN at prebuilt binaries)", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(stdout)), "\n")
	cache := strings.TrimSpace(lines[len(lines)-1])
	if cache == "" {
		return "", fmt.Errorf("kube: %s printed no cache directory", script)
	}
	dir = filepath.Join(cache, "bin")
	return dir, checkBinaries(dir)
}

func checkBinaries(dir string) error {
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"} {
		if st, err := os.Stat(filepath.Join(dir, b)); err != nil || st.Mode()&0o111 == 0 {
			return fmt.Errorf("kube: binary %s missing in %s; run e2e/kube/build.sh", b, dir)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "kwok-stages.yaml")); err != nil {
		return fmt.Errorf("kube: kwok-stages.yaml missing in %s; run e2e/kube/build.sh", dir)
	}
	return nil
}

// findBuildScript locates build.sh.
func findBuildScript(explicit string) (string, error) {
	cands := []string{explicit, os.Getenv("STREAMSPACE_KUBE_BUILD")}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		cands = append(cands, filepath.Join(filepath.Dir(file), "build.sh"))
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			cands = append(cands, filepath.Join(d, "e2e", "kube", "build.sh"), filepath.Join(d, "kube", "build.sh"))
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
			return c, nil
		}
	}
	return "", errors.New("kube: cannot find e2e/kube/build.sh; set Options.BuildScript or STREAMSPACE_KUBE_BUILD, " +
		"or STREAMSPACE_KUBE_BIN to prebuilt binaries")
}
