package gateway

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"streamspace.dev/libs/config"
	"streamspace.dev/libs/seal"
)

// Defaults of the gateway's settings.
const (
	DefaultListen            = "127.0.0.1:7443"
	DefaultCertTTL           = 30 * 24 * time.Hour
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultDegradedAfter     = 30 * time.Second
	DefaultOfflineAfter      = 60 * time.Second
	// DefaultResync is how often a replica sweeps its agents for pending work even without
	// a NOTIFY: the bound on delivery delay when a notification is lost.
	DefaultResync = 5 * time.Second
	// DefaultHeartbeatFlush is how often a replica writes the heartbeats it received, one
	// statement per tenant. It delays last_seen by at most this much, far below the 30 s
	// after which a silent agent is degraded.
	DefaultHeartbeatFlush = 3 * time.Second
	// DefaultOwnerHeartbeat is how often a replica stamps its row in
	// platform.gateway_replicas, the liveness of every owner row naming it.
	DefaultOwnerHeartbeat = 2 * time.Second
	// DefaultClaimCheck is how often a replica checks, in one read, that the owner rows
	// of its tunnels still name their connections. NOTIFY closes a superseded or deleted
	// agent's tunnel at once and the fenced heartbeat writes within a heartbeat interval;
	// this check only bounds how long a tunnel that neither reached stays open.
	DefaultClaimCheck = 30 * time.Second
	// DefaultKeepAlive is well below the 30 s UDP conntrack timeout of common firewalls
	// (STACK.md) and a little above the agents' 10 s heartbeat, like the agent's own
	// (agent/tunnel): quic-go pings only after a period without receiving a packet, so
	// while heartbeats arrive the gateway sends no pings, and only a stalled agent is
	// pinged. Both sides pinging every 5 s cost 38% of a core at 10,000 idle agents.
	DefaultKeepAlive   = 12 * time.Second
	DefaultIdleTimeout = 30 * time.Second
	DefaultRetryMin    = time.Second
	DefaultRetryMax    = 30 * time.Second
	// DefaultConnectConcurrency is how many connections may claim their agent and load
	// its state at once; the rest wait in-process for their turn, not in the database
	// pool's queue. Measured with the 1,000-agent reconnect storm on a loaded 2-core
	// machine: 8 (under half the default 20-connection pool) took 52 s to bring every
	// agent back, 64 took 26 s, so the pool itself is left to be the tighter bound.
	DefaultConnectConcurrency = 64
	// DefaultHandshakeConcurrency is how many connections may be between their first
	// packet and their HelloAck at once (TLS, the registry check, Hello, registration);
	// more are refused at once and retried by the agents with backoff. Refusals cost the
	// refused agents time (their backoff grows), so the limit is set only for storms that
	// would otherwise collapse: with a few milliseconds of CPU per handshake, 10,000
	// agents handshaking at once on 2 cores need more than the agent's 10 s handshake
	// timeout and time out together, while 2,048 finish in a few seconds. Measured with
	// the 1,000-agent reconnect storm on the shared 2-core machine (load 8-14), everyone
	// was back 8.4 s after the new replica listened without a limit, 13.1 s with 512
	// (627 dials refused) and 16 s with 64 (1,272 refused); with test-speed keep-alives
	// at load 22, where the storm collapsed (110 s, 9,199 failed dials), 64 halved it.
	DefaultHandshakeConcurrency = 2048
	// DefaultPeerListen keeps the replica-to-replica listener on loopback, where nothing
	// off the host reaches it, on a port the kernel picks: the other replicas learn the
	// port from this replica's row (the advertised URL is derived from the bound address),
	// so a fixed one would only collide when several replicas share a host (development,
	// tests). A cluster sets a fixed port reachable on the pod network (the chart: :8444),
	// which firewalls and network policies can name, and --advertise-url with it.
	DefaultPeerListen = "127.0.0.1:0"
)

