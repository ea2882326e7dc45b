package gateway_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/benchenv"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/tenants/tenantstest"
)

// agentsPerSocket is how many simulated agents share one UDP socket (one quic.Transport)
// in the load generator: 10,000 agents then need 10 sockets, not 10,000 descriptors.
const agentsPerSocket = 1000

// BenchmarkScaleIdleAgents runs the real agent-gateway binary as its own process and
// connects N simulated agents to it (default 10,000; STREAMSPACE_BENCH_AGENTS
// overrides) from this process, the load generator. Each agent enrolls over HTTPS with
// its own key, completes the mTLS QUIC handshake and Hello, keeps its tunnel alive with
// the real agent's 12 s keep-alive, answers pushes, and heartbeats at the interval the
// gateway names (its production default, 10 s), the first beat at a random offset so
// the load is spread as a real fleet's would be. Like the real agent it sends capacity
// only when it changed and on every sixth beat (wire.CapacityReporter, protocol 1.2): an
// idle agent's capacity does not change, so five beats in six are liveness only.
//
// Because the gateway is a separate process, its costs are read from the kernel and
// from its own /metrics, untouched by the load generator's: memory per idle agent is the
// growth of its RSS (and of its Go heap in use) from before the agents connect to after
// they have settled, divided by N; CPU is its user+system time over a measured window
// (default 30 s, three heartbeat rounds; STREAMSPACE_BENCH_WINDOW overrides) divided by
// the window. PostgreSQL's own CPU is not counted. With STREAMSPACE_BENCH_PROFILE=DIR the
// gateway also serves --debug-listen, and DIR receives its CPU profile of the window and
// its heap and goroutine profiles after it; STREAMSPACE_BENCH_GATEWAY_ENV adds
// space-separated KEY=VALUE settings to the gateway's environment only (GOGC=50,
// GOMEMLIMIT=...). Besides RSS and heap it reports the goroutines and stack bytes per
// agent and the CPU per agent and second. Identity is replaced by a stub that
// validates enrollment tokens, since only the gateway is measured. Run with
// -benchtime=1x; goals (issue 5): at most 100 KiB per agent and 25% of one core.
func BenchmarkScaleIdleAgents(b *testing.B) {
	n := benchenv.Int(b, "STREAMSPACE_BENCH_AGENTS", 10000)
	window := 30 * time.Second
	if v := os.Getenv("STREAMSPACE_BENCH_WINDOW"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("STREAMSPACE_BENCH_WINDOW=%q: %v", v, err)
		}
		window = d
	}
	for range b.N {
		gw := startGatewayProcess(b)
		began := time.Now()
		ids := enrollMany(b, gw, n)
		enrolled := time.Since(began)

		// Settle, then the baseline: everything but the agents' connections is in place.
		time.Sleep(2 * time.Second)
		rss0, heap0, go0 := gw.rss(b), gw.heapInuse(b), gw.goStats(b)

		began = time.Now()
		connectCPU := gw.cpu(b)
		// The first 20 s of connecting, when profiling: where a storm's time goes.
		connecting := gw.profile(b, "connect-cpu", "/debug/pprof/profile?seconds=20")
		fleet := connectMany(b, gw, ids)
		connected := time.Since(began)
		connectCPU = gw.cpu(b) - connectCPU
		<-connecting
		defer fleet.close()

		// Let a few heartbeat rounds and keep-alives pass, and the GC find its level.
		time.Sleep(15 * time.Second)
		rss1, heap1, go1 := gw.rss(b), gw.heapInuse(b), gw.goStats(b)
		cpu0, wall0 := gw.cpu(b), time.Now()
		udp0, beats0 := udpDatagrams(b), fleet.beats.Load()
		profiled := gw.profile(b, "cpu", fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(window.Seconds())))
		time.Sleep(window)
		cpu1, wall1 := gw.cpu(b), time.Now()
		udp1, beats1 := udpDatagrams(b), fleet.beats.Load()
		<-profiled
		<-gw.profile(b, "heap", "/debug/pprof/heap")
		<-gw.profile(b, "goroutine", "/debug/pprof/goroutine")
		up := fleet.up()
		if up != n {
			b.Errorf("%d of %d agents were still connected after the window", up, n)
		}

		b.ReportMetric(float64(n), "agents")
		b.ReportMetric(float64(rss1-rss0)/float64(n)/1024, "rss_KiB/agent")
		if heap0 >= 0 && heap1 >= 0 {
			b.ReportMetric(float64(heap1-heap0)/float64(n)/1024, "heap_KiB/agent")
		}
		if go0.goroutines >= 0 && go1.goroutines >= 0 {
			b.ReportMetric(float64(go1.goroutines-go0.goroutines)/float64(n), "goroutines/agent")
			b.ReportMetric(float64(go1.stackInuse-go0.stackInuse)/float64(n)/1024, "stack_KiB/agent")
		}
		b.ReportMetric(100*(cpu1-cpu0).Seconds()/wall1.Sub(wall0).Seconds(), "gw_cpu_%core")
		// The same CPU per agent: less sensitive to how busy the machine is than the
		// share of a core, though a busy machine still batches packets differently.
		b.ReportMetric(float64((cpu1-cpu0).Microseconds())/wall1.Sub(wall0).Seconds()/float64(n), "gw_cpu_us/agent/s")
		// Every datagram either side received in the window, per heartbeat the fleet sent:
		// 2 is the floor (the heartbeat and its acknowledgement); more means pings or
		// acknowledgements of acknowledgements. The count is the host's (loopback carries
		// both sides), so other UDP traffic on the machine inflates it.
		if beats := beats1 - beats0; beats > 0 {
			b.ReportMetric(float64(udp1-udp0)/float64(beats), "udp_datagrams/heartbeat")
		}
		b.ReportMetric(enrolled.Seconds(), "enroll_s")
		b.ReportMetric(connected.Seconds(), "connect_s")
		b.ReportMetric(float64(connectCPU.Microseconds())/1000/float64(n), "gw_cpu_ms/connect")
		b.ReportMetric(float64(fleet.beats.Load()), "heartbeats_sent")
		b.ReportMetric(float64(fleet.retries.Load()), "dial_retries")
		gw.stop(b)
	}
}

