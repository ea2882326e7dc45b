// Command streamspace-agent is the StreamSpace agent that customers install in their own
// cluster. It enrolls once with a one-time token, then keeps an outbound-only QUIC tunnel
// to the control plane's gateway, applies the sessions it is given and reports their
// status. See --help for its settings; every one can also come from the environment.
package main

import (
	"os"

	"streamspace.dev/agent/daemon"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:], os.Stderr))
}
