package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestHelpListsEveryServicesSettings checks that the all-in-one binary registers the
// flags of every service that has settings: a service built with its defaults only,
// because its Config.Register was never called, would silently ignore them.
func TestHelpListsEveryServicesSettings(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"serve", "dev"} {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if code := run([]string{cmd, "--help"}, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			for _, flag := range []string{
				"-scheduler-strategy", "-scheduler-agent-grace", "-scheduler-interval", "-scheduler-replica",
				"-session-progress-timeout", "-session-timer-interval",
				"-agent-listen", "-db-max-conns",
			} {
				if !strings.Contains(stderr.String(), flag) {
					t.Errorf("streamspace %s --help does not list %s", cmd, flag)
				}
			}
		})
	}
}
