package catalog_test

import (
	"slices"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/catalog"
)

func validSpec() catalog.Spec {
	s := catalog.Spec{
		DisplayName: "Firefox", Image: "lscr.io/linuxserver/firefox:latest",
		Resources: catalog.Resources{Requests: catalog.ResourceList{CPU: "500m", Memory: "1Gi"}, Limits: catalog.ResourceList{CPU: "2", Memory: "2Gi"}},
		Home:      &catalog.Home{MountPath: "/config", Size: "10Gi"},
		Ports:     []catalog.Port{{Name: "vnc", Port: 3000, Stream: catalog.StreamVNCWeb}, {Name: "audio", Port: 4713, Protocol: catalog.UDP}},
		AgentTags: []string{"gpu=nvidia", "region=eu-west-1"},
	}
	s.Normalize()
	return s
}

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		tname catalog.TemplateName
		edit  func(*catalog.Spec)
		field string // "" means valid
	}{
		{"valid", "firefox", func(*catalog.Spec) {}, ""},
		{"name too short", "f", func(*catalog.Spec) {}, "name"},
		{"name with underscore", "fire_fox", func(*catalog.Spec) {}, "name"},
		{"name with double hyphen", "fire--fox", func(*catalog.Spec) {}, "name"},
		{"no display name", "x1", func(s *catalog.Spec) { s.DisplayName = "" }, "display_name"},
		{"control character", "x1", func(s *catalog.Spec) { s.DisplayName = "a\x00b" }, "display_name"},
		{"icon not http", "x1", func(s *catalog.Spec) { s.IconURL = "javascript:alert(1)" }, "icon_url"},
		{"tag upper case", "x1", func(s *catalog.Spec) { s.Tags = []string{"Web"} }, "tags/0"},
		{"image with space", "x1", func(s *catalog.Spec) { s.Image = "a b" }, "image"},
		{"env name", "x1", func(s *catalog.Spec) { s.Env = []catalog.EnvVar{{Name: "1X"}} }, "env/0/name"},
		{"env twice", "x1", func(s *catalog.Spec) { s.Env = []catalog.EnvVar{{Name: "X"}, {Name: "X"}} }, "env/1/name"},
		{"port 0", "x1", func(s *catalog.Spec) { s.Ports[1].Port = 0 }, "ports/1/port"},
		{"port 65536", "x1", func(s *catalog.Spec) { s.Ports[1].Port = 65536 }, "ports/1/port"},
		{"protocol", "x1", func(s *catalog.Spec) { s.Ports[1].Protocol = "SCTP" }, "ports/1/protocol"},
		{"two streaming ports", "x1", func(s *catalog.Spec) { s.Ports[1].Stream = catalog.StreamRFB; s.Ports[1].Protocol = catalog.TCP }, "ports/1/stream"},
		{"no streaming port", "x1", func(s *catalog.Spec) { s.Ports[0].Stream = "" }, "ports"},
		{"unknown stream kind", "x1", func(s *catalog.Spec) { s.Ports[0].Stream = "spice" }, "ports/0/stream"},
		{"UDP stream", "x1", func(s *catalog.Spec) { s.Ports[0].Protocol = catalog.UDP }, "ports/0/protocol"},
		{"duplicate port names", "x1", func(s *catalog.Spec) { s.Ports[1].Name = "vnc" }, "ports/1/name"},
		{"numeric port name", "x1", func(s *catalog.Spec) { s.Ports[1].Name = "123" }, "ports/1/name"},
		{"bad cpu", "x1", func(s *catalog.Spec) { s.Resources.Limits.CPU = "two" }, "resources/limits/cpu"},
		{"bad memory", "x1", func(s *catalog.Spec) { s.Resources.Requests.Memory = "512m" }, "resources/requests/memory"},
		{"request over limit", "x1", func(s *catalog.Spec) { s.Resources.Requests.Memory = "4Gi" }, "resources/requests/memory"},
		{"home relative", "x1", func(s *catalog.Spec) { s.Home.MountPath = "config" }, "home/mount_path"},
		{"home size", "x1", func(s *catalog.Spec) { s.Home.Size = "big" }, "home/size"},
		{"volume on home", "x1", func(s *catalog.Spec) { s.Volumes = []catalog.Volume{{Name: "v", MountPath: "/config"}} }, "volumes/0/mount_path"},
		{"capability", "x1", func(s *catalog.Spec) { s.Capabilities = []catalog.Capability{"Root"} }, "capabilities/0"},
		{"agent tag without value", "x1", func(s *catalog.Spec) { s.AgentTags = []string{"gpu"} }, "agent_tags/0"},
		{"agent tag key twice", "x1", func(s *catalog.Spec) { s.AgentTags = []string{"a=1", "a=2"} }, "agent_tags/1"},
		{"idle timeout too short", "x1", func(s *catalog.Spec) { s.IdleTimeoutSeconds = 5 }, "idle_timeout_seconds"},
		{"max duration too long", "x1", func(s *catalog.Spec) { s.MaxDurationSeconds = 1 << 30 }, "max_duration_seconds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := validSpec()
			tc.edit(&s)
			err := catalog.Validate(tc.tname, s)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("valid spec refused: %v", err)
				}
				return
			}
			e, ok := apperr.As(err)
			if !ok || e.Code != apperr.Invalid || !slices.ContainsFunc(e.Fields, func(f apperr.FieldError) bool { return f.Field == tc.field }) {
				t.Fatalf("got %v, want an invalid error naming %s", err, tc.field)
			}
		})
	}
}

func TestSeedIsValid(t *testing.T) {
	t.Parallel()
	ts, err := catalog.SeedTemplates()
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) < 7 {
		t.Fatalf("%d seed templates", len(ts))
	}
}

func TestIfMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		header  string
		scope   catalog.Scope
		version int64
		present bool
		code    apperr.Code
	}{
		{"", catalog.ScopeTenant, 0, false, ""},
		{"*", catalog.ScopeTenant, 0, true, ""},
		{`"tenant-3"`, catalog.ScopeTenant, 3, true, ""},
		{`"platform-3"`, catalog.ScopePlatform, 3, true, ""},
		{`"platform-3"`, catalog.ScopeTenant, 0, true, apperr.PreconditionFailed},
		{`W/"tenant-3"`, catalog.ScopeTenant, 0, true, apperr.PreconditionFailed},
		{`"tenant-03"`, catalog.ScopeTenant, 0, true, apperr.PreconditionFailed},
		{`"tenant-3", "tenant-4"`, catalog.ScopeTenant, 0, true, apperr.PreconditionFailed},
		{`tenant-3`, catalog.ScopeTenant, 0, true, apperr.PreconditionFailed},
	}
	for _, tc := range tests {
		pre, present, err := catalog.ParseIfMatch(tc.header, tc.scope)
		if pre.Version != tc.version || present != tc.present || apperr.CodeOf(err) != tc.code {
			t.Errorf("ParseIfMatch(%q, %s) = %+v %v %v", tc.header, tc.scope, pre, present, err)
		}
	}
}