// Config is the gateway's own settings, beside the common server.Config.
type Config struct {
	// KEK is the base64 key-encryption key sealing the CA key (the same key as identity's).
	KEK string
	// Listen is the agents' address: QUIC on its UDP port, HTTPS enrollment on its TCP
	// port. Port 0 picks free ports (tests).
	Listen string
	// ServerNames are the DNS names and IPs in the gateway's self-issued server certificate.
	ServerNames []string
	// TLSCertFile and TLSKeyFile, when set, replace the self-issued server certificate.
	TLSCertFile, TLSKeyFile string
	// GatewayID names this replica in owner rows; a random one when empty.
	GatewayID string
	// IdentityURL is identity's base URL, for a standalone gateway to consume enrollment
	// tokens; the all-in-one binary calls identity in-process instead.
	IdentityURL string
	// CertTTL is the lifetime of agent certificates.
	CertTTL time.Duration
	// HeartbeatInterval is what agents are told to heartbeat at; DegradedAfter and
	// OfflineAfter age a silent agent.
	HeartbeatInterval, DegradedAfter, OfflineAfter time.Duration
	// Resync bounds delivery delay when a NOTIFY is lost; OwnerHeartbeat paces the
	// stamps of the replica's row (the liveness of its owner rows); ClaimCheck paces the
	// check that its tunnels' owner rows still name them.
	Resync, OwnerHeartbeat, ClaimCheck time.Duration
	// HeartbeatFlush paces the batched heartbeat writes; by default DefaultHeartbeatFlush,
	// or half the heartbeat interval when that is shorter.
	HeartbeatFlush time.Duration
	// KeepAlive and IdleTimeout tune QUIC liveness.
	KeepAlive, IdleTimeout time.Duration
	// RetryMin and RetryMax bound the backoff of unacknowledged work.
	RetryMin, RetryMax time.Duration
	// TrafficFlush is how often session traffic is recorded (DefaultTrafficFlush).
	TrafficFlush time.Duration
	// SessionsURL is the sessions service's base URL, for a standalone gateway to look up
	// the sessions browsers stream; the all-in-one binary asks it in-process.
	SessionsURL string
	// ConnectConcurrency bounds the connections registering at once; the rest queue.
	ConnectConcurrency int
	// PeerListen is the replica-to-replica listener: HTTPS with mutual TLS (TLS 1.3,
	// replica certificates of the internal CA on both ends) serving only the streams other
	// replicas forward here (forward.go). Port 0 picks a free port.
	PeerListen string
	// AdvertiseURL is PeerListen as the other gateway replicas reach it
	// (https://10.1.2.3:8444): kept in its platform.gateway_replicas row, so that a stream
	// for one of its agents that lands on another replica is forwarded here. Empty:
	// StartGateway derives it from the bound peer listener when that is on a loopback
	// address (one host, tests), else this replica's agents stream only through it.
	AdvertiseURL string
	// HandshakeConcurrency bounds the connections between their first packet and their
	// HelloAck; more are refused (QUIC CONNECTION_REFUSED) and the agents retry.
	HandshakeConcurrency int

	// serverNames holds the raw --agent-server-names until withDefaults splits it.
	serverNames *string
}

