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

// TestDevOnlyFlags checks that the local cluster and demo agent settings exist on `dev`
// only: `serve` runs against a real deployment and starts neither.
func TestDevOnlyFlags(t *testing.T) {
	t.Parallel()
	for cmd, want := range map[string]bool{"dev": true, "serve": false} {
		var stdout, stderr bytes.Buffer
		if code := run([]string{cmd, "--help"}, &stdout, &stderr); code != 0 {
			t.Fatalf("%s: exit %d: %s", cmd, code, stderr.String())
		}
		for _, flag := range []string{"-no-cluster", "-agent-bin", "-data-dir"} {
			if got := strings.Contains(stderr.String(), flag); got != want {
				t.Errorf("streamspace %s --help lists %s: %v, want %v", cmd, flag, got, want)
			}
		}
	}
}