// gwProc is the agent-gateway binary running against a fresh database.
type gwProc struct {
	env    *tenantstest.Env
	cmd    *exec.Cmd
	admin  string // admin API base URL (/metrics, the CA)
	agents string // agents' address: QUIC and HTTPS enrollment
	caPool *x509.CertPool
	log    *lockedBuffer
	// exited closes when the process has exited and its output is collected.
	exited chan struct{}
	// debug is the profiling endpoint's base URL, when STREAMSPACE_BENCH_PROFILE is set.
	debug, profileDir string
}

// lockedBuffer collects the gateway's output, written by exec's copier while the
// benchmark may read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startGatewayProcess builds cmd/agent-gateway and runs it on loopback with production
// defaults, beside a stub identity answering token validation and JWKS.
func startGatewayProcess(b *testing.B) *gwProc {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "agent-gateway")
	if out, err := exec.Command("go", "build", "-o", bin, "streamspace.dev/services/agent-gateway/cmd/agent-gateway").CombinedOutput(); err != nil {
		b.Fatalf("building agent-gateway: %v\n%s", err, out)
	}
	env := tenantstest.New(b)
	tn, _ := env.Tenant(b, "fleet")
	signer := authtest.NewSigner(b)
	var tokens atomic.Int64
	idsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case auth.JWKSPath:
			_, _ = w.Write(signer.JWKS())
		case "/api/v1/agents/enroll/validate":
			var req struct {
				Token string `json:"token"`
			}
			_ = json.NewDecoder(r.Body).Decode(&req)
			// Every token names its agent; a real identity would also spend it.
			id := tokens.Add(1)
			_ = json.NewEncoder(w).Encode(gateway.Enrollment{Tenant: tn.ID, TokenID: fmt.Sprint(id), Name: req.Token})
		default:
			http.NotFound(w, r)
		}
	})}
	il, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = idsrv.Serve(il) }()
	b.Cleanup(func() { _ = idsrv.Close() })
	identityURL := "http://" + il.Addr().String()

	adminAddr, agentAddr := freeAddr(b), freeUDPTCPAddr(b)
	g := &gwProc{env: env, admin: "http://" + adminAddr, agents: agentAddr, log: &lockedBuffer{}}
	// The stub also stands in for the sessions service, which only browser streams ask.
	g.cmd = exec.Command(bin, "--database-url", env.URL, "--listen", adminAddr, "--agent-listen", agentAddr,
		"--kek", testKEK, "--identity-url", identityURL, "--sessions-url", identityURL, "--jwks-url", identityURL+auth.JWKSPath, "--log-level", cmp.Or(os.Getenv("STREAMSPACE_BENCH_LOG_LEVEL"), "warn"))
	if dir := os.Getenv("STREAMSPACE_BENCH_PROFILE"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		debugAddr := freeAddr(b)
		g.debug, g.profileDir = "http://"+debugAddr, dir
		g.cmd.Args = append(g.cmd.Args, "--debug-listen", debugAddr)
	}
	// Runtime settings for the gateway alone (GOGC, GOMEMLIMIT), not the load generator.
	if extra := strings.Fields(os.Getenv("STREAMSPACE_BENCH_GATEWAY_ENV")); len(extra) > 0 {
		g.cmd.Env = append(os.Environ(), extra...)
	}
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	if err := g.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { g.stop(b) })
	g.exited = make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(g.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-g.exited:
			b.Fatalf("agent-gateway exited before it was ready:\n%s", g.log)
		default:
		}
		resp, err := http.Get(g.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent-gateway not ready within 60 s:\n%s", g.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get(g.admin + gateway.CAPath)
	if err != nil {
		b.Fatal(err)
	}
	caPEM, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	g.caPool = x509.NewCertPool()
	if !g.caPool.AppendCertsFromPEM(caPEM) {
		b.Fatalf("no CA at %s: %s", gateway.CAPath, caPEM)
	}
	return g
}

