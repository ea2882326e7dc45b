package netns

import (
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// probeTimeout is how long an inbound probe waits. The firewall drops rather than
// rejects, so a blocked probe ends in a timeout; on a veth pair a reachable listener
// answers in well under a millisecond.
const probeTimeout = 1500 * time.Millisecond

// Listeners is a TCP and a UDP service inside a site's namespace, standing in for
// anything a customer might run there (or a port the agent might wrongly open). The TCP
// one greets and hangs up; the UDP one echoes.
type Listeners struct {
	TCP, UDP string // host:port on the namespace's veth address
}

// StartListeners starts Listeners in ns on every address, reported at ip; they close
// when the test ends.
func StartListeners(t testing.TB, ns, ip string) Listeners {
	t.Helper()
	var tl net.Listener
	var ul net.PacketConn
	err := Do(ns, func() error {
		var err error
		if tl, err = net.Listen("tcp", "0.0.0.0:0"); err != nil {
			return err
		}
		ul, err = net.ListenPacket("udp", "0.0.0.0:0")
		return err
	})
	if err != nil {
		t.Fatalf("starting listeners in namespace %s: %v", ns, err)
	}
	t.Cleanup(func() { tl.Close(); ul.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := ul.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = ul.WriteTo(buf[:n], from)
		}
	}()
	return Listeners{
		TCP: net.JoinHostPort(ip, fmt.Sprint(tl.Addr().(*net.TCPAddr).Port)),
		UDP: net.JoinHostPort(ip, fmt.Sprint(ul.LocalAddr().(*net.UDPAddr).Port)),
	}
}

// ProbeTCP connects from namespace from to addr and reads the greeting of a Listeners'
// TCP service; nil means the connection was established.
func ProbeTCP(from, addr string) error {
	var c net.Conn
	err := Do(from, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, probeTimeout)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "hello\n" {
		return fmt.Errorf("unexpected greeting %q", b)
	}
	return nil
}

// ProbeUDP sends a datagram from namespace from to addr and waits for its echo; nil
// means the datagram got in (and its reply out).
func ProbeUDP(from, addr string) error {
	var c net.Conn
	err := Do(from, func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := c.Write([]byte("probe")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "probe" {
		return fmt.Errorf("unexpected echo %q", buf[:n])
	}
	return nil
}

// IsTimeout reports whether a probe failed by timing out, as a dropped packet makes it
// (a refusal would be an RST or ICMP port unreachable: a reply the firewall let out).
func IsTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// RequireBlocked fails unless both probes from ns time out: the firewall drops them.
func RequireBlocked(t testing.TB, ns string, l Listeners) {
	t.Helper()
	if err := ProbeTCP(ns, l.TCP); err == nil {
		t.Errorf("a new inbound TCP connection from %s to the site at %s was accepted: the site is not outbound-only", ns, l.TCP)
	} else if !IsTimeout(err) {
		t.Errorf("inbound TCP to %s failed, but not by being dropped (want a timeout): %v", l.TCP, err)
	}
	if err := ProbeUDP(ns, l.UDP); err == nil {
		t.Errorf("an inbound UDP datagram from %s to the site at %s was answered: the site is not outbound-only", ns, l.UDP)
	} else if !IsTimeout(err) {
		t.Errorf("inbound UDP to %s failed, but not by being dropped (want a timeout): %v", l.UDP, err)
	}
}

// RequireReachable fails unless both probes from ns succeed.
func RequireReachable(t testing.TB, ns string, l Listeners, why string) {
	t.Helper()
	if err := ProbeTCP(ns, l.TCP); err != nil {
		t.Fatalf("TCP from %s to %s (%s): %v", ns, l.TCP, why, err)
	}
	if err := ProbeUDP(ns, l.UDP); err != nil {
		t.Fatalf("UDP from %s to %s (%s): %v", ns, l.UDP, why, err)
	}
}
