// Command agent-gateway runs StreamSpace's agent-gateway service on its own: the agents'
// QUIC tunnels and HTTPS enrollment on --agent-listen, the admin API on --listen. See
// --help for its settings.
//
// Memory: an idle tunnel keeps about 35 KiB of live heap (mostly quic-go's and
// crypto/tls's per-connection state) and about 25 KiB of goroutine stacks; with Go's
// default GOGC=100 the heap is allowed to grow to twice its live size before a
// collection, which is most of the rest of the resident set (about 100 KiB per idle
// agent, measured with 2,000 agents). The Go runtime honours GOGC and GOMEMLIMIT from
// the environment: GOGC=50 measured about 91 KiB per agent for roughly a fifth more CPU,
// and a GOMEMLIMIT somewhat above the expected fleet's need (plus the container's
// headroom) lets the heap grow freely until it nears the limit and collect harder only
// then. With 10,000 agents on a busy machine, quic-go's 20 KiB GSO send buffers, held
// while its send path fell behind, were another 28 KiB per agent;
// QUIC_GO_DISABLE_GSO=true made them 1.4 KiB packet buffers (113 KiB RSS per agent
// became 107, and 90 with GOGC=50 as well), at a cost to bulk session streams that was
// not measured. The UDP
// socket's receive buffer matters at scale: quic-go asks for 7 MiB and,
// without CAP_NET_ADMIN, gets at most net.core.rmem_max (it logs when it cannot), so
// raise that sysctl on gateway hosts.
package main

import (
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"time"

	"streamspace.dev/libs/config"
	"streamspace.dev/libs/server"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
)

func main() {
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