func (g *gwProc) stop(b *testing.B) {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
	}
}

// profile saves the gateway's profile at path (under its debug endpoint) as
// DIR/<agents>-<name>.pprof when profiling is on; the channel closes when it is written.
func (g *gwProc) profile(b *testing.B, name, path string) <-chan struct{} {
	b.Helper()
	done := make(chan struct{})
	if g.debug == "" {
		close(done)
		return done
	}
	file := filepath.Join(g.profileDir, fmt.Sprintf("%d-%s.pprof", benchenv.Int(b, "STREAMSPACE_BENCH_AGENTS", 10000), name))
	go func() {
		defer close(done)
		resp, err := http.Get(g.debug + path)
		if err != nil {
			b.Errorf("profile %s: %v", name, err)
			return
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err == nil {
			err = os.WriteFile(file, raw, 0o644)
		}
		if err != nil {
			b.Errorf("profile %s: %v", name, err)
		}
	}()
	return done
}

// tail returns the end of the gateway's log.
func (g *gwProc) tail() string {
	s := g.log.String()
	return s[max(0, len(s)-12000):]
}

// rss is the gateway's resident set in bytes, from /proc.
func (g *gwProc) rss(b *testing.B) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", g.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// cpu is the gateway's user+system CPU time so far, from /proc (clock ticks of 1/100 s,
// the Linux default USER_HZ).
func (g *gwProc) cpu(b *testing.B) time.Duration {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", g.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name may hold spaces; the fields after it are fixed.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// udpDatagrams is the host's count of UDP datagrams received (InDatagrams in
// /proc/net/snmp).
func udpDatagrams(b *testing.B) int64 {
	b.Helper()
	raw, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		b.Fatal(err)
	}
	var names []string
	for line := range strings.Lines(string(raw)) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = f
			continue
		}
		for i, name := range names {
			if name == "InDatagrams" && i < len(f) {
				n, err := strconv.ParseInt(f[i], 10, 64)
				if err != nil {
					b.Fatalf("/proc/net/snmp: %v", err)
				}
				return n
			}
		}
	}
	b.Fatal("/proc/net/snmp has no Udp InDatagrams")
	return 0
}

// heapInuse is go_memstats_heap_inuse_bytes from the gateway's /metrics, or -1 when it
// does not export the Go collector.
func (g *gwProc) heapInuse(b *testing.B) int64 { return g.metric(b, "go_memstats_heap_inuse_bytes") }

// goStats is what the gateway's Go collector says about its goroutines and their stacks,
// or -1s when it does not export it.
type goStats struct{ goroutines, stackInuse int64 }

func (g *gwProc) goStats(b *testing.B) goStats {
	return goStats{goroutines: g.metric(b, "go_goroutines"), stackInuse: g.metric(b, "go_memstats_stack_inuse_bytes")}
}

// metric is the value of the unlabelled metric name on the gateway's /metrics, or -1.
func (g *gwProc) metric(b *testing.B, name string) int64 {
	b.Helper()
	resp, err := http.Get(g.admin + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return int64(v)
		}
	}
	return -1
}

// simAgent is one enrolled identity of the fleet.
type simAgent struct {
	id   wire.AgentID
	cert tls.Certificate
}

// enrollMany enrolls n agents through the gateway's HTTPS endpoint, each with its own
// key and CSR, over a shared keep-alive client.
func enrollMany(b *testing.B, g *gwProc, n int) []simAgent {
	b.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32,
		TLSClientConfig: &tls.Config{RootCAs: g.caPool, ServerName: "localhost"}}}
	out := make([]simAgent, n)
	var wg sync.WaitGroup
	var failed atomic.Value
	next := atomic.Int64{}
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil {
					return
				}
				a, err := enrollOne(client, g, fmt.Sprintf("agent-%d", i))
				if err != nil {
					failed.Store(err)
					return
				}
				out[i] = a
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("enrolling: %v\ngateway log (tail):\n%s", err, g.tail())
	}
	return out
}

