// Package manifest reads StreamSpace v1 Template manifests into catalog templates.
//
// A manifest stream is YAML with one or more documents, each a Kubernetes-style object:
//
//	apiVersion: stream.space/v1alpha1        # or stream.streamspace.io/v1alpha1
//	kind: Template
//	metadata: {name: firefox-browser}
//	spec: {displayName: …, baseImage: …, ports: […], kasmvnc: {enabled: true, port: 3000}, …}
//
// Parse is pure: no I/O, no clock, no database. It splits the stream into documents
// itself, so one malformed document is rejected on its own and never hides the others,
// and it enforces size limits before YAML sees the bytes: MaxStreamBytes in all,
// MaxDocumentBytes per document, MaxDocuments documents, and MaxNodes nodes per document
// after alias expansion — the last stops "billion laughs" alias bombs with a clear error
// instead of relying only on the YAML library's ratio heuristic.
//
// # Mapping
//
//   - metadata.name is the template name; displayName, description, category, icon
//     (icon_url) and tags (lower-cased) are copied; baseImage is the image.
//   - defaultResources takes the nested form {requests: {cpu, memory}, limits: {…}} and the
//     flat form {cpu, memory}; a flat value sets both the request and the limit (v1 gave a
//     session exactly what it asked for), and fills in only what the nested form left unset.
//   - ports (containerPort, protocol default TCP) and env are copied; capabilities too.
//   - volumeMounts: the mount named user-home (or home) becomes the persistent home, of
//     DefaultHomeSize; the others become scratch volumes.
//   - The streaming port: when a kasmvnc block is present and enabled, its port (default
//     3000) carries a vnc-web stream — v1 ignored this block and streamed from the wrong
//     port. Otherwise an enabled vnc block's port (default 5900) carries rfb, or vnc-web
//     when its protocol is websocket or http. Otherwise the port named http, https or web,
//     or the only port, carries a plain http stream. A stream port the ports list lacks
//     is added to it.
//
// Unknown fields are ignored: v1's schema grew over time and a field we do not map must not
// block an import. Every mapped template is then checked by catalog.Validate.
package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"go.yaml.in/yaml/v3"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/catalog"
)

// Limits of an import.
const (
	// MaxStreamBytes bounds a whole manifest stream (a request body or one file).
	MaxStreamBytes = 1 << 20
	// MaxDocumentBytes bounds one YAML document.
	MaxDocumentBytes = 256 << 10
	// MaxDocuments bounds the documents of one stream.
	MaxDocuments = 100
	// MaxNodes bounds the YAML nodes of one document after alias expansion.
	MaxNodes = 20000
	// MaxDepth bounds the nesting of one document.
	MaxDepth = 64
)

// DefaultHomeSize is the size of a home volume imported from v1, which had no size field.
const DefaultHomeSize = "10Gi"

// The API groups a v1 Template may carry (the project was renamed once).
var apiVersions = map[string]bool{"stream.space/v1alpha1": true, "stream.streamspace.io/v1alpha1": true}

// Document is one parsed document of a stream.
type Document = catalog.ManifestDocument

// Parse splits data into documents and maps each to a template. It fails as a whole
// (invalid) only when the stream is too large or holds too many documents; every other
// problem rejects just its document.
func Parse(data []byte) ([]Document, error) {
	if len(data) > MaxStreamBytes {
		return nil, apperr.New(apperr.Invalid, "manifest stream is %d bytes; the limit is %d", len(data), MaxStreamBytes)
	}
	chunks := split(data)
	if len(chunks) > MaxDocuments {
		return nil, apperr.New(apperr.Invalid, "manifest stream holds %d documents; the limit is %d", len(chunks), MaxDocuments)
	}
	docs := make([]Document, len(chunks))
	for i, c := range chunks {
		d := Document{Index: i + 1, Line: c.line}
		d.Name, d.Spec, d.Err = parseDocument(c.text)
		docs[i] = d
	}
	return docs, nil
}

type chunk struct {
	text []byte
	line int
}

// split cuts a stream at its document markers. In YAML a line starting with "---" or "..."
// followed by a blank (or the line's end) is always a document boundary — content may not
// begin that way — so a line scan finds exactly the documents a YAML parser would, and lets
// each be parsed, limited and rejected on its own. Chunks holding nothing but blank lines,
// comments, directives and markers are dropped.
func split(data []byte) []chunk {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var (
		out   []chunk
		cur   []byte
		start int
		has   bool // cur holds content, not just comments, directives and a marker
	)
	add := func(l []byte, line int) {
		if cur == nil {
			start = line
		}
		cur = append(cur, l...)
	}
	for line := 1; len(data) > 0; line++ {
		var l []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l, data = data[:i+1], data[i+1:]
		} else {
			l, data = data, nil
		}
		bare := bytes.TrimRight(l, "\r\n")
		switch {
		case marker(bare, "---"):
			if has {
				out = append(out, chunk{text: cur, line: start})
				cur, has = nil, false
			} else {
				// An empty document: keep only its directives, which belong to this one.
				cur = directives(cur)
			}
			add(l, line)
			// Content may follow the marker on its line ("--- !!map", "--- {a: 1}").
			if rest := strings.TrimSpace(string(bare[3:])); rest != "" && !strings.HasPrefix(rest, "#") {
				has = true
			}
		case marker(bare, "..."):
			if has {
				add(l, line)
				out = append(out, chunk{text: cur, line: start})
			}
			cur, has = nil, false
		default:
			add(l, line)
			t := strings.TrimSpace(string(bare))
			if t != "" && !strings.HasPrefix(t, "#") && !(bare[0] == '%' && !has) {
				has = true
			}
		}
	}
	if has {
		out = append(out, chunk{text: cur, line: start})
	}
	return out
}

