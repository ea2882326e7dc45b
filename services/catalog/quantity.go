package catalog

import (
	"fmt"
	"math/big"
	"regexp"
	"strings"
)

// The parsers below accept a strict subset of Kubernetes quantity syntax: plain decimals
// with one of the suffixes that make sense for the resource. Exponents ("1e3"), signs and
// whitespace are refused, because a template is written by people and a typo like
// "512m" memory (half a byte, in Kubernetes) should be an error, not a surprise.

var (
	cpuPattern    = regexp.MustCompile(`^([0-9]{1,7})(?:\.([0-9]{1,3}))?(m?)$`)
	memoryPattern = regexp.MustCompile(`^([0-9]{1,15})(?:\.([0-9]{1,6}))?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$`)
)

// MaxCPUMillis bounds a CPU quantity: 1024 cores.
const MaxCPUMillis = 1024 * 1000

// MaxMemoryBytes bounds a memory or storage quantity: 64 PiB.
const MaxMemoryBytes = 64 << 50

// ParseCPU parses a CPU quantity ("500m", "2", "0.5") into millicores. It must be positive
// and at most MaxCPUMillis; fractions finer than a millicore are refused.
func ParseCPU(s string) (int64, error) {
	m := cpuPattern.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("%q is not a CPU quantity; want cores (\"2\", \"0.5\") or millicores (\"500m\")", s)
	}
	whole, frac, milli := m[1], m[2], m[3] == "m"
	if milli && frac != "" {
		return 0, fmt.Errorf("%q: millicores must be a whole number", s)
	}
	n := new(big.Int)
	n.SetString(whole, 10)
	if !milli {
		n.Mul(n, big.NewInt(1000))
		if frac != "" {
			f := new(big.Int)
			f.SetString(frac+strings.Repeat("0", 3-len(frac)), 10)
			n.Add(n, f)
		}
	}
	switch {
	case n.Sign() == 0:
		return 0, fmt.Errorf("%q: CPU must be more than zero", s)
	case n.Cmp(big.NewInt(MaxCPUMillis)) > 0:
		return 0, fmt.Errorf("%q: CPU must be at most %d cores", s, MaxCPUMillis/1000)
	}
	return n.Int64(), nil
}

var memoryUnits = map[string]int64{
	"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
	"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
}

// ParseMemory parses a memory or storage quantity ("512Mi", "2Gi", "1G", "1.5Gi") into
// bytes. It must be a positive whole number of bytes, at most MaxMemoryBytes.
func ParseMemory(s string) (int64, error) {
	m := memoryPattern.FindStringSubmatch(s)
	if m == nil {
		hint := ""
		if strings.HasSuffix(s, "m") || strings.HasSuffix(s, "mi") || strings.HasSuffix(s, "gi") {
			hint = " (units are case-sensitive: Mi, Gi)"
		}
		return 0, fmt.Errorf("%q is not a memory quantity; want bytes with a suffix such as 512Mi, 2Gi or 1G%s", s, hint)
	}
	whole, frac, unit := m[1], m[2], memoryUnits[m[3]]
	// value = (whole + frac/10^len(frac)) * unit, in exact integer arithmetic.
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil)
	num := new(big.Int)
	num.SetString(whole+frac, 10)
	num.Mul(num, big.NewInt(unit))
	q, r := new(big.Int).QuoRem(num, scale, new(big.Int))
	switch {
	case r.Sign() != 0:
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	case q.Sign() == 0:
		return 0, fmt.Errorf("%q: must be more than zero", s)
	case q.Cmp(big.NewInt(MaxMemoryBytes)) > 0:
		return 0, fmt.Errorf("%q: must be at most 64Pi", s)
	}
	return q.Int64(), nil
}