// Register defines the gateway's flags on fs. kek is false in the all-in-one binary,
// which shares identity's --kek.
func (c *Config) Register(fs *flag.FlagSet, kek bool) {
	if kek {
		config.String(fs, &c.KEK, "kek", "STREAMSPACE_KEK", "", "base64 32-byte key-encryption key that seals the agent CA key in the database (required)")
		config.String(fs, &c.IdentityURL, "identity-url", "STREAMSPACE_IDENTITY_URL", "", "identity's base URL, for consuming enrollment tokens (required standalone)")
		config.String(fs, &c.SessionsURL, "sessions-url", "STREAMSPACE_SESSIONS_URL", "", "the sessions service's base URL, for session streams (required standalone)")
	}
	config.String(fs, &c.Listen, "agent-listen", "STREAMSPACE_AGENT_LISTEN", DefaultListen, "agents' address: QUIC tunnel on UDP, HTTPS enrollment on TCP, same port")
	var names string
	config.String(fs, &names, "agent-server-names", "STREAMSPACE_AGENT_SERVER_NAMES", "localhost,127.0.0.1", "comma-separated DNS names and IPs of the self-issued server certificate")
	config.String(fs, &c.TLSCertFile, "agent-tls-cert", "STREAMSPACE_AGENT_TLS_CERT", "", "PEM server certificate for agents (default: issued by the internal CA)")
	config.String(fs, &c.TLSKeyFile, "agent-tls-key", "STREAMSPACE_AGENT_TLS_KEY", "", "PEM key of --agent-tls-cert")
	config.String(fs, &c.GatewayID, "gateway-id", "STREAMSPACE_GATEWAY_ID", "", "this replica's id in owner rows (default: host name and a random suffix)")
	config.Duration(fs, &c.CertTTL, "agent-cert-ttl", "STREAMSPACE_AGENT_CERT_TTL", DefaultCertTTL, "lifetime of agent client certificates")
	config.Duration(fs, &c.HeartbeatInterval, "agent-heartbeat", "STREAMSPACE_AGENT_HEARTBEAT", DefaultHeartbeatInterval, "heartbeat interval agents are told to use")
	config.Duration(fs, &c.DegradedAfter, "agent-degraded-after", "STREAMSPACE_AGENT_DEGRADED_AFTER", DefaultDegradedAfter, "silence after which an agent is degraded")
	config.Duration(fs, &c.OfflineAfter, "agent-offline-after", "STREAMSPACE_AGENT_OFFLINE_AFTER", DefaultOfflineAfter, "silence after which an agent is offline")
	config.Duration(fs, &c.Resync, "agent-resync", "STREAMSPACE_AGENT_RESYNC", DefaultResync, "how often the replica sweeps its agents for pending work without a notification")
	config.Duration(fs, &c.HeartbeatFlush, "agent-heartbeat-flush", "STREAMSPACE_AGENT_HEARTBEAT_FLUSH", 0, "how often received heartbeats are written, one statement per tenant (default 3s, or half --agent-heartbeat if shorter)")
	config.Duration(fs, &c.ClaimCheck, "agent-claim-check", "STREAMSPACE_AGENT_CLAIM_CHECK", DefaultClaimCheck, "how often the replica checks that its tunnels still own their agents, should a notification have been lost")
	config.Int(fs, &c.ConnectConcurrency, "agent-connect-concurrency", "STREAMSPACE_AGENT_CONNECT_CONCURRENCY", DefaultConnectConcurrency, "connections that may register at once (a database transaction each); the rest queue")
	config.Int(fs, &c.HandshakeConcurrency, "agent-handshake-concurrency", "STREAMSPACE_AGENT_HANDSHAKE_CONCURRENCY", DefaultHandshakeConcurrency, "connections that may be handshaking (TLS to HelloAck) at once; more are refused and the agents retry with backoff")
	config.Duration(fs, &c.KeepAlive, "agent-keepalive", "STREAMSPACE_AGENT_KEEPALIVE", DefaultKeepAlive, "QUIC keep-alive period (well under 30 s UDP conntrack timeouts)")
	config.Duration(fs, &c.IdleTimeout, "agent-idle-timeout", "STREAMSPACE_AGENT_IDLE_TIMEOUT", DefaultIdleTimeout, "QUIC idle timeout")
	config.String(fs, &c.PeerListen, "peer-listen", "STREAMSPACE_GATEWAY_PEER_LISTEN", DefaultPeerListen,
		"replica-to-replica address: mutual-TLS HTTPS on TCP, serving only the session streams other gateway replicas forward here (default: loopback, a free port)")
	config.String(fs, &c.AdvertiseURL, "advertise-url", "STREAMSPACE_GATEWAY_ADVERTISE_URL", "",
		"--peer-listen as other gateway replicas reach it (https://10.1.2.3:8444), to forward session streams of agents it holds (default: https://<bound --peer-listen> when that is a loopback address, else none: those streams are refused on other replicas)")
	config.Duration(fs, &c.TrafficFlush, "traffic-flush", "STREAMSPACE_TRAFFIC_FLUSH", DefaultTrafficFlush, "how often session traffic (bytes, last activity) is written to the database")
	c.serverNames = &names
}