func enrollOne(client *http.Client, g *gwProc, name string) (simAgent, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return simAgent{}, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return simAgent{}, err
	}
	body, _ := json.Marshal(gateway.EnrollRequest{Token: name, CSRPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	resp, err := client.Post("https://"+g.agents+gateway.EnrollPath, "application/json", bytes.NewReader(body))
	if err != nil {
		return simAgent{}, err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return simAgent{}, fmt.Errorf("enroll %s: %d %s", name, resp.StatusCode, rb)
	}
	var er gateway.EnrollResponse
	if err := json.Unmarshal(rb, &er); err != nil {
		return simAgent{}, err
	}
	block, _ := pem.Decode([]byte(er.CertificatePEM))
	if block == nil {
		return simAgent{}, fmt.Errorf("no certificate for %s", name)
	}
	return simAgent{id: er.AgentID, cert: tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}}, nil
}

// fleet is the connected simulated agents.
type fleet struct {
	transports []*quic.Transport
	conns      []*quic.Conn
	beats      atomic.Int64
	// retries counts dials tried again after a failure, as the real agent's supervisor
	// does (a lost handshake packet on a loaded machine, or the gateway's "unavailable").
	retries atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
	// keepAlive and idleTimeout are the agents' QUIC liveness settings: the real agent's
	// defaults (agent/tunnel: 12 s and 30 s) unless STREAMSPACE_BENCH_AGENT_KEEPALIVE_S and
	// STREAMSPACE_BENCH_AGENT_IDLE_S (seconds) say otherwise.
	keepAlive, idleTimeout time.Duration
}

// connectMany connects every agent: handshake, Hello, HelloAck, then a goroutine that
// heartbeats and one that answers pushes. Agents share UDP sockets, agentsPerSocket each.
func connectMany(b *testing.B, g *gwProc, agents []simAgent) *fleet {
	b.Helper()
	f := &fleet{conns: make([]*quic.Conn, len(agents)), stop: make(chan struct{}),
		keepAlive:   time.Duration(benchenv.Int(b, "STREAMSPACE_BENCH_AGENT_KEEPALIVE_S", 12)) * time.Second,
		idleTimeout: time.Duration(benchenv.Int(b, "STREAMSPACE_BENCH_AGENT_IDLE_S", 30)) * time.Second}
	for range (len(agents) + agentsPerSocket - 1) / agentsPerSocket {
		uc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			b.Fatal(err)
		}
		f.transports = append(f.transports, &quic.Transport{Conn: uc})
	}
	raddr, err := net.ResolveUDPAddr("udp", g.agents)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed atomic.Value
	next := atomic.Int64{}
	// About as many handshakes in flight as the gateway's database pool can serve.
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(agents) || failed.Load() != nil {
					return
				}
				c, err := f.dial(f.transports[i/agentsPerSocket], raddr, g.caPool, agents[i])
				if err != nil {
					failed.Store(fmt.Errorf("agent %d: %w", i, err))
					return
				}
				f.conns[i] = c
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		// Where the gateway's goroutines wait, when profiling: the cause of a stuck handshake.
		<-g.profile(b, "failed-goroutines", "/debug/pprof/goroutine?debug=2")
		f.close()
		b.Fatalf("connecting: %v\ngateway log (tail):\n%s", err, g.tail())
	}
	return f
}

// dialAttempts is how often an agent of the fleet tries before the benchmark counts it as
// given up.
const dialAttempts = 5

// dial connects an agent, trying again after a failed attempt with the real agent's
// doubling backoff from one second; a refusal (a permanent wire error) is not retried.
func (f *fleet) dial(tr *quic.Transport, raddr net.Addr, roots *x509.CertPool, a simAgent) (*quic.Conn, error) {
	delay := time.Second
	for attempt := 1; ; attempt++ {
		c, err := f.connect(tr, raddr, roots, a)
		var we *wire.Error
		if err == nil || attempt == dialAttempts || (errors.As(err, &we) && we.Permanent) {
			return c, err
		}
		f.retries.Add(1)
		time.Sleep(delay)
		if errors.As(err, &we) && we.RetryAfter > delay {
			delay = we.RetryAfter
		}
		delay *= 2
	}
}

