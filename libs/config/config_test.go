package config

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

type testConfig struct {
	Listen  string
	Timeout time.Duration
	Workers int
	Debug   bool
}

func newFlagSet(cfg *testConfig) (*flag.FlagSet, *bytes.Buffer) {
	var out bytes.Buffer
	fs := flag.NewFlagSet("svc", flag.ContinueOnError)
	fs.SetOutput(&out)
	String(fs, &cfg.Listen, "listen", "SVC_LISTEN", ":8080", "address to serve HTTP on")
	Duration(fs, &cfg.Timeout, "timeout", "SVC_TIMEOUT", 5*time.Second, "request timeout")
	Int(fs, &cfg.Workers, "workers", "SVC_WORKERS", 4, "worker count")
	Bool(fs, &cfg.Debug, "debug", "SVC_DEBUG", false, "log at debug level")
	return fs, &out
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestPrecedenceFlagOverEnvOverDefault(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want testConfig
	}{
		{"defaults", nil, nil, testConfig{":8080", 5 * time.Second, 4, false}},
		{"env", nil, map[string]string{
			"SVC_LISTEN": ":9000", "SVC_TIMEOUT": "1m", "SVC_WORKERS": "8", "SVC_DEBUG": "true",
		}, testConfig{":9000", time.Minute, 8, true}},
		{"flags beat env", []string{"-listen=:7000", "--timeout", "2s", "-workers", "0x10", "-debug=false"},
			map[string]string{"SVC_LISTEN": ":9000", "SVC_TIMEOUT": "1m", "SVC_WORKERS": "8", "SVC_DEBUG": "1"},
			testConfig{":7000", 2 * time.Second, 16, false}},
		{"bare bool flag", []string{"-debug"}, nil, testConfig{":8080", 5 * time.Second, 4, true}},
		{"empty env is unset", nil, map[string]string{"SVC_LISTEN": "", "SVC_WORKERS": ""},
			testConfig{":8080", 5 * time.Second, 4, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var cfg testConfig
			fs, _ := newFlagSet(&cfg)
			if err := ParseEnv(fs, tc.args, env(tc.env)); err != nil {
				t.Fatal(err)
			}
			if cfg != tc.want {
				t.Fatalf("got %+v, want %+v", cfg, tc.want)
			}
		})
	}
}

func TestBadValuesAreErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		args     []string
		env      map[string]string
		mentions []string
	}{
		{"bad flag duration", []string{"-timeout=soon"}, nil, []string{"-timeout", "duration"}},
		{"unknown flag", []string{"-nope"}, nil, []string{"nope"}},
		{"bad env int", nil, map[string]string{"SVC_WORKERS": "many"}, []string{"SVC_WORKERS", "-workers", "integer"}},
		{"bad env bool", nil, map[string]string{"SVC_DEBUG": "yes please"}, []string{"SVC_DEBUG", "-debug"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var cfg testConfig
			fs, _ := newFlagSet(&cfg)
			err := ParseEnv(fs, tc.args, env(tc.env))
			if err == nil {
				t.Fatal("no error")
			}
			// Messages are for people; check they name what to fix.
			for _, m := range tc.mentions {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

func TestHelpListsEnvAndDefaults(t *testing.T) {
	t.Parallel()
	var cfg testConfig
	fs, out := newFlagSet(&cfg)
	fs.String("plain", "x", "a flag without env")
	err := ParseEnv(fs, []string{"--help"}, env(nil))
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v, want flag.ErrHelp", err)
	}
	help := out.String()
	for _, want := range []string{
		"Usage of svc:",
		"  -listen string\n    \taddress to serve HTTP on (env SVC_LISTEN, default \":8080\")",
		"  -timeout duration\n    \trequest timeout (env SVC_TIMEOUT, default 5s)",
		"  -workers int\n    \tworker count (env SVC_WORKERS, default 4)",
		"  -debug\n    \tlog at debug level (env SVC_DEBUG, default false)",
		"  -plain string\n    \ta flag without env (default \"x\")",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
}

// The flag package's own PrintDefaults must keep working on our values.
func TestStdlibPrintDefaultsDoesNotPanic(t *testing.T) {
	t.Parallel()
	var cfg testConfig
	fs, out := newFlagSet(&cfg)
	fs.PrintDefaults()
	if strings.Contains(out.String(), "panic") {
		t.Fatalf("PrintDefaults:\n%s", out.String())
	}
}

func TestParseReadsProcessEnvironment(t *testing.T) {
	t.Setenv("SVC_WORKERS", "12")
	var cfg testConfig
	fs, _ := newFlagSet(&cfg)
	if err := Parse(fs, nil); err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 12 {
		t.Fatalf("workers %d", cfg.Workers)
	}
}