// WithDefaults returns c with every zero setting at its default.
func (c Config) WithDefaults() Config {
	if c.serverNames != nil && len(c.ServerNames) == 0 {
		c.ServerNames = splitList(*c.serverNames)
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	if c.PeerListen == "" {
		c.PeerListen = DefaultPeerListen
	}
	if len(c.ServerNames) == 0 {
		c.ServerNames = []string{"localhost", "127.0.0.1"}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.CertTTL, DefaultCertTTL)
	def(&c.HeartbeatInterval, DefaultHeartbeatInterval)
	def(&c.DegradedAfter, DefaultDegradedAfter)
	def(&c.OfflineAfter, DefaultOfflineAfter)
	def(&c.Resync, DefaultResync)
	def(&c.OwnerHeartbeat, DefaultOwnerHeartbeat)
	def(&c.ClaimCheck, DefaultClaimCheck)
	def(&c.HeartbeatFlush, min(DefaultHeartbeatFlush, c.HeartbeatInterval/2))
	def(&c.KeepAlive, DefaultKeepAlive)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.RetryMin, DefaultRetryMin)
	def(&c.RetryMax, DefaultRetryMax)
	def(&c.TrafficFlush, DefaultTrafficFlush)
	if c.ConnectConcurrency <= 0 {
		c.ConnectConcurrency = DefaultConnectConcurrency
	}
	if c.HandshakeConcurrency <= 0 {
		c.HandshakeConcurrency = DefaultHandshakeConcurrency
	}
	return c
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Validate checks the configuration (after defaults).
func (c Config) Validate() error {
	c = c.WithDefaults()
	var errs []error
	if c.KEK == "" {
		errs = append(errs, errors.New("--kek (or STREAMSPACE_KEK) is required"))
	} else if _, err := seal.ParseKey(c.KEK); err != nil {
		errs = append(errs, fmt.Errorf("--kek: %w", err))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--agent-listen %q: %w", c.Listen, err))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("--agent-tls-cert and --agent-tls-key go together"))
	}
	if c.CertTTL < time.Hour {
		errs = append(errs, errors.New("--agent-cert-ttl must be at least 1h"))
	}
	if c.DegradedAfter <= c.HeartbeatInterval || c.OfflineAfter <= c.DegradedAfter {
		errs = append(errs, errors.New("want heartbeat < degraded-after < offline-after"))
	}
	if c.HeartbeatFlush >= c.DegradedAfter-c.HeartbeatInterval {
		errs = append(errs, errors.New("--agent-heartbeat-flush must be below --agent-degraded-after minus --agent-heartbeat"))
	}
	if _, _, err := net.SplitHostPort(c.PeerListen); err != nil {
		errs = append(errs, fmt.Errorf("--peer-listen %q: %w", c.PeerListen, err))
	}
	if c.AdvertiseURL != "" {
		u, err := url.Parse(c.AdvertiseURL)
		switch {
		case err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "":
			errs = append(errs, fmt.Errorf("--advertise-url %q: want https://host:port of --peer-listen, without a path", c.AdvertiseURL))
		case u.Scheme == "http":
			// Forwarded streams carry the caller's token: never in clear text between pods.
			errs = append(errs, fmt.Errorf("--advertise-url %q: replicas forward streams only over mutual TLS to --peer-listen; advertise https://host:port of --peer-listen (e.g. https://$(POD_IP):8444), not the HTTP API", c.AdvertiseURL))
		case u.Scheme != "https":
			errs = append(errs, fmt.Errorf("--advertise-url %q: want https://host:port of --peer-listen, without a path", c.AdvertiseURL))
		}
	}
	if c.KeepAlive >= c.IdleTimeout || c.KeepAlive > 25*time.Second {
		errs = append(errs, errors.New("--agent-keepalive must be below the idle timeout and 25s"))
	}
	return errors.Join(errs...)
}

// loopbackURL is the advertise URL derived from the bound peer listener's address:
// https://addr when its host is a loopback address, "" otherwise (a replica cannot tell
// by itself under which address others reach 0.0.0.0).
func loopbackURL(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" || port == "0" {
		return ""
	}
	if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && host != "localhost" {
		return ""
	}
	return "https://" + net.JoinHostPort(host, port)
}
