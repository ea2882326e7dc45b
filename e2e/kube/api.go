package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"streamspace.dev/e2e/netns"
)

// APIError is a non-2xx answer of the apiserver.
type APIError struct {
	Method, Path string
	StatusCode   int
	Body         string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("kube: %s %s: %d: %s", e.Method, e.Path, e.StatusCode, e.Body)
}

func (c *Cluster) newHTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.pki.caPEM)
	cert, err := tls.X509KeyPair(c.pki.adminCertPEM, c.pki.adminKeyPEM)
	if err != nil {
		panic(err) // generated just before; cannot fail
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
	}
	if c.netns != "" {
		tr.DialContext = netns.Dialer(c.netns)
	}
	return &http.Client{Timeout: 30 * time.Second, Transport: tr}
}

// plainClient is an HTTP client for etcd's health endpoint, inside the
// cluster's namespace.
func (c *Cluster) plainClient() *http.Client {
	if c.netns == "" {
		return http.DefaultClient
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: netns.Dialer(c.netns)}}
}

// Do sends a JSON request to the apiserver as the admin user. in, if not nil,
// is marshalled as the body; out, if not nil, receives the decoded answer. A
// non-2xx answer is returned as *APIError.
func (c *Cluster) Do(ctx context.Context, method, path string, in, out any) error {
	return c.do(ctx, method, path, "application/json", in, out)
}

// MergePatch sends patch to path as a JSON merge patch (RFC 7386), as
// `kubectl patch --type=merge` does; out, if not nil, receives the object.
func (c *Cluster) MergePatch(ctx context.Context, path string, patch, out any) error {
	return c.do(ctx, http.MethodPatch, path, "application/merge-patch+json", patch, out)
}

func (c *Cluster) do(ctx context.Context, method, path, contentType string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Server()+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, Body: string(b)}
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// createIfAbsent POSTs obj to path, ignoring 409 AlreadyExists.
func (c *Cluster) createIfAbsent(ctx context.Context, path string, obj any) error {
	err := c.Do(ctx, http.MethodPost, path, obj, nil)
	if e, ok := err.(*APIError); ok && e.StatusCode == http.StatusConflict {
		return nil
	}
	return err
}

// createNode registers the fake Node that kwok manages: annotated
// kwok.x-k8s.io/node=fake, with no taint.
func (c *Cluster) createNode(ctx context.Context, alloc map[string]string) error {
	if len(alloc) == 0 {
		alloc = map[string]string{"cpu": "256", "memory": "1Ti", "pods": "1000"}
	}
	node := map[string]any{
		"apiVersion": "v1",
		"kind":       "Node",
		"metadata": map[string]any{
			"name":        NodeName,
			"annotations": map[string]string{"kwok.x-k8s.io/node": "fake"},
			"labels": map[string]string{
				"type":                   "kwok",
				"kubernetes.io/hostname": NodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
		"status": map[string]any{"capacity": alloc, "allocatable": alloc},
	}
	return c.createIfAbsent(ctx, "/api/v1/nodes", node)
}

// createStorageClass creates the default StorageClass, provisioned by kwok.
func (c *Cluster) createStorageClass(ctx context.Context) error {
	sc := map[string]any{
		"apiVersion": "storage.k8s.io/v1",
		"kind":       "StorageClass",
		"metadata": map[string]any{
			"name":        StorageClassName,
			"annotations": map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		"provisioner":       "kwok.x-k8s.io/volume",
		"reclaimPolicy":     "Delete",
		"volumeBindingMode": "Immediate",
	}
	return c.createIfAbsent(ctx, "/apis/storage.k8s.io/v1/storageclasses", sc)
}

// waitNodeReady waits until kwok has marked the fake Node Ready.
func (c *Cluster) waitNodeReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		for _, n := range []string{"kwok", "kube-apiserver"} {
			if p := c.proc(n); p.exited() {
				return c.procErr(p)
			}
		}
		var node struct {
			Status struct {
				Conditions []struct{ Type, Status string }
			}
		}
		if err := c.Do(ctx, http.MethodGet, "/api/v1/nodes/"+NodeName, nil, &node); err == nil {
			for _, cond := range node.Status.Conditions {
				if cond.Type == "Ready" && cond.Status == "True" {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube: node %s not Ready: %v; kwok log %s:\n%s",
				NodeName, ctx.Err(), c.LogPath("kwok"), tail(c.LogPath("kwok"), 2000))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// kubeconfigYAML renders an admin kubeconfig with embedded credentials.
func (c *Cluster) kubeconfigYAML() []byte {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: streamspace-e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: streamspace-e2e
  context:
    cluster: streamspace-e2e
    user: admin
    namespace: default
current-context: streamspace-e2e
`, c.Server(), b64(c.pki.caPEM), b64(c.pki.adminCertPEM), b64(c.pki.adminKeyPEM))
}