// directives keeps the directive lines ("%YAML 1.2") of a chunk, or nil.
func directives(b []byte) []byte {
	var out []byte
	for l := range bytes.Lines(b) {
		if len(l) > 0 && l[0] == '%' {
			out = append(out, l...)
		}
	}
	return out
}

func marker(line []byte, m string) bool {
	return bytes.HasPrefix(line, []byte(m)) && (len(line) == 3 || line[3] == ' ' || line[3] == '\t')
}

// reject builds a document's rejection.
func reject(format string, args ...any) error {
	return apperr.New(apperr.Invalid, format, args...)
}

func parseDocument(text []byte) (catalog.TemplateName, catalog.Spec, error) {
	if len(text) > MaxDocumentBytes {
		return "", catalog.Spec{}, reject("document is %d bytes; the limit is %d", len(text), MaxDocumentBytes)
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(text))
	if err := dec.Decode(&root); err != nil {
		return "", catalog.Spec{}, reject("document is not valid YAML: %s", yamlMessage(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		// split cut at every marker, so a second document here means a construct it
		// could not see; refuse rather than guess.
		return "", catalog.Spec{}, reject("document could not be separated from the next one")
	}
	if err := checkSize(&root); err != nil {
		return "", catalog.Spec{}, err
	}
	var m v1Template
	if err := root.Decode(&m); err != nil {
		return "", catalog.Spec{}, reject("document does not fit the v1 Template schema: %s", yamlMessage(err))
	}
	return m.toTemplate()
}

// yamlMessage strips the library's "yaml: " prefix; the rest speaks of the user's document.
func yamlMessage(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "yaml: "), "unmarshal errors:\n  ")
}

// checkSize counts the nodes of the document as decoding would see them — every alias
// expanded — and its depth, without expanding anything: each node's expanded size is
// computed once and reused wherever an alias points at it.
func checkSize(root *yaml.Node) error {
	sizes := map[*yaml.Node]int{}
	var count func(n *yaml.Node, depth int) (int, error)
	count = func(n *yaml.Node, depth int) (int, error) {
		if depth > MaxDepth {
			return 0, reject("document nests deeper than %d levels", MaxDepth)
		}
		if n.Kind == yaml.AliasNode {
			if n.Alias == nil {
				return 0, reject("document has an alias without an anchor")
			}
			n = n.Alias
		}
		if s, ok := sizes[n]; ok {
			if s < 0 {
				return 0, reject("document has an anchor that contains itself")
			}
			return s, nil
		}
		sizes[n] = -1 // in progress: a cycle comes back here
		total := 1
		for _, c := range n.Content {
			s, err := count(c, depth+1)
			if err != nil {
				return 0, err
			}
			total += s
			if total > MaxNodes {
				return 0, reject("document expands to more than %d YAML nodes through its aliases (an alias bomb?)", MaxNodes)
			}
		}
		sizes[n] = total
		return total, nil
	}
	_, err := count(root, 0)
	return err
}

// v1Template is the part of a v1 Template manifest we read.
type v1Template struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec v1Spec `yaml:"spec"`
}

type v1Spec struct {
	DisplayName      string      `yaml:"displayName"`
	Description      string      `yaml:"description"`
	Category         string      `yaml:"category"`
	Icon             string      `yaml:"icon"`
	BaseImage        string      `yaml:"baseImage"`
	DefaultResources v1Resources `yaml:"defaultResources"`
	Ports            []v1Port    `yaml:"ports"`
	Env              []v1Env     `yaml:"env"`
	VolumeMounts     []v1Mount   `yaml:"volumeMounts"`
	Capabilities     []string    `yaml:"capabilities"`
	Tags             []string    `yaml:"tags"`
	VNC              *v1VNC      `yaml:"vnc"`
	KasmVNC          *v1VNC      `yaml:"kasmvnc"`
}

type v1List struct {
	CPU    string `yaml:"cpu"`
	Memory string `yaml:"memory"`
}

type v1Resources struct {
	v1List   `yaml:",inline"`
	Requests v1List `yaml:"requests"`
	Limits   v1List `yaml:"limits"`
}

type v1Port struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
	Protocol      string `yaml:"protocol"`
}

