package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	"streamspace.dev/libs/spec"
)

// Spec is the session spec as the control plane renders it; unknown fields are ignored so
// that the control plane can add fields before agents use them.
type Spec = spec.Session

// Port is a container port of the session.
type Port = spec.Port

// resolved is a Spec checked and turned into Kubernetes values.
type resolved struct {
	Spec
	requests, limits map[string]resource.Quantity
	homeSize         resource.Quantity
	stream           Port
}

var (
	envName  = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
)

// parseSpec decodes and checks raw. Every problem is a permanent invalid error: the same
// spec will fail the same way however often it is applied, and the cluster should not
// see a half-valid Deployment.
func parseSpec(raw json.RawMessage) (*resolved, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return nil, invalid("the assignment has no spec")
	}
	var r resolved
	if err := json.Unmarshal(raw, &r.Spec); err != nil {
		return nil, invalid("decoding the session spec: " + err.Error())
	}
	var fields []string
	bad := func(f, why string) { fields = append(fields, f+" "+why) }
	if r.Image == "" {
		bad("image", "is empty")
	}
	for i, e := range r.Env {
		if !envName.MatchString(e.Name) || e.Name == "VNC_PASSWORD" {
			bad(fmt.Sprintf("env[%d].name", i), "is not a valid or allowed variable name")
		}
	}
	r.requests, r.limits = map[string]resource.Quantity{}, map[string]resource.Quantity{}
	quantity := func(field, s string, into map[string]resource.Quantity, key string) {
		if s == "" {
			return
		}
		q, err := resource.ParseQuantity(s)
		if err != nil || q.Sign() < 0 {
			bad(field, "is not a Kubernetes quantity")
			return
		}
		into[key] = q
	}
	quantity("resources.requests.cpu", r.Resources.Requests.CPU, r.requests, "cpu")
	quantity("resources.requests.memory", r.Resources.Requests.Memory, r.requests, "memory")
	quantity("resources.limits.cpu", r.Resources.Limits.CPU, r.limits, "cpu")
	quantity("resources.limits.memory", r.Resources.Limits.Memory, r.limits, "memory")
	// The resolved numbers win over the template's strings: they include overrides.
	if r.CPUMillis > 0 {
		r.requests["cpu"] = *resource.NewMilliQuantity(r.CPUMillis, resource.DecimalSI)
	}
	if r.MemoryBytes > 0 {
		r.requests["memory"] = *resource.NewQuantity(r.MemoryBytes, resource.BinarySI)
	}
	if r.Home != nil {
		if r.Home.MountPath == "" || r.Home.MountPath[0] != '/' {
			bad("home.mount_path", "must be an absolute path")
		}
		size := r.Home.Size
		if size == "" {
			size = "1Gi"
		}
		q, err := resource.ParseQuantity(size)
		if err != nil || q.Sign() <= 0 {
			bad("home.size", "is not a positive Kubernetes quantity")
		}
		r.homeSize = q
	}
	for i, v := range r.Volumes {
		if !dnsLabel.MatchString(v.Name) || v.Name == componentHome || len(v.Name) > 63 {
			bad(fmt.Sprintf("volumes[%d].name", i), "is not a DNS label (or is reserved)")
		}
		if v.MountPath == "" || v.MountPath[0] != '/' {
			bad(fmt.Sprintf("volumes[%d].mount_path", i), "must be an absolute path")
		}
	}
	streams := 0
	for i, p := range r.Ports {
		if p.Port < 1 || p.Port > 65535 {
			bad(fmt.Sprintf("ports[%d].port", i), "is out of range")
		}
		if p.Name != "" && (!dnsLabel.MatchString(p.Name) || len(p.Name) > 15) {
			bad(fmt.Sprintf("ports[%d].name", i), "is not an IANA service name")
		}
		if p.Protocol != "" && p.Protocol != "TCP" && p.Protocol != "UDP" {
			bad(fmt.Sprintf("ports[%d].protocol", i), "is not TCP or UDP")
		}
		if p.Stream != "" {
			streams++
			r.stream = p
			if p.Protocol == "UDP" {
				bad(fmt.Sprintf("ports[%d].protocol", i), "the stream port must be TCP")
			}
		}
	}
	if streams != 1 {
		bad("ports", "exactly one port must carry the stream")
	}
	if len(fields) > 0 {
		return nil, invalid("the session spec cannot run on Kubernetes: " + strings.Join(fields, "; "))
	}
	return &r, nil
}
