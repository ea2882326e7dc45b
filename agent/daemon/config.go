// Package daemon is the streamspace-agent program: its configuration and the wiring of
// enrollment, the backend, the reconcile loop and the tunnel. It lives outside package
// main so end-to-end tests can run the agent in-process.
package daemon

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"streamspace.dev/agent/tunnel"
	"streamspace.dev/libs/config"
)

// Config is everything the agent reads from flags and the environment.
type Config struct {
	// Gateway is the gateway's QUIC address, host:port (UDP).
	Gateway string
	// ServerName overrides the name checked in the gateway's certificate.
	ServerName string
	// EnrollURL is the gateway's HTTPS enrollment endpoint.
	EnrollURL string
	// Token and TokenFile give the one-time enrollment token (one of them).
	Token, TokenFile string
	// CertFile and KeyFile give an existing certificate and key (a mounted Secret).
	CertFile, KeyFile string
	// CAFile is a PEM bundle trusted for the gateway (tunnel and enrollment) in place of
	// the system roots; the CA returned at enrollment is trusted for the tunnel too.
	CAFile string
	// StateDir holds the agent's key and certificate.
	StateDir string
	// Name labels the CSR; the registry takes the agent's name from the token. Tags are
	// reported in Hello's tags.
	Name string
	Tags string
	// LogLevel is debug, info, warn or error.
	LogLevel string
	// Backend selects the session backend: "memory" or "kubernetes".
	Backend string
	// Kubernetes backend settings: the namespace holding the sessions, a kubeconfig
	// (empty: in-cluster), the client's rate limit, and whether deleted sessions keep
	// their home volumes.
	Namespace, Kubeconfig string
	KubeQPS               float64
	KubeBurst             int
	RetainHomes           bool
	StorageClass          string
	// DevEndpoint, for local clusters without a pod network only (kwok, `streamspace
	// dev`), makes the Kubernetes backend dial this host:port for every session's stream
	// instead of the session's pod.
	DevEndpoint string
	// HealthListen is the address of /healthz and /readyz; empty serves neither.
	HealthListen string

	KeepAlive, IdleTimeout, Heartbeat time.Duration
	BackoffInitial, BackoffMax        time.Duration
	DrainTimeout                      time.Duration
}

// conntrackUDPTimeout is the Linux default UDP conntrack timeout (STACK.md). A keep-alive
// at or above it lets a customer's stateful firewall forget the tunnel between packets.
const conntrackUDPTimeout = 30 * time.Second

