package netns

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

// OutboundOnly is STACK.md's customer-site rule set: every new inbound connection, TCP,
// UDP or ICMP, is dropped; loopback and the replies to the site's own outbound flows
// pass. Outbound is left open, as at a typical customer site.
const OutboundOnly = `table inet streamspace_site {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
	}
}
`

// The veth pair's addresses. They only ever exist inside the two private namespaces of a
// Pair, so they cannot clash with anything the machine routes, nor with another Pair.
const (
	ControlIP = "10.77.0.1"
	SiteIP    = "10.77.0.2"
	controlIf = "ss-cp"
	siteIf    = "ss-site"
)

// RequireRoot fails t (never skips: CI runs as root and must prove what needs it) when
// the test cannot build namespaces, saying how to fix it. what names the test for the
// message.
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("%s creates network namespaces and firewall rules and must run as root "+
			"(.ci/run does): run it with sudo, e.g. `sudo task test`", what)
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run `bash infra/dev/ensure-netns-tools.sh` as root (`task test` does; it installs iproute2 and nftables with apt-get)", tool)
		}
	}
}

// Run runs a command and returns its combined output; the error carries the output.
func Run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func must(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := Run(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// SweepStale deletes namespaces named prefix…-<pid> left by runs that died without
// cleaning up (SIGKILL, a panic in a cleanup): their pid no longer exists. Namespaces of
// a run still alive are left alone. A stale namespace may still hold that run's
// processes: they are the test's own leftovers and are killed, since a namespace with
// processes outlives `ip netns del`.
func SweepStale(t testing.TB, prefix string) {
	t.Helper()
	out, err := Run("ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		pid, err := strconv.Atoi(name[strings.LastIndex(name, "-")+1:])
		if err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue
		}
		t.Logf("removing stale namespace %s", name)
		KillAll(name)
		if _, err := Run("ip", "netns", "del", name); err != nil {
			t.Logf("stale namespace %s: %v", name, err)
		}
	}
}

// KillAll SIGKILLs every process left in namespace ns, except this one.
func KillAll(ns string) {
	out, _ := Run("ip", "netns", "pids", ns)
	for _, f := range strings.Fields(out) {
		// Never ourselves: a thread of this process that entered the namespace and
		// could not leave (see Do) makes `ip netns pids` list this test.
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// Pair is two namespaces joined by a veth pair, 10.77.0.0/30: Control (ControlIP) for the
// control plane and Site (SiteIP) for the customer's site.
type Pair struct {
	Control, Site string
}

// NewPair creates both namespaces, named prefix+"cp-<pid>" and prefix+"site-<pid>", the
// veth pair and loopback in each. Cleanup kills whatever still runs inside them and
// deletes them.
func NewPair(t testing.TB, prefix string) *Pair {
	t.Helper()
	p := &Pair{
		Control: fmt.Sprintf("%scp-%d", prefix, os.Getpid()),
		Site:    fmt.Sprintf("%ssite-%d", prefix, os.Getpid()),
	}
	for _, ns := range []string{p.Control, p.Site} {
		must(t, "ip", "netns", "add", ns)
		t.Cleanup(func() {
			KillAll(ns)
			if _, err := Run("ip", "netns", "del", ns); err != nil {
				t.Errorf("deleting namespace: %v", err)
			}
		})
		// A new namespace's loopback is down; PostgreSQL, the APIs and the firewall's
		// "iif lo" all need it.
		must(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// Created inside the control namespace, so the interface names never meet the root
	// namespace's (where a parallel run could hold the same ones).
	must(t, "ip", "-n", p.Control, "link", "add", controlIf, "type", "veth", "peer", "name", siteIf, "netns", p.Site)
	must(t, "ip", "-n", p.Control, "addr", "add", ControlIP+"/30", "dev", controlIf)
	must(t, "ip", "-n", p.Site, "addr", "add", SiteIP+"/30", "dev", siteIf)
	must(t, "ip", "-n", p.Control, "link", "set", controlIf, "up")
	must(t, "ip", "-n", p.Site, "link", "set", siteIf, "up")
	return p
}

// FirewallSite loads OutboundOnly into the site's namespace and checks it is in place.
func (p *Pair) FirewallSite(t testing.TB) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", p.Site, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(OutboundOnly)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("loading the site's firewall: %v: %s", err, out)
	}
	if out := must(t, "ip", "netns", "exec", p.Site, "nft", "list", "ruleset"); !strings.Contains(out, "policy drop") {
		t.Fatalf("the site's firewall is not in place:\n%s", out)
	}
}

// SetSiteLink takes the site's side of the veth pair down or up: the site losing and
// regaining its uplink.
func (p *Pair) SetSiteLink(t testing.TB, up bool) {
	t.Helper()
	state := map[bool]string{true: "up", false: "down"}[up]
	must(t, "ip", "-n", p.Site, "link", "set", siteIf, state)
}

// Do runs f on an OS thread that has entered network namespace ns (a name under
// /var/run/netns). Sockets f creates belong to ns for good, so callers may use them from
// any goroutine afterwards. An empty ns runs f where the caller is.
func Do(ns string, f func() error) error {
	if ns == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// The thread goes back to its own namespace before it is unlocked. If it cannot,
		// it stays locked: a goroutine that exits locked takes its thread with it, so no
		// other goroutine ever runs in the wrong namespace.
		home, err := syscall.Open("/proc/thread-self/ns/net", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening this thread's namespace: %w", err)
			return
		}
		defer syscall.Close(home)
		if err := Enter(ns); err != nil {
			errc <- err
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

// Enter moves the calling OS thread into namespace ns for good. The caller must hold the
// thread (runtime.LockOSThread) and never unlock it: the thread must die with its
// goroutine. Processes it starts are born in ns.
func Enter(ns string) error {
	fd, err := syscall.Open("/var/run/netns/"+ns, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", ns, err)
	}
	defer syscall.Close(fd)
	if err := setns(fd); err != nil {
		return fmt.Errorf("entering namespace %s: %w", ns, err)
	}
	return nil
}

func setns(fd int) error {
	if _, _, e := syscall.RawSyscall(sysSetns, uintptr(fd), syscall.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// Dialer returns a DialContext that opens its connections from inside ns.
func Dialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := Do(ns, func() error {
			var err error
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// Listen opens a listener inside ns.
func Listen(ns, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := Do(ns, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}
