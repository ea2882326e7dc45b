package gateway

import (
	"strings"
	"testing"
)

// A replica derives its advertised address only where it is unambiguous: a bound
// loopback peer listener.
func TestLoopbackURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ listen, want string }{
		{"127.0.0.1:8080", "https://127.0.0.1:8080"},
		{"localhost:8080", "https://localhost:8080"},
		{"[::1]:8080", "https://[::1]:8080"},
		{"127.0.0.1:0", ""},
		{"0.0.0.0:8080", ""},
		{":8080", ""},
		{"10.1.2.3:8080", ""},
		{"gateway.internal:8080", ""},
		{"garbage", ""},
	} {
		if got := loopbackURL(c.listen); got != c.want {
			t.Errorf("loopbackURL(%q) = %q, want %q", c.listen, got, c.want)
		}
	}
}

// The advertised URL is the peer listener's https address: an http:// one (the HTTP
// API, where replicas forwarded in clear text before) is refused with a message that
// says what to advertise instead.
func TestValidateAdvertiseURL(t *testing.T) {
	t.Parallel()
	base := Config{KEK: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
	for _, c := range []struct {
		url  string
		ok   bool
		says string
	}{
		{"", true, ""},
		{"https://10.1.2.3:8444", true, ""},
		{"https://gw-0.gateway.svc:8444/", true, ""},
		{"https://[fd00::1]:8444", true, ""},
		{"http://10.1.2.3:8080", false, "mutual TLS to --peer-listen"},
		{"http://127.0.0.1:8080", false, "mutual TLS to --peer-listen"},
		{"10.1.2.3:8444", false, "want https://host:port"},
		{"ftp://10.1.2.3", false, "want https://host:port"},
		{"https://", false, "want https://host:port"},
		{"https://10.1.2.3:8444/api", false, "without a path"},
		{"https://user:pw@10.1.2.3:8444", false, "without a path"},
		{"https://10.1.2.3:8444?x=1", false, "without a path"},
	} {
		cfg := base
		cfg.AdvertiseURL = c.url
		err := cfg.Validate()
		if (err == nil) != c.ok || (err != nil && (!strings.Contains(err.Error(), "--advertise-url") || !strings.Contains(err.Error(), c.says))) {
			t.Errorf("Validate with %q: %v, want ok=%v (%s)", c.url, err, c.ok, c.says)
		}
	}
}

func TestValidatePeerListen(t *testing.T) {
	t.Parallel()
	base := Config{KEK: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
	if got := base.WithDefaults().PeerListen; got != DefaultPeerListen {
		t.Errorf("default --peer-listen %q, want %q", got, DefaultPeerListen)
	}
	for _, c := range []struct {
		listen string
		ok     bool
	}{
		{"", true},
		{"127.0.0.1:0", true},
		{":8444", true},
		{"0.0.0.0:8444", true},
		{"[::]:8444", true},
		{"8444", false},
		{"10.1.2.3", false},
	} {
		cfg := base
		cfg.PeerListen = c.listen
		err := cfg.Validate()
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), "--peer-listen")) {
			t.Errorf("Validate with --peer-listen %q: %v, want ok=%v", c.listen, err, c.ok)
		}
	}
}
