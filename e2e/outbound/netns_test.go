package outbound

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nsPrefix starts the name of every namespace this package creates; the stale sweep
// deletes only names with it.
const nsPrefix = "ssob-"

// The veth pair's addresses. They only ever exist inside the two private namespaces, so
// they cannot clash with anything the machine routes.
const (
	gwIP    = "10.77.0.1"
	agentIP = "10.77.0.2"
	gwIf    = "ss-gw"
	agentIf = "ss-ag"
)

// agentFirewall is STACK.md's outbound-only rule set: every new inbound connection, TCP,
// UDP or ICMP, is dropped; loopback and the replies to the site's own outbound flows
// pass. Outbound is left open, as at a typical customer site.
const agentFirewall = `table inet streamspace_site {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
	}
}
`

// requireRootAndTools fails (never skips: CI runs as root and must prove the property)
// when the test cannot build its namespaces, saying how to fix it.
func requireRootAndTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the outbound-only test creates network namespaces and firewall rules and must run as root " +
			"(.ci/run does): run `sudo go test ./e2e/outbound/` or `sudo task test`")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run `bash infra/dev/ensure-netns-tools.sh` as root (`task test` does; it installs iproute2 and nftables with apt-get)", tool)
		}
	}
}

// sh runs a command and fails the test with its output if it fails.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// sweepStale deletes namespaces left by runs of this test that died without cleaning up
// (SIGKILL, a panic in a cleanup): their names end in the pid of a process that no
// longer exists. Namespaces of a run still alive are left alone. A stale namespace may
// still hold that run's processes (its control plane, its PostgreSQL): they are this
// test's own leftovers and are killed, since a namespace with processes outlives
// `ip netns del`.
func sweepStale(t *testing.T) {
	t.Helper()
	out, err := run("ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, nsPrefix) {
			continue
		}
		pid, err := strconv.Atoi(name[strings.LastIndex(name, "-")+1:])
		if err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue
		}
		t.Logf("removing stale namespace %s", name)
		killNamespacePids(name)
		if _, err := run("ip", "netns", "del", name); err != nil {
			t.Logf("stale namespace %s: %v", name, err)
		}
	}
}

// killNamespacePids SIGKILLs every process left in namespace ns.
func killNamespacePids(ns string) {
	out, _ := run("ip", "netns", "pids", ns)
	for _, f := range strings.Fields(out) {
		// Never ourselves: a thread of this process that entered the namespace and
		// could not leave (see inNS) makes `ip netns pids` list this test.
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// site is the two namespaces and the veth pair between them.
type site struct {
	gwNS, agentNS string
}

// newSite creates both namespaces, the veth pair and loopback in each; cleanup kills
// whatever still runs inside them and deletes them.
func newSite(t *testing.T) *site {
	t.Helper()
	s := &site{
		gwNS:    fmt.Sprintf("%sgw-%d", nsPrefix, os.Getpid()),
		agentNS: fmt.Sprintf("%sag-%d", nsPrefix, os.Getpid()),
	}
	for _, ns := range []string{s.gwNS, s.agentNS} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			killNamespacePids(ns)
			if _, err := run("ip", "netns", "del", ns); err != nil {
				t.Errorf("deleting namespace: %v", err)
			}
		})
		// A new namespace's loopback is down; PostgreSQL, the admin API and the
		// firewall's "iif lo" all need it.
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// Created inside the gateway's namespace, so the interface names never meet the root
	// namespace's (where a parallel run could hold the same ones).
	sh(t, "ip", "-n", s.gwNS, "link", "add", gwIf, "type", "veth", "peer", "name", agentIf, "netns", s.agentNS)
	sh(t, "ip", "-n", s.gwNS, "addr", "add", gwIP+"/30", "dev", gwIf)
	sh(t, "ip", "-n", s.agentNS, "addr", "add", agentIP+"/30", "dev", agentIf)
	sh(t, "ip", "-n", s.gwNS, "link", "set", gwIf, "up")
	sh(t, "ip", "-n", s.agentNS, "link", "set", agentIf, "up")
	return s
}

// firewallAgent loads the outbound-only rule set into the agent's namespace.
func (s *site) firewallAgent(t *testing.T) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", s.agentNS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(agentFirewall)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("loading the agent site's firewall: %v: %s", err, out)
	}
	if out := sh(t, "ip", "netns", "exec", s.agentNS, "nft", "list", "ruleset"); !strings.Contains(out, "policy drop") {
		t.Fatalf("the agent site's firewall is not in place:\n%s", out)
	}
}

// setLink takes the agent's side of the veth pair down or up: the site losing and
// regaining its uplink.
func (s *site) setLink(t *testing.T, up bool) {
	t.Helper()
	state := map[bool]string{true: "up", false: "down"}[up]
	sh(t, "ip", "-n", s.agentNS, "link", "set", agentIf, state)
}

// inNS runs f on an OS thread that has entered network namespace ns. Sockets f creates
// belong to ns for good, so callers may use them from any goroutine afterwards.
func inNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread goes back to its own namespace before it is unlocked. If it cannot,
		// it stays locked: a goroutine that exits locked takes its thread with it, so no
		// other goroutine ever runs in the wrong namespace. (On the main thread, which
		// cannot exit, the runtime parks it for good instead.)
		home, err := syscall.Open("/proc/thread-self/ns/net", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening this thread's namespace: %w", err)
			return
		}
		defer syscall.Close(home)
		fd, err := syscall.Open("/var/run/netns/"+ns, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening namespace %s: %w", ns, err)
			return
		}
		defer syscall.Close(fd)
		if err := setns(fd); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err)
			return
		}
		err = f()
		if setns(home) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func setns(fd int) error {
	if _, _, e := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// dialer returns a DialContext that opens its connections from inside ns.
func dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNS(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
