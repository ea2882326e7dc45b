package wire

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
)

// The expected digests were computed independently (a dozen lines of Python following
// PROTOCOL.md), so these pin the specification, not just this code.
const (
	emptySetChecksum   = "sha256:6be53d51b480ed7d9d9ee9a85396b3335fa78a5216ad60d28ba8858378f64570"
	sampleSet2Checksum = "sha256:f70b4b6df4d53ad982a8a029710a2445640df20bdd70f697f9789b375d6b2262"
)

func TestChecksumIsTheSpecifiedDigest(t *testing.T) {
	t.Parallel()
	if got := Checksum(nil); got != emptySetChecksum {
		t.Errorf("empty set: %s", got)
	}
	if got := Checksum(sampleAssignments(2)); got != sampleSet2Checksum {
		t.Errorf("sample set: %s", got)
	}
}

func TestChecksumIgnoresOrderAndSpec(t *testing.T) {
	t.Parallel()
	set := sampleAssignments(50)
	want := Checksum(set)
	orig := slices.Clone(set)

	rev := slices.Clone(set)
	slices.Reverse(rev)
	if got := Checksum(rev); got != want {
		t.Error("order changed the checksum")
	}
	if !slices.EqualFunc(set, orig, func(a, b Assignment) bool { return a.SessionID == b.SessionID }) {
		t.Error("Checksum reordered its input")
	}
	respec := slices.Clone(set)
	respec[3].Spec = json.RawMessage(`{ "image" : "x" }`)
	if got := Checksum(respec); got != want {
		t.Error("a spec change without a generation change altered the checksum")
	}
}

func TestChecksumSeesEveryCanonicalField(t *testing.T) {
	t.Parallel()
	base := sampleAssignments(3)
	want := Checksum(base)
	cases := map[string]func(a *Assignment){
		"session id": func(a *Assignment) { a.SessionID += "x" },
		"tenant id":  func(a *Assignment) { a.TenantID = "othertenant2" },
		"generation": func(a *Assignment) { a.Generation++ },
		"desired":    func(a *Assignment) { a.Desired = DesiredDeleted },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			set := slices.Clone(base)
			mutate(&set[1])
			if Checksum(set) == want {
				t.Fatalf("changing the %s did not change the checksum", name)
			}
		})
	}
	t.Run("membership", func(t *testing.T) {
		t.Parallel()
		if Checksum(base[:2]) == want || Checksum(append(slices.Clone(base), base[0])) == want {
			t.Fatal("adding or removing an assignment did not change the checksum")
		}
	})
	t.Run("length prefixes prevent field shifting", func(t *testing.T) {
		t.Parallel()
		a := []Assignment{{SessionID: "ab", TenantID: "c", Desired: DesiredRunning}}
		b := []Assignment{{SessionID: "a", TenantID: "bc", Desired: DesiredRunning}}
		if Checksum(a) == Checksum(b) {
			t.Fatal("fields bled into each other")
		}
	})
}

func ExampleChecksum() {
	agent := []Assignment{
		{SessionID: "ses_2", TenantID: "acmecorpxyz2", Generation: 4, Desired: DesiredStopped},
		{SessionID: "ses_1", TenantID: "acmecorpxyz2", Generation: 9, Desired: DesiredRunning},
	}
	gateway := []Assignment{agent[1], agent[0]}
	fmt.Println(Checksum(agent) == Checksum(gateway))
	// Output: true
}
