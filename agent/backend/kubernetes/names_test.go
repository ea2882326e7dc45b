package kubernetes

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"streamspace.dev/libs/wire"
)

var dns1035 = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)

func TestNamesNeverCollideAndAreValid(t *testing.T) {
	t.Parallel()
	ids := []wire.SessionID{
		"ses_aaaaaaaaaaaaaaaaaaaa", "ses_aaaaaaaaaaaaaaaaaaab", // the control plane's shape
		"ses-aaaaaaaaaaaaaaaaaaaa", // would map onto the first if "-" were kept
		"SES_AAAAAAAAAAAAAAAAAAAA", "a", "a_", "_a", "x.y", "ünïcode", wire.SessionID(strings.Repeat("z", 200)),
		wire.SessionID(hashed("ses_aaaaaaaaaaaaaaaaaaaa")), // a plain id shaped like a digest
	}
	seen := map[string]wire.SessionID{}
	for _, id := range ids {
		n := namesFor(id)
		for _, name := range []string{n.root(), n.deployment(), n.service(), n.secret(), n.pvc()} {
			if len(name) > 63 || !dns1035.MatchString(name) {
				t.Errorf("%q: name %q is not a DNS-1035 label", id, name)
			}
		}
		if !labelValue.MatchString(n.label) {
			t.Errorf("%q: label %q is not a label value", id, n.label)
		}
		if other, ok := seen[n.key]; ok {
			t.Errorf("%q and %q share key %q", id, other, n.key)
		}
		seen[n.key] = id
		if namesFor(id) != n {
			t.Errorf("%q: names are not stable", id)
		}
	}
	if got := namesFor("ses_abcdefghijklmnopqrst").key; got != "ss-ses-abcdefghijklmnopqrst" {
		t.Errorf("plain key %q", got)
	}
}

func TestParseSpec(t *testing.T) {
	t.Parallel()
	good := map[string]any{
		"image": "img:1", "cpu_millis": 500, "memory_bytes": 1 << 30,
		"resources": map[string]any{"limits": map[string]string{"memory": "2Gi"}},
		"home":      map[string]string{"mount_path": "/home/u", "size": "5Gi"},
		"ports":     []map[string]any{{"port": 5901, "stream": "rfb"}, {"name": "audio", "port": 4713}},
		"extra":     "ignored: newer control planes may add fields",
	}
	mutate := func(f func(m map[string]any)) json.RawMessage {
		b, _ := json.Marshal(good)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		f(m)
		out, _ := json.Marshal(m)
		return out
	}
	r, err := parseSpec(mutate(func(map[string]any) {}))
	if err != nil {
		t.Fatal(err)
	}
	cpu, mem := r.requests["cpu"], r.limits["memory"]
	if r.stream.Port != 5901 || portName(r.stream) != "stream" || cpu.MilliValue() != 500 ||
		mem.Value() != 2<<30 || r.homeSize.Value() != 5<<30 {
		t.Errorf("resolved %+v", r)
	}
	for name, tc := range map[string]struct {
		raw  json.RawMessage
		want string
	}{
		"empty":     {nil, "no spec"},
		"not json":  {json.RawMessage(`{`), "decoding"},
		"no image":  {mutate(func(m map[string]any) { delete(m, "image") }), "image"},
		"no stream": {mutate(func(m map[string]any) { m["ports"] = []map[string]any{{"port": 1}} }), "exactly one port"},
		"two streams": {mutate(func(m map[string]any) {
			m["ports"] = []map[string]any{{"port": 1, "stream": "a"}, {"port": 2, "stream": "b"}}
		}), "exactly one port"},
		"bad port":      {mutate(func(m map[string]any) { m["ports"] = []map[string]any{{"port": 70000, "stream": "a"}} }), "out of range"},
		"bad quantity":  {mutate(func(m map[string]any) { m["resources"] = map[string]any{"limits": map[string]string{"cpu": "lots"}} }), "quantity"},
		"relative home": {mutate(func(m map[string]any) { m["home"] = map[string]string{"mount_path": "home"} }), "absolute"},
		"reserved env":  {mutate(func(m map[string]any) { m["env"] = []map[string]string{{"name": "VNC_PASSWORD", "value": "x"}} }), "env[0]"},
		"udp stream":    {mutate(func(m map[string]any) { m["ports"] = []map[string]any{{"port": 1, "stream": "a", "protocol": "UDP"}} }), "TCP"},
	} {
		_, err := parseSpec(tc.raw)
		we, ok := err.(*wire.Error)
		if !ok || we.Code != wire.CodeInvalid || !we.Permanent || !strings.Contains(we.Message, tc.want) {
			t.Errorf("%s: %v, want invalid mentioning %q", name, err, tc.want)
		}
	}
}
