package clientaddr

import (
	"net/http"
	"testing"
)

func TestOf(t *testing.T) {
	t.Parallel()
	lb, err := Parse("10.0.0.0/8, 192.168.1.7")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		proxies Proxies
		peer    string
		xff     []string
		want    string
	}{
		{"no proxies: the peer, whatever the header says", nil, "203.0.113.5:4000", []string{"1.2.3.4"}, "203.0.113.5"},
		{"untrusted peer cannot choose its address", lb, "203.0.113.5:4000", []string{"10.1.1.1"}, "203.0.113.5"},
		{"trusted proxy: the address it forwarded for", lb, "10.0.0.2:4000", []string{"198.51.100.9"}, "198.51.100.9"},
		{"client-written entries left of the first untrusted hop are ignored", lb, "10.0.0.2:4000",
			[]string{"6.6.6.6, 198.51.100.9"}, "198.51.100.9"},
		{"a chain of trusted proxies", lb, "10.0.0.2:4000", []string{"198.51.100.9, 192.168.1.7", "10.9.9.9"}, "198.51.100.9"},
		{"spoofing a proxy's address from the client side does not help", lb, "10.0.0.2:4000",
			[]string{"6.6.6.6, 10.5.5.5, 198.51.100.9"}, "198.51.100.9"},
		{"every hop trusted: the leftmost", lb, "10.0.0.2:4000", []string{"10.3.3.3"}, "10.3.3.3"},
		{"garbage stops at the proxy", lb, "10.0.0.2:4000", []string{"not-an-ip"}, "10.0.0.2"},
		{"no header: the proxy itself", lb, "10.0.0.2:4000", nil, "10.0.0.2"},
		{"IPv6 peer and mapped forms", mustPrefix(t, "::ffff:10.0.0.0/104"), "[::ffff:10.0.0.2]:1", []string{"2001:db8::1"}, "2001:db8::1"},
		{"no port on the peer", lb, "203.0.113.5", nil, "203.0.113.5"},
	}
	for _, tc := range cases {
		r := &http.Request{RemoteAddr: tc.peer, Header: http.Header{}}
		for _, v := range tc.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		if got := tc.proxies.Of(r); got != tc.want {
			t.Errorf("%s: Of = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestParseRefusesGarbage(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0.1/8/2"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted it", bad)
		}
	}
	if ps, err := Parse(" "); err != nil || len(ps) != 0 {
		t.Errorf("Parse of blank = %v, %v", ps, err)
	}
}

func mustPrefix(t *testing.T, s string) Proxies {
	t.Helper()
	ps, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}