func (f *fleet) connect(tr *quic.Transport, raddr net.Addr, roots *x509.CertPool, a simAgent) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conf := &tls.Config{Certificates: []tls.Certificate{a.cert}, RootCAs: roots, ServerName: "localhost",
		NextProtos: wire.SupportedALPNs(), MinVersion: tls.VersionTLS13}
	conn, err := tr.Dial(ctx, raddr, conf, &quic.Config{KeepAlivePeriod: f.keepAlive, MaxIdleTimeout: f.idleTimeout})
	if err != nil {
		return nil, err
	}
	up := false
	defer func() {
		if !up {
			_ = conn.CloseWithError(0, "hello failed")
		}
	}()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	w, r := wire.NewWriter(st), wire.NewReader(st, 0)
	capacity := wire.Capacity{CPUAllocatableMillis: 8000, MemoryAllocatableBytes: 16 << 30, MaxSessions: 20}
	if err := w.WritePreamble(wire.StreamControl); err != nil {
		return nil, err
	}
	if err := w.Write(&wire.Hello{AgentID: a.id, AgentVersion: "bench", Protocol: wire.Current, Capacity: capacity}); err != nil {
		return nil, err
	}
	if _, err := r.ReadPreamble(); err != nil {
		return nil, err
	}
	m, err := r.Read()
	if err != nil {
		return nil, err
	}
	ack, ok := m.(*wire.HelloAck)
	if !ok {
		if we, isErr := m.(*wire.Error); isErr {
			return nil, we
		}
		return nil, fmt.Errorf("got %T, want hello_ack", m)
	}
	interval := ack.HeartbeatInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	up = true
	f.wg.Go(func() {
		// Drain the control stream so the gateway's writes never block on us.
		for {
			if _, err := r.Read(); err != nil {
				return
			}
		}
	})
	f.wg.Go(func() {
		// The first beat at a random point of the interval, as a fleet started over
		// time would be; then every interval. Capacity goes out as the real agent sends
		// it (wire.CapacityReporter): an idle agent's never changes, so under 1.2 every
		// wire.CapacityRefresh-th beat carries it, and every beat under 1.0 and 1.1.
		report := wire.NewCapacityReporter(ack.Accepted, &capacity)
		var jitter [8]byte
		_, _ = rand.Read(jitter[:])
		t := time.NewTimer(time.Duration(uint64(jitter[0])<<8|uint64(jitter[1])) * interval / 65536)
		defer t.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-f.stop:
				return
			case <-conn.Context().Done():
				return
			case <-t.C:
			}
			if err := w.Write(&wire.Heartbeat{Seq: seq, Capacity: report.Next(&capacity)}); err != nil {
				return
			}
			f.beats.Add(1)
			t.Reset(interval)
		}
	})
	f.wg.Go(func() {
		for {
			ps, err := conn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go answerPush(ps)
		}
	})
	return conn, nil
}

// answerPush reads a desired-state push to its end and acknowledges every assignment in
// it, as the real agent does after applying.
func answerPush(st *quic.Stream) {
	defer st.Close()
	r := wire.NewReader(st, 0)
	if _, err := r.ReadPreamble(); err != nil {
		return
	}
	var acks []wire.Assignment
	for {
		m, err := r.Read()
		if err != nil {
			break
		}
		if ds, ok := m.(*wire.DesiredState); ok {
			acks = append(acks, ds.Assignments...)
		}
	}
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamDesiredState); err != nil {
		return
	}
	for _, a := range acks {
		_ = w.Write(&wire.Ack{SessionID: a.SessionID, Generation: a.Generation})
	}
}

// up counts connections still open.
func (f *fleet) up() int {
	n := 0
	for _, c := range f.conns {
		if c != nil && c.Context().Err() == nil {
			n++
		}
	}
	return n
}

func (f *fleet) close() {
	select {
	case <-f.stop:
		return
	default:
	}
	close(f.stop)
	for _, c := range f.conns {
		if c != nil {
			_ = c.CloseWithError(0, "bench over")
		}
	}
	f.wg.Wait()
	for _, tr := range f.transports {
		_ = tr.Close()
	}
}

func freeAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// freeUDPTCPAddr finds a port free for both UDP and TCP: the gateway serves QUIC and
// HTTPS enrollment on the same one.
func freeUDPTCPAddr(b *testing.B) string {
	b.Helper()
	for range 50 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		addr := u.LocalAddr().String()
		t, err := net.Listen("tcp", addr)
		u.Close()
		if err == nil {
			t.Close()
			return addr
		}
	}
	b.Fatal("no port free for both UDP and TCP")
	return ""
}
