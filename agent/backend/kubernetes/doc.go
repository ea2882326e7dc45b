// Package kubernetes is the agent.Backend that runs sessions in the customer's Kubernetes
// cluster, in one namespace, with client-go.
//
// Each session is a small tree of objects, all named from the session id (never from the
// user or template, whose combination collided in v1) and all labelled with the session,
// tenant and agent ids and app.kubernetes.io/managed-by=streamspace-agent:
//
//	ConfigMap  ss-<key>        the root: the applied assignment, owner of everything else
//	Secret     ss-<key>-creds  per-session credentials (a random VNC password)
//	PVC        ss-<key>-home   the persistent home, kept across hibernate and stop
//	Service    ss-<key>        the streaming port (and the template's other ports)
//	Deployment ss-<key>        one replica while running, zero while hibernated or stopped
//
// Deleting the root cascades through ownerReferences; the home volume is released from
// the tree first when the retain policy (or a streamspace.dev/retain annotation on the
// claim) says it must outlive the session.
//
// Objects are written with server-side apply under the field manager
// "streamspace-agent", so applying the same assignment twice is a no-op for the
// apiserver, and a field someone changed behind the agent's back (a kubectl scale) is
// taken back. Status comes from shared informers, filtered by the managed-by and agent
// labels, on Deployments, Pods, Services, EndpointSlices, PVCs and the roots; a session is
// Running only when its pod is Ready and its stream endpoint answers a TCP dial (through
// a pluggable resolver and dialer: there may be no route to pod IPs from where the agent
// runs, and tests have no kube-proxy). A periodic resync, also run after every
// reconnect, repairs drift and deletes objects that carry our labels but belong to no
// session; objects without our labels are never touched.
package kubernetes