type v1Env struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

type v1Mount struct {
	Name      string `yaml:"name"`
	MountPath string `yaml:"mountPath"`
}

type v1VNC struct {
	Enabled  *bool  `yaml:"enabled"`
	Port     int    `yaml:"port"`
	Protocol string `yaml:"protocol"`
}

func (v *v1VNC) on() bool { return v != nil && (v.Enabled == nil || *v.Enabled) }

func (m v1Template) toTemplate() (catalog.TemplateName, catalog.Spec, error) {
	if m.Kind != "Template" {
		return "", catalog.Spec{}, reject("kind %q is not Template", m.Kind)
	}
	if !apiVersions[m.APIVersion] {
		return "", catalog.Spec{}, reject("apiVersion %q is not stream.space/v1alpha1 or stream.streamspace.io/v1alpha1", m.APIVersion)
	}
	name := catalog.TemplateName(m.Metadata.Name)
	s := m.Spec
	spec := catalog.Spec{
		DisplayName: s.DisplayName, Description: s.Description, Category: s.Category,
		IconURL: s.Icon, Image: s.BaseImage,
	}
	for _, t := range s.Tags {
		spec.Tags = append(spec.Tags, strings.ToLower(strings.TrimSpace(t)))
	}
	r := s.DefaultResources
	spec.Resources = catalog.Resources{
		Requests: catalog.ResourceList{CPU: or(r.Requests.CPU, r.CPU), Memory: or(r.Requests.Memory, r.Memory)},
		Limits:   catalog.ResourceList{CPU: or(r.Limits.CPU, r.CPU), Memory: or(r.Limits.Memory, r.Memory)},
	}
	for _, p := range s.Ports {
		spec.Ports = append(spec.Ports, catalog.Port{Name: p.Name, Port: p.ContainerPort,
			Protocol: catalog.Protocol(strings.ToUpper(p.Protocol))})
	}
	for _, e := range s.Env {
		spec.Env = append(spec.Env, catalog.EnvVar{Name: e.Name, Value: e.Value})
	}
	for _, vm := range s.VolumeMounts {
		if (vm.Name == "user-home" || vm.Name == "home") && spec.Home == nil {
			spec.Home = &catalog.Home{MountPath: vm.MountPath, Size: DefaultHomeSize}
			continue
		}
		spec.Volumes = append(spec.Volumes, catalog.Volume{Name: vm.Name, MountPath: vm.MountPath})
	}
	for _, c := range s.Capabilities {
		spec.Capabilities = append(spec.Capabilities, catalog.Capability(c))
	}
	if err := markStream(&spec, s); err != nil {
		return name, catalog.Spec{}, err
	}
	spec.Normalize()
	if err := catalog.Validate(name, spec); err != nil {
		return name, catalog.Spec{}, err
	}
	return name, spec, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// markStream picks the streaming port (see the package documentation).
func markStream(spec *catalog.Spec, s v1Spec) error {
	var (
		port int
		kind catalog.StreamKind
		name string
	)
	switch {
	case s.KasmVNC.on():
		port, kind, name = s.KasmVNC.Port, catalog.StreamVNCWeb, "kasmvnc"
		if port == 0 {
			port = 3000
		}
	case s.VNC.on():
		port, kind, name = s.VNC.Port, catalog.StreamRFB, "vnc"
		if port == 0 {
			port = 5900
		}
		switch strings.ToLower(s.VNC.Protocol) {
		case "websocket", "http", "https":
			kind = catalog.StreamVNCWeb
		}
	default:
		idx := -1
		for i, p := range spec.Ports {
			if p.Name == "http" || p.Name == "https" || p.Name == "web" {
				idx = i
				break
			}
		}
		if idx < 0 && len(spec.Ports) == 1 {
			idx = 0
		}
		if idx < 0 {
			return apperr.Validation("cannot tell which port carries the stream",
				apperr.Field("ports", "with no enabled vnc or kasmvnc block, name the streaming port http (or list only one port)"))
		}
		spec.Ports[idx].Stream = catalog.StreamHTTP
		return nil
	}
	for i, p := range spec.Ports {
		if p.Port == port && (p.Protocol == "" || p.Protocol == catalog.TCP) {
			spec.Ports[i].Stream = kind
			return nil
		}
	}
	// v1 pods exposed the VNC port whether or not ports listed it.
	for _, p := range spec.Ports {
		if p.Name == name {
			name += "-stream"
			break
		}
	}
	spec.Ports = append(spec.Ports, catalog.Port{Name: name, Port: port, Protocol: catalog.TCP, Stream: kind})
	return nil
}

// Errors returns the field errors of a rejected document, if any.
func Errors(err error) []apperr.FieldError {
	if e, ok := apperr.As(err); ok {
		return e.Fields
	}
	return nil
}

// Describe returns a rejection's one-line reason.
func Describe(err error) string {
	if e, ok := apperr.As(err); ok {
		return e.Message
	}
	return fmt.Sprint(err)
}
