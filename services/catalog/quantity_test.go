package catalog_test

import (
	"testing"

	"streamspace.dev/services/catalog"
)

func TestParseCPU(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64 // 0 means an error
	}{
		{"500m", 500}, {"2", 2000}, {"0.5", 500}, {"1.25", 1250}, {"0.001", 1}, {"1000m", 1000}, {"1024", 1024000},
		{"", 0}, {"0", 0}, {"0m", 0}, {"0.0001", 0}, {"1.5m", 0}, {"-1", 0}, {"+1", 0}, {"1e3", 0}, {" 1", 0},
		{"1 ", 0}, {"1Gi", 0}, {"lots", 0}, {"1025", 0}, {"99999999", 0}, {".5", 0}, {"1.", 0}, {"500M", 0},
	}
	for _, tc := range tests {
		got, err := catalog.ParseCPU(tc.in)
		if (err == nil) != (tc.want != 0) || got != tc.want {
			t.Errorf("ParseCPU(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseMemory(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want int64 // 0 means an error
	}{
		{"512Mi", 512 << 20}, {"2Gi", 2 << 30}, {"1G", 1e9}, {"1.5Gi", 3 << 29}, {"100", 100}, {"1k", 1000}, {"1Ki", 1024},
		{"0.5Gi", 1 << 29}, {"64Pi", 64 << 50}, {"1T", 1e12},
		{"", 0}, {"0", 0}, {"512m", 0}, {"2gi", 0}, {"2GB", 0}, {"2 Gi", 0}, {"1.5", 0}, {"0.1Ki", 0}, {"-1Gi", 0},
		{"1e9", 0}, {"65Pi", 0}, {"999999999999999P", 0}, {"Gi", 0}, {"1.Gi", 0},
	}
	for _, tc := range tests {
		got, err := catalog.ParseMemory(tc.in)
		if (err == nil) != (tc.want != 0) || got != tc.want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func FuzzQuantities(f *testing.F) {
	for _, s := range []string{"500m", "2", "0.5", "512Mi", "1.5Gi", "1G", "64Pi"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := catalog.ParseCPU(s); err == nil && (n <= 0 || n > catalog.MaxCPUMillis) {
			t.Fatalf("ParseCPU(%q) = %d", s, n)
		}
		if n, err := catalog.ParseMemory(s); err == nil && (n <= 0 || n > catalog.MaxMemoryBytes) {
			t.Fatalf("ParseMemory(%q) = %d", s, n)
		}
	})
}
