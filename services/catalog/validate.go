package catalog

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
	"unicode/utf8"

	"streamspace.dev/libs/apperr"
)

// Limits of the template model. They keep one template small enough to list hundreds at
// once and to render in a portal card.
const (
	MaxDisplayName  = 100
	MaxDescription  = 2000
	MaxCategory     = 60
	MaxURL          = 2048
	MaxImage        = 512
	MaxTags         = 20
	MaxEnv          = 100
	MaxEnvValue     = 4096
	MaxPorts        = 20
	MaxVolumes      = 20
	MaxAgentTags    = 20
	MaxIdleTimeout  = 7 * 24 * 3600
	MaxDuration     = 30 * 24 * 3600
	MinIdleTimeout  = 60
	MinMaxDuration  = 300
	maxNameLength   = 63
	maxPortName     = 15
	maxAgentTagPart = 63
)

var (
	namePattern     = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
	tagPattern      = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,39}$`)
	envPattern      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)
	portNamePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	agentKeyPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?$`)
	agentValPattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$|^$`)
	// imagePattern is deliberately loose (registries differ) but refuses whitespace,
	// control characters and shell metacharacters.
	imagePattern = regexp.MustCompile(`^[a-z0-9][a-zA-Z0-9._/:@-]*$`)
)

var capabilities = map[Capability]bool{CapNetwork: true, CapAudio: true, CapClipboard: true, CapUSB: true, CapPrinting: true}

// ParseName validates s as a template name.
func ParseName(s string) (TemplateName, error) {
	if reason := nameReason(s); reason != "" {
		return "", apperr.Validation("invalid template name", apperr.Field("name", reason))
	}
	return TemplateName(s), nil
}

func nameReason(s string) string {
	switch {
	case len(s) < 2 || len(s) > maxNameLength:
		return fmt.Sprintf("must be 2 to %d characters long", maxNameLength)
	case !namePattern.MatchString(s):
		return "must be lowercase letters, digits and single hyphens, starting with a letter"
	}
	return ""
}

// Normalize fills defaults that carry no choice: a port's protocol is TCP unless said,
// and absent lists become empty ones so stored and served documents look the same.
func (s *Spec) Normalize() {
	for i := range s.Ports {
		if s.Ports[i].Protocol == "" {
			s.Ports[i].Protocol = TCP
		}
	}
	if s.Tags == nil {
		s.Tags = []string{}
	}
	if s.Env == nil {
		s.Env = []EnvVar{}
	}
	if s.Volumes == nil {
		s.Volumes = []Volume{}
	}
	if s.Ports == nil {
		s.Ports = []Port{}
	}
	if s.Capabilities == nil {
		s.Capabilities = []Capability{}
	}
	if s.AgentTags == nil {
		s.AgentTags = []string{}
	}
}

// Validate checks a template (name and spec) and returns an invalid error listing every
// offending field, or nil.
func Validate(name TemplateName, s Spec) error {
	var v validator
	if r := nameReason(string(name)); r != "" {
		v.add("name", "%s", r)
	}
	v.spec(s)
	if len(v.fields) > 0 {
		return apperr.Validation("invalid template", v.fields...)
	}
	return nil
}

// ValidateSpec is Validate without the name.
func ValidateSpec(s Spec) error {
	var v validator
	v.spec(s)
	if len(v.fields) > 0 {
		return apperr.Validation("invalid template", v.fields...)
	}
	return nil
}

type validator struct{ fields []apperr.FieldError }

func (v *validator) add(field, format string, args ...any) {
	v.fields = append(v.fields, apperr.Field(field, fmt.Sprintf(format, args...)))
}

func (v *validator) text(field, s string, min, max int) {
	n := utf8.RuneCountInString(s)
	switch {
	case !utf8.ValidString(s):
		v.add(field, "must be valid UTF-8")
	case n < min:
		v.add(field, "is required")
	case n > max:
		v.add(field, "must be at most %d characters", max)
	case strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 && r != '\n' && r != '\t' }):
		v.add(field, "must not contain control characters")
	}
}

func (v *validator) spec(s Spec) {
	v.text("display_name", s.DisplayName, 1, MaxDisplayName)
	v.text("description", s.Description, 0, MaxDescription)
	v.text("category", s.Category, 0, MaxCategory)
	if s.IconURL != "" {
		u, err := url.Parse(s.IconURL)
		if len(s.IconURL) > MaxURL || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.add("icon_url", "must be an http or https URL of at most %d characters", MaxURL)
		}
	}
	v.tags(s.Tags)
	switch {
	case s.Image == "":
		v.add("image", "is required")
	case len(s.Image) > MaxImage || !imagePattern.MatchString(s.Image):
		v.add("image", "must be a container image reference such as lscr.io/linuxserver/firefox:latest")
	}
	v.env(s.Env)
	v.resources(s.Resources)
	if s.Home != nil {
		v.mountPath("home/mount_path", s.Home.MountPath)
		if _, err := ParseMemory(s.Home.Size); err != nil {
			v.add("home/size", "%v", err)
		}
	}
	v.volumes(s.Volumes, s.Home)
	v.ports(s.Ports)
	seen := map[Capability]bool{}
	for i, c := range s.Capabilities {
		f := fmt.Sprintf("capabilities/%d", i)
		switch {
		case !capabilities[c]:
			v.add(f, "%q is not a capability; want Network, Audio, Clipboard, USB or Printing", c)
		case seen[c]:
			v.add(f, "%q is listed twice", c)
		}
		seen[c] = true
	}
	v.agentTags(s.AgentTags)
	if t := s.IdleTimeoutSeconds; t != 0 && (t < MinIdleTimeout || t > MaxIdleTimeout) {
		v.add("idle_timeout_seconds", "must be 0 (the tenant's default) or between %d and %d", MinIdleTimeout, MaxIdleTimeout)
	}
	if t := s.MaxDurationSeconds; t != 0 && (t < MinMaxDuration || t > MaxDuration) {
		v.add("max_duration_seconds", "must be 0 (the tenant's default) or between %d and %d", MinMaxDuration, MaxDuration)
	}
}

func (v *validator) tags(tags []string) {
	if len(tags) > MaxTags {
		v.add("tags", "must hold at most %d tags", MaxTags)
		return
	}
	seen := map[string]bool{}
	for i, t := range tags {
		f := fmt.Sprintf("tags/%d", i)
		switch {
		case !tagPattern.MatchString(t):
			v.add(f, "%q must be 1 to 40 lowercase letters, digits, dots, underscores or hyphens", t)
		case seen[t]:
			v.add(f, "%q is listed twice", t)
		}
		seen[t] = true
	}
}

func (v *validator) env(env []EnvVar) {
	if len(env) > MaxEnv {
		v.add("env", "must hold at most %d variables", MaxEnv)
		return
	}
	seen := map[string]bool{}
	for i, e := range env {
		switch {
		case !envPattern.MatchString(e.Name):
			v.add(fmt.Sprintf("env/%d/name", i), "%q is not an environment variable name", e.Name)
		case seen[e.Name]:
			v.add(fmt.Sprintf("env/%d/name", i), "%q is set twice", e.Name)
		}
		seen[e.Name] = true
		if len(e.Value) > MaxEnvValue || !utf8.ValidString(e.Value) || strings.ContainsRune(e.Value, 0) {
			v.add(fmt.Sprintf("env/%d/value", i), "must be valid UTF-8 of at most %d bytes without NUL", MaxEnvValue)
		}
	}
}

func (v *validator) resources(r Resources) {
	var cpu, mem [2]int64
	for i, l := range []struct {
		field string
		list  ResourceList
	}{{"resources/requests", r.Requests}, {"resources/limits", r.Limits}} {
		if l.list.CPU != "" {
			n, err := ParseCPU(l.list.CPU)
			if err != nil {
				v.add(l.field+"/cpu", "%v", err)
			}
			cpu[i] = n
		}
		if l.list.Memory != "" {
			n, err := ParseMemory(l.list.Memory)
			if err != nil {
				v.add(l.field+"/memory", "%v", err)
			}
			mem[i] = n
		}
	}
	// Kubernetes refuses a pod whose request exceeds its limit; say so now, not at launch.
	if cpu[0] > 0 && cpu[1] > 0 && cpu[0] > cpu[1] {
		v.add("resources/requests/cpu", "must not exceed the limit %s", r.Limits.CPU)
	}
	if mem[0] > 0 && mem[1] > 0 && mem[0] > mem[1] {
		v.add("resources/requests/memory", "must not exceed the limit %s", r.Limits.Memory)
	}
}

func (v *validator) mountPath(field, p string) {
	if p == "" || !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" || len(p) > 256 ||
		strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == ':' }) {
		v.add(field, "must be a clean absolute path other than / (at most 256 characters, no ':')")
	}
}

func (v *validator) volumes(vols []Volume, home *Home) {
	if len(vols) > MaxVolumes {
		v.add("volumes", "must hold at most %d volumes", MaxVolumes)
		return
	}
	names, paths := map[string]bool{"home": true}, map[string]bool{}
	if home != nil {
		paths[home.MountPath] = true
	}
	for i, vol := range vols {
		f := fmt.Sprintf("volumes/%d", i)
		switch {
		case len(vol.Name) > maxNameLength || !portNamePattern.MatchString(vol.Name):
			v.add(f+"/name", "%q must be a DNS label (lowercase letters, digits, hyphens)", vol.Name)
		case names[vol.Name]:
			v.add(f+"/name", "%q is used twice (\"home\" is reserved)", vol.Name)
		}
		names[vol.Name] = true
		v.mountPath(f+"/mount_path", vol.MountPath)
		if paths[vol.MountPath] {
			v.add(f+"/mount_path", "%q is mounted twice", vol.MountPath)
		}
		paths[vol.MountPath] = true
	}
}

func (v *validator) ports(ports []Port) {
	switch {
	case len(ports) == 0:
		v.add("ports", "must list at least the streaming port")
		return
	case len(ports) > MaxPorts:
		v.add("ports", "must hold at most %d ports", MaxPorts)
		return
	}
	names, numbers := map[string]bool{}, map[string]bool{}
	streaming := 0
	for i, p := range ports {
		f := fmt.Sprintf("ports/%d", i)
		switch {
		case len(p.Name) > maxPortName || !portNamePattern.MatchString(p.Name) || !strings.ContainsAny(p.Name, "abcdefghijklmnopqrstuvwxyz"):
			v.add(f+"/name", "%q must be an IANA service name: 1 to %d lowercase letters, digits and hyphens", p.Name, maxPortName)
		case names[p.Name]:
			v.add(f+"/name", "%q is used twice", p.Name)
		}
		names[p.Name] = true
		if p.Port < 1 || p.Port > 65535 {
			v.add(f+"/port", "%d is outside 1-65535", p.Port)
		}
		if p.Protocol != TCP && p.Protocol != UDP {
			v.add(f+"/protocol", "%q must be TCP or UDP", p.Protocol)
		}
		key := fmt.Sprintf("%d/%s", p.Port, p.Protocol)
		if numbers[key] {
			v.add(f+"/port", "%d/%s is listed twice", p.Port, p.Protocol)
		}
		numbers[key] = true
		switch p.Stream {
		case "":
		case StreamVNCWeb, StreamRFB, StreamHTTP:
			streaming++
			if streaming > 1 {
				v.add(f+"/stream", "only one port may carry the stream")
			}
			if p.Protocol == UDP {
				v.add(f+"/protocol", "the streaming port must be TCP")
			}
		default:
			v.add(f+"/stream", "%q must be vnc-web, rfb or http", p.Stream)
		}
	}
	if streaming == 0 {
		v.add("ports", "exactly one port must carry the stream (set its stream to vnc-web, rfb or http)")
	}
}

func (v *validator) agentTags(tags []string) {
	if len(tags) > MaxAgentTags {
		v.add("agent_tags", "must hold at most %d tags", MaxAgentTags)
		return
	}
	seen := map[string]bool{}
	for i, t := range tags {
		f := fmt.Sprintf("agent_tags/%d", i)
		k, val, ok := strings.Cut(t, "=")
		switch {
		case !ok || len(k) > maxAgentTagPart || len(val) > maxAgentTagPart ||
			!agentKeyPattern.MatchString(k) || !agentValPattern.MatchString(val):
			v.add(f, "%q must be key=value (key: lowercase letters, digits, '.', '_', '/', '-'; value: letters, digits, '.', '_', '-')", t)
		case seen[k]:
			v.add(f, "key %q is required twice", k)
		}
		seen[k] = true
	}
}
