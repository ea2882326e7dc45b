// Command agent-gateway runs StreamSpace's agent-gateway service on its own: the agents'
// QUIC tunnels and HTTPS enrollment on --agent-listen, the admin API on --listen. See
// --help for its settings.
//
// Memory: an idle tunnel keeps about 37 KiB of live heap (mostly quic-go's and
// crypto/tls's per-connection state: handshake buffers, AEADs, the peer certificate) and
// about 25 KiB of goroutine stacks. With Go's default GOGC=100 the heap may grow to twice
// its live size before a collection, which made 104-109 KiB of resident memory per idle
// agent at 10,000 agents. This command therefore collects at GOGC=50 unless GOGC is set
// in the environment: 91 KiB per agent, and at idle, with heartbeats the only traffic,
// no CPU cost that rose above the run-to-run noise (26.6% of a core against 22.5-29.4%
// at GOGC=100, both before the quic-go patch in libs/third_party/quic-go; with it the
// default runs at 15.5-16.5%; BenchmarkScaleIdleAgents). GOMEMLIMIT is honoured as
// usual. On a busy machine quic-go's 20 KiB GSO send buffers, held while its send path
// falls behind, can add tens of KiB per agent; QUIC_GO_DISABLE_GSO=true makes them
// 1.4 KiB packet buffers, at a cost to bulk session streams that was not measured. The
// UDP socket's receive buffer matters at scale: quic-go asks for 7 MiB and, without
// CAP_NET_ADMIN, gets at most net.core.rmem_max (it logs when it cannot), so raise that
// sysctl on gateway hosts.
package main

import (
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime/debug"
	"time"

	"streamspace.dev/libs/config"
	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
)

// gcPercent is the collector's target when GOGC is not set (see the package doc).
const gcPercent = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	var cfg gateway.Config
	var debugListen string
	server.MainFlags(gateway.Name, func(fs *flag.FlagSet) {
		cfg.Register(fs, true)
		config.String(fs, &debugListen, "debug-listen", "STREAMSPACE_DEBUG_LISTEN", "",
			"address of a Go profiling endpoint (/debug/pprof/); off when empty. It has no authentication: bind it to loopback")
	}, func(d server.Deps) ([]server.Module, error) {
		cfg = cfg.WithDefaults()
		if cfg.IdentityURL == "" {
			return nil, errors.New("--identity-url (or STREAMSPACE_IDENTITY_URL) is required")
		}
		if cfg.SessionsURL == "" {
			return nil, errors.New("--sessions-url (or STREAMSPACE_SESSIONS_URL) is required")
		}
		if debugListen != "" {
			serveDebug(debugListen, d.Logger)
		}
		store := postgres.New(d.DB, postgres.Thresholds{DegradedAfter: cfg.DegradedAfter, OfflineAfter: cfg.OfflineAfter})
		m, err := gateway.New(d, cfg, store, gateway.NewHTTPEnroller(cfg.IdentityURL, nil),
			gateway.NewHTTPSessions(cfg.SessionsURL, nil))
		if err != nil {
			return nil, err
		}
		return []server.Module{m}, nil
	})
}

// serveDebug serves Go's profiles on addr, apart from the admin API so that it is never
// exposed by accident with it. It lives as long as the process.
func serveDebug(addr string, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.ListenAndServe(); err != nil {
			log.Error("debug listener failed", "addr", addr, "err", err)
		}
	}()
}
