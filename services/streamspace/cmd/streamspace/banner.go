package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// printBanner tells the newcomer what runs, how to sign in, and a copy-paste sequence
// that creates a session and shows it go Running. Only curl, grep and cut: no jq.
func (st *devStack) printBanner(w io.Writer) {
	d, base := st.demo, st.base
	backend := "memory backend: simulated sessions, --no-cluster"
	if st.cluster != nil {
		backend = fmt.Sprintf("Kubernetes backend, namespace %s of the local cluster", demoNamespace)
	}
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	p("")
	p("StreamSpace is running.")
	p("")
	p("  API and portal:  %s   (health: /healthz, /readyz; metrics: /metrics)", base)
	p("  Demo tenant:     %s", d.Tenant)
	p("  Demo user:       %s", d.Email)
	p("  Password:        %s   (kept in %s)", d.Password, filepath.Join(st.dataDir, "demo.json"))
	p("  Agent:           %s, %s (%s)", st.agentOK.Name, st.agentOK.State, backend)
	if st.cluster != nil {
		p("  Local cluster:   export KUBECONFIG=%s   (kwok: pods are simulated; every session's", st.cluster.Kubeconfig())
		p("                   stream is a local stub at %s)", st.stub.Addr())
	}
	p("")
	p("Try it: sign in, start a Firefox session from the catalog, watch it go Running:")
	p("")
	p("# --- streamspace dev: try it ---")
	p("TOKEN=$(curl -s %s/api/v1/auth/login -H 'Content-Type: application/json' \\", base)
	p("  -d '{\"tenant\":\"%s\",\"email\":\"%s\",\"password\":\"%s\"}' | grep -o '\"access_token\":\"[^\"]*\"' | cut -d'\"' -f4)", d.Tenant, d.Email, d.Password)
	p("SESSION=$(curl -s %s/api/v1/sessions -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\", base)
	p("  -d '{\"template\":\"firefox\"}' | grep -o '\"id\":\"[^\"]*\"' | head -1 | cut -d'\"' -f4)")
	p("for i in $(seq 60); do")
	p("  PHASE=$(curl -s %s/api/v1/sessions/$SESSION -H \"Authorization: Bearer $TOKEN\" | grep -o '\"phase\":\"[^\"]*\"' | cut -d'\"' -f4)", base)
	p("  echo \"session $SESSION: $PHASE\"; [ \"$PHASE\" = Running ] && break; sleep 1")
	p("done")
	p("# --- end ---")
	p("")
	p("Ctrl-C stops everything but PostgreSQL (kept for the next start); `task clean` resets all local state.")
	_, _ = io.WriteString(w, b.String())
}
