package gateway

import (
	"strings"
	"testing"
)

// A replica derives its advertised address only where it is unambiguous: a loopback
// listener with a fixed port.
func TestLoopbackURL(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ listen, want string }{
		{"127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"localhost:8080", "http://localhost:8080"},
		{"[::1]:8080", "http://[::1]:8080"},
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

func TestValidateAdvertiseURL(t *testing.T) {
	t.Parallel()
	base := Config{KEK: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
	for _, c := range []struct {
		url string
		ok  bool
	}{
		{"", true},
		{"http://10.1.2.3:8080", true},
		{"https://gw-0.gateway.svc:8443/", true},
		{"10.1.2.3:8080", false},
		{"ftp://10.1.2.3", false},
		{"http://", false},
		{"http://10.1.2.3:8080/api", false},
		{"http://user:pw@10.1.2.3:8080", false},
		{"http://10.1.2.3:8080?x=1", false},
	} {
		cfg := base
		cfg.AdvertiseURL = c.url
		err := cfg.Validate()
		if (err == nil) != c.ok || (err != nil && !strings.Contains(err.Error(), "--advertise-url")) {
			t.Errorf("Validate with %q: %v, want ok=%v", c.url, err, c.ok)
		}
	}
}
