package manifest_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/manifest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden.json from the parser's output")

// golden is what a golden file records of one document.
type golden struct {
	Document int                  `json:"document"`
	Line     int                  `json:"line"`
	Name     catalog.TemplateName `json:"name,omitempty"`
	Spec     *catalog.Spec        `json:"spec,omitempty"`
	Rejected string               `json:"rejected,omitempty"`
	Errors   []apperr.FieldError  `json:"errors,omitempty"`
}

func TestGolden(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			docs, err := manifest.Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]golden, len(docs))
			for i, d := range docs {
				g := golden{Document: d.Index, Line: d.Line, Name: d.Name}
				if d.Err != nil {
					if !apperr.IsCode(d.Err, apperr.Invalid) {
						t.Errorf("document %d: rejection %v is not invalid", d.Index, d.Err)
					}
					g.Rejected, g.Errors = manifest.Describe(d.Err), manifest.Errors(d.Err)
				} else {
					spec := d.Spec
					g.Spec = &spec
				}
				out[i] = g
			}
			got, err := json.MarshalIndent(out, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := strings.TrimSuffix(f, ".yaml") + ".golden.json"
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the parser's output (go test ./manifest -update to accept):\n%s", path, got)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	doc := func(name string) string {
		return fmt.Sprintf("apiVersion: stream.space/v1alpha1\nkind: Template\nmetadata: {name: %s}\nspec:\n  displayName: X\n  baseImage: example.org/x:1\n  ports: [{name: http, containerPort: 80}]\n", name)
	}
	tests := []struct {
		name       string
		data       string
		streamErr  bool
		docs       int
		rejections []string // substring per document; "" means accepted
	}{
		{name: "stream over 1 MiB", data: strings.Repeat("#", manifest.MaxStreamBytes+1), streamErr: true},
		{name: "101 documents", data: strings.Repeat(doc("a1")+"---\n", manifest.MaxDocuments+1), streamErr: true},
		{name: "100 documents", data: strings.Repeat(doc("a1")+"---\n", manifest.MaxDocuments), docs: manifest.MaxDocuments},
		{name: "one document over 256 KiB beside a good one",
			data:       doc("big") + "  description: " + strings.Repeat("x", manifest.MaxDocumentBytes) + "\n---\n" + doc("small"),
			docs:       2,
			rejections: []string{"limit is 262144", ""}},
		{name: "deep nesting", data: doc("deep") + "  extra: " + strings.Repeat("[", 100) + strings.Repeat("]", 100) + "\n",
			docs: 1, rejections: []string{"nests deeper"}},
		{name: "empty stream", data: "# nothing\n---\n...\n", docs: 0},
		{name: "directives and markers", data: "%YAML 1.1\n---\n" + doc("d1") + "...\n---\n" + doc("d2"), docs: 2, rejections: []string{"", ""}},
		{name: "CRLF", data: strings.ReplaceAll(doc("c1")+"---\n"+doc("c2"), "\n", "\r\n"), docs: 2, rejections: []string{"", ""}},
		{name: "no marker", data: doc("solo"), docs: 1, rejections: []string{""}},
		{name: "duplicate streaming ports impossible, duplicate port names refused",
			data: doc("dup") + "  volumeMounts: [{name: a, mountPath: /a}, {name: a, mountPath: /b}]\n", docs: 1,
			rejections: []string{"invalid template"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			docs, err := manifest.Parse([]byte(tc.data))
			if time.Since(start) > 5*time.Second {
				t.Errorf("took %v", time.Since(start))
			}
			if tc.streamErr {
				if !apperr.IsCode(err, apperr.Invalid) {
					t.Fatalf("want an invalid stream, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(docs) != tc.docs {
				t.Fatalf("got %d documents, want %d", len(docs), tc.docs)
			}
			for i, want := range tc.rejections {
				switch {
				case want == "" && docs[i].Err != nil:
					t.Errorf("document %d rejected: %v", i+1, docs[i].Err)
				case want != "" && (docs[i].Err == nil || !strings.Contains(docs[i].Err.Error(), want)):
					t.Errorf("document %d: got %v, want an error containing %q", i+1, docs[i].Err, want)
				}
			}
		})
	}
}

// FuzzParse feeds arbitrary bytes to the parser: it must not panic, must keep its limits,
// and every document it accepts must be a valid template.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("a: &a [*a]"))
	f.Add([]byte("--- !!map\n--- |\n  x\n...\n%YAML 1.2\n---\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		docs, err := manifest.Parse(data)
		if err != nil {
			if !apperr.IsCode(err, apperr.Invalid) {
				t.Fatalf("stream error %v is not invalid", err)
			}
			return
		}
		if len(docs) > manifest.MaxDocuments {
			t.Fatalf("%d documents", len(docs))
		}
		for _, d := range docs {
			if d.Err != nil {
				if !apperr.IsCode(d.Err, apperr.Invalid) {
					t.Fatalf("document %d: rejection %v is not invalid", d.Index, d.Err)
				}
				continue
			}
			if err := catalog.Validate(d.Name, d.Spec); err != nil {
				t.Fatalf("document %d accepted but invalid: %v", d.Index, err)
			}
			if _, ok := d.Spec.StreamPort(); !ok {
				t.Fatalf("document %d accepted without exactly one streaming port", d.Index)
			}
		}
	})
}
