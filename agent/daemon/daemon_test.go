package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"streamspace.dev/agent/tunnel"
	"streamspace.dev/libs/config"
)

func parse(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	var cfg Config
	fs := FlagSet(&cfg)
	fs.SetOutput(io.Discard)
	if err := config.ParseEnv(fs, args, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	base := []string{"-gateway", "gw.example.com:443", "-state-dir", "/tmp/x"}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"token from env with enroll URL", base, map[string]string{"STREAMSPACE_ENROLLMENT_TOKEN": "t", "STREAMSPACE_ENROLL_URL": "https://gw.example.com/api/v1/agents/enroll"}, ""},
		{"mounted cert", append(base, "-cert-file", "c", "-key-file", "k"), nil, ""},
		{"no gateway", []string{"-state-dir", "/x"}, nil, "-gateway is required"},
		{"gateway without port", []string{"-gateway", "gw.example.com"}, nil, "not host:port"},
		{"token without URL", append(base, "-token", "t"), nil, "needs -enroll-url"},
		{"token twice", append(base, "-token", "t", "-token-file", "f", "-enroll-url", "https://x/e"), nil, "not both"},
		{"plain http enrollment", append(base, "-token", "t", "-enroll-url", "http://gw.example.com/e"), nil, "must be https"},
		{"plain http on loopback", append(base, "-token", "t", "-enroll-url", "http://127.0.0.1:8080/e"), nil, ""},
		{"cert without key", append(base, "-cert-file", "c"), nil, "go together"},
		{"keepalive near conntrack timeout", append(base, "-keepalive", "25s", "-idle-timeout", "60s"), nil, "half the UDP conntrack timeout"},
		{"idle timeout below keepalive", append(base, "-keepalive", "5s", "-idle-timeout", "6s"), nil, "twice -keepalive"},
		{"bad log level", append(base, "-log-level", "loud"), nil, "-log-level"},
		{"unknown backend", append(base, "-backend", "docker"), nil, "not known"},
		{"dev endpoint", append(base, "-backend", "kubernetes", "-dev-endpoint", "127.0.0.1:5900"), nil, ""},
		{"dev endpoint on memory", append(base, "-dev-endpoint", "127.0.0.1:5900"), nil, "kubernetes only"},
		{"dev endpoint without port", append(base, "-backend", "kubernetes", "-dev-endpoint", "127.0.0.1"), nil, "not host:port"},
		{"health listen", append(base, "-health-listen", ":8081"), map[string]string{"STREAMSPACE_HEALTH_LISTEN": "bad"}, ""},
		{"health listen from env", base, map[string]string{"STREAMSPACE_HEALTH_LISTEN": "8081"}, "-health-listen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse(t, tt.args, tt.env)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigDefaultsAndTags(t *testing.T) {
	t.Parallel()
	cfg, err := parse(t, []string{"-gateway", "gw:443", "-tags", " gpu, ,eu-west "}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.KeepAlive != 12*time.Second || cfg.IdleTimeout != 30*time.Second || cfg.BackoffInitial != 100*time.Millisecond || cfg.BackoffMax != 30*time.Second {
		t.Fatalf("defaults = %+v", cfg)
	}
	if got := cfg.TagList(); len(got) != 2 || got[0] != "gpu" || got[1] != "eu-west" {
		t.Fatalf("tags = %q", got)
	}
}

func TestHelpExitsZeroAndListsEnv(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if code := Main([]string{"--help"}, &out); code != ExitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(out.String(), "STREAMSPACE_ENROLLMENT_TOKEN_FILE") {
		t.Fatalf("help lacks env names:\n%s", out.String())
	}
}

func TestBadConfigExitsUsage(t *testing.T) {
	t.Parallel()
	if code := Main([]string{"-gateway", ""}, io.Discard); code != ExitUsage {
		t.Fatalf("exit %d, want %d", code, ExitUsage)
	}
}

func TestNoCredentialIsPermanent(t *testing.T) {
	t.Parallel()
	cfg, err := parse(t, []string{"-gateway", "127.0.0.1:1", "-state-dir", t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var perm *tunnel.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("Run = %v, want a permanent error", err)
	}
}
