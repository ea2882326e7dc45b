package kubernetes

import (
	"context"
	"io"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"streamspace.dev/libs/wire"
)

// Target is what the cluster says about one port of a session: enough for a Resolver
// to pick an address, whatever the network between the agent and the pods looks like.
type Target struct {
	SessionID wire.SessionID
	Namespace string
	// Service is the session's Service; ClusterIP its virtual IP (reachable only where
	// kube-proxy or an equivalent runs).
	Service, ClusterIP string
	// PortName and Port are the Service port; TargetPort the container port.
	PortName   string
	Port       int
	TargetPort int
	// PodIP is the ready endpoint address of the session's pod, from its EndpointSlice.
	PodIP string
	// Protocol is the stream kind ("vnc-web", "rfb", …), for the reported endpoint.
	Protocol string
}

// Resolver returns the host:port to dial for t. It is the seam for networks where pod
// IPs are not routable from the agent, and for tests, which have no kube-proxy and point
// it at a real local listener.
type Resolver func(ctx context.Context, t Target) (string, error)

// DefaultResolver dials the pod's endpoint address directly (the agent runs in the
// cluster, where pod IPs route), falling back to the ClusterIP.
func DefaultResolver(_ context.Context, t Target) (string, error) {
	if t.PodIP != "" {
		return net.JoinHostPort(t.PodIP, strconv.Itoa(t.TargetPort)), nil
	}
	if t.ClusterIP != "" && t.ClusterIP != corev1.ClusterIPNone {
		return net.JoinHostPort(t.ClusterIP, strconv.Itoa(t.Port)), nil
	}
	return net.JoinHostPort(t.Service+"."+t.Namespace+".svc", strconv.Itoa(t.Port)), nil
}

func (b *Backend) dialTarget(ctx context.Context, t Target) (net.Conn, error) {
	addr, err := b.cfg.Resolver(ctx, t)
	if err != nil {
		return nil, err
	}
	return b.cfg.Dial(ctx, "tcp", addr)
}

// DialSession implements agent.SessionDialer: it connects to port (by name, else by
// number) of a session whose pod is Ready and published, through the Resolver and Dial.
func (b *Backend) DialSession(ctx context.Context, id wire.SessionID, port string, number int) (io.ReadWriteCloser, error) {
	n := namesFor(id)
	o := b.lookup(n.label)
	if o.root == nil {
		return nil, &wire.Error{Code: wire.CodeNotFound, Message: "no such session on this agent", Permanent: true}
	}
	unavailable := func(msg string) error {
		return &wire.Error{Code: wire.CodeUnavailable, Message: msg, RetryAfter: time.Second}
	}
	spec := b.specOf(o.root)
	if spec == nil {
		return nil, unavailable("the session has no spec yet")
	}
	var p *Port
	for i := range spec.Ports {
		q := &spec.Ports[i]
		if (port != "" && portName(*q) == port) || (port == "" && q.Port == number) {
			p = q
		}
	}
	if p == nil {
		return nil, &wire.Error{Code: wire.CodeNotFound, Message: "the session has no such port", Permanent: true}
	}
	pod := pickPod(o.pods)
	if pod == nil || o.svc == nil {
		return nil, unavailable("the session is not running")
	}
	if c := podCondition(pod, corev1.PodReady); c == nil || c.Status != corev1.ConditionTrue {
		return nil, unavailable("the session's pod is not Ready")
	}
	t := Target{SessionID: id, Namespace: b.ns, Service: o.svc.Name, ClusterIP: o.svc.Spec.ClusterIP,
		PortName: portName(*p), Port: p.Port, TargetPort: p.Port, Protocol: string(p.Stream)}
	t.PodIP = readyAddress(o.slices, pod, t.PortName)
	conn, err := b.dialTarget(ctx, t)
	if err != nil {
		return nil, unavailable("dialing the session: " + err.Error())
	}
	return conn, nil
}