// FlagSet registers every setting on a new FlagSet writing into cfg.
func FlagSet(cfg *Config) *flag.FlagSet {
	fs := flag.NewFlagSet("streamspace-agent", flag.ContinueOnError)
	config.String(fs, &cfg.Gateway, "gateway", "STREAMSPACE_GATEWAY", "", "gateway QUIC address, host:port (UDP; the agent only dials out)")
	config.String(fs, &cfg.ServerName, "server-name", "STREAMSPACE_SERVER_NAME", "", "name expected in the gateway's certificate (default: the -gateway host)")
	config.String(fs, &cfg.EnrollURL, "enroll-url", "STREAMSPACE_ENROLL_URL", "", "gateway enrollment endpoint, https://…/api/v1/agents/enroll (needed with a token)")
	config.String(fs, &cfg.Token, "token", "STREAMSPACE_ENROLLMENT_TOKEN", "", "one-time enrollment token (prefer -token-file: flags show in ps)")
	config.String(fs, &cfg.TokenFile, "token-file", "STREAMSPACE_ENROLLMENT_TOKEN_FILE", "", "file holding the enrollment token (a mounted Secret)")
	config.String(fs, &cfg.CertFile, "cert-file", "STREAMSPACE_CERT_FILE", "", "existing agent certificate chain, PEM (e.g. a Secret's tls.crt)")
	config.String(fs, &cfg.KeyFile, "key-file", "STREAMSPACE_KEY_FILE", "", "existing agent private key, PEM (e.g. a Secret's tls.key)")
	config.String(fs, &cfg.CAFile, "ca-file", "STREAMSPACE_CA_FILE", "", "PEM CA bundle trusted for the gateway instead of the system roots")
	config.String(fs, &cfg.StateDir, "state-dir", "STREAMSPACE_STATE_DIR", "/var/lib/streamspace-agent", "directory for the agent's key and certificate (mode 0700)")
	config.String(fs, &cfg.Name, "name", "STREAMSPACE_AGENT_NAME", "", "name in the certificate request, for logs (the portal shows the name given to the enrollment token) (default: the host name)")
	config.String(fs, &cfg.Tags, "tags", "STREAMSPACE_AGENT_TAGS", "", "comma-separated tags this agent reports, e.g. gpu,eu-west")
	config.String(fs, &cfg.LogLevel, "log-level", "STREAMSPACE_LOG_LEVEL", "info", "debug, info, warn or error")
	config.String(fs, &cfg.Backend, "backend", "STREAMSPACE_BACKEND", "memory", "session backend: memory (simulated sessions) or kubernetes")
	config.String(fs, &cfg.Namespace, "namespace", "STREAMSPACE_NAMESPACE", "", "kubernetes: namespace for the sessions (default: the agent's own, from its ServiceAccount)")
	config.String(fs, &cfg.Kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubernetes: kubeconfig file (default: in-cluster ServiceAccount)")
	fs.Float64Var(&cfg.KubeQPS, "kube-qps", 50, "kubernetes: client requests per second towards the apiserver")
	fs.IntVar(&cfg.KubeBurst, "kube-burst", 100, "kubernetes: client request burst")
	fs.BoolVar(&cfg.RetainHomes, "retain-homes", false, "kubernetes: keep a deleted session's home volume (a PVC annotated streamspace.dev/retain=true is always kept)")
	config.String(fs, &cfg.StorageClass, "storage-class", "STREAMSPACE_STORAGE_CLASS", "", "kubernetes: StorageClass of home volumes (default: the cluster's default)")
	config.String(fs, &cfg.DevEndpoint, "dev-endpoint", "STREAMSPACE_DEV_ENDPOINT", "", "kubernetes, development only: dial this host:port for every session's stream instead of its pod (for local clusters without a pod network, such as the kwok cluster of `streamspace dev`)")
	// Off by default: several agents (or an agent and `streamspace dev`) on one machine
	// must not fight over a port. The Helm chart turns it on for its probes.
	config.String(fs, &cfg.HealthListen, "health-listen", "STREAMSPACE_HEALTH_LISTEN", "", "address of /healthz (process alive) and /readyz (tunnel up and backend synced), e.g. :8081; empty: no health endpoint")
	config.Duration(fs, &cfg.KeepAlive, "keepalive", "STREAMSPACE_KEEPALIVE", tunnel.DefaultKeepAlive, "QUIC keep-alive period; must stay well under the 30s UDP conntrack timeout")
	config.Duration(fs, &cfg.IdleTimeout, "idle-timeout", "STREAMSPACE_IDLE_TIMEOUT", tunnel.DefaultIdleTimeout, "QUIC idle timeout: a silent gateway is given up after this")
	config.Duration(fs, &cfg.Heartbeat, "heartbeat", "STREAMSPACE_HEARTBEAT", tunnel.DefaultHeartbeat, "heartbeat interval when the gateway names none")
	config.Duration(fs, &cfg.BackoffInitial, "backoff-initial", "STREAMSPACE_BACKOFF_INITIAL", 100*time.Millisecond, "first reconnect delay ceiling (full jitter)")
	config.Duration(fs, &cfg.BackoffMax, "backoff-max", "STREAMSPACE_BACKOFF_MAX", 30*time.Second, "largest reconnect delay ceiling")
	config.Duration(fs, &cfg.DrainTimeout, "drain-timeout", "STREAMSPACE_DRAIN_TIMEOUT", tunnel.DefaultDrainTimeout, "on SIGTERM, how long in-flight applies may take to finish")
	return fs
}

// Validate checks the settings that can be checked without touching the network or the
// state directory (whether a saved certificate exists is only known at start).
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Gateway == "" {
		bad("-gateway is required")
	} else if _, port, err := net.SplitHostPort(c.Gateway); err != nil || port == "" {
		bad("-gateway %q is not host:port", c.Gateway)
	}
	if c.Token != "" && c.TokenFile != "" {
		bad("give -token or -token-file, not both")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		bad("-cert-file and -key-file go together")
	}
	if c.Token != "" || c.TokenFile != "" {
		if c.EnrollURL == "" {
			bad("an enrollment token needs -enroll-url")
		} else if u, err := url.Parse(c.EnrollURL); err != nil || u.Host == "" {
			bad("-enroll-url %q is not a URL", c.EnrollURL)
		} else if u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())) {
			// The token is a bearer secret: plain HTTP only where nothing can sniff it.
			bad("-enroll-url must be https (http only to a loopback address)")
		}
	}
	if c.StateDir == "" {
		bad("-state-dir is required")
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	switch c.Backend {
	case "memory":
	case "kubernetes":
		if c.KubeQPS <= 0 || c.KubeBurst <= 0 {
			bad("-kube-qps and -kube-burst must be positive")
		}
	default:
		bad("-backend %q is not known (memory, kubernetes)", c.Backend)
	}
	if c.DevEndpoint != "" {
		if c.Backend != "kubernetes" {
			bad("-dev-endpoint applies to -backend=kubernetes only")
		}
		if _, port, err := net.SplitHostPort(c.DevEndpoint); err != nil || port == "" {
			bad("-dev-endpoint %q is not host:port", c.DevEndpoint)
		}
	}
	if c.HealthListen != "" {
		if _, _, err := net.SplitHostPort(c.HealthListen); err != nil {
			bad("-health-listen %q is not [host]:port", c.HealthListen)
		}
	}
	if c.KeepAlive <= 0 || c.KeepAlive > conntrackUDPTimeout/2 {
		bad("-keepalive %v must be positive and at most %v, half the UDP conntrack timeout", c.KeepAlive, conntrackUDPTimeout/2)
	}
	if c.IdleTimeout < 2*c.KeepAlive {
		bad("-idle-timeout %v must be at least twice -keepalive", c.IdleTimeout)
	}
	if c.Heartbeat <= 0 || c.BackoffInitial <= 0 || c.BackoffMax < c.BackoffInitial || c.DrainTimeout <= 0 {
		bad("-heartbeat, -backoff-initial and -drain-timeout must be positive, and -backoff-max at least -backoff-initial")
	}
	return errors.Join(errs...)
}

// TagList returns the tags, trimmed, without empties.
func (c *Config) TagList() []string {
	var out []string
	for t := range strings.SplitSeq(c.Tags, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// token returns the enrollment token from the flag or the file.
func (c *Config) token() (string, error) {
	if c.TokenFile == "" {
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("reading -token-file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("-log-level %q is not debug, info, warn or error", s)
	}
	return l, nil
}
