package gateway

import (
	"fmt"
	"testing"
)

// The beats map keeps one beat per agent until the flush. A beat without capacity (wire
// 1.2) means "unchanged", so it must not erase the capacity an earlier beat of the same
// connection left there, neither while both wait for the flush nor when a failed write
// is put back; a beat of another connection of the agent never inherits one.
func TestBeatsKeepCapacityAcrossLivenessBeats(t *testing.T) {
	t.Parallel()
	c1 := &agentConn{id: Identity{Tenant: "acmecorpxyz2", Agent: "agt_a"}, connID: "c1"}
	c2 := &agentConn{id: c1.id, connID: "c2"}
	x, y := &Capacity{Sessions: 1}, &Capacity{Sessions: 2}
	show := func(c *Capacity) string {
		if c == nil {
			return "none"
		}
		return fmt.Sprint(c.Sessions)
	}
	type step struct {
		c        *agentConn
		capacity *Capacity
	}
	for _, tc := range []struct {
		name  string
		steps []step
		// failed, when set, is the batch whose write failed after the steps; newer are
		// the beats that arrived meanwhile.
		failed, newer []step
		conn          *agentConn
		want          *Capacity
	}{
		{name: "liveness after capacity", steps: []step{{c1, x}, {c1, nil}}, conn: c1, want: x},
		{name: "several liveness beats", steps: []step{{c1, x}, {c1, nil}, {c1, nil}}, conn: c1, want: x},
		{name: "newer capacity wins", steps: []step{{c1, x}, {c1, nil}, {c1, y}}, conn: c1, want: y},
		{name: "liveness only", steps: []step{{c1, nil}}, conn: c1, want: nil},
		{name: "another connection inherits nothing", steps: []step{{c1, x}, {c2, nil}}, conn: c2, want: nil},
		{name: "restored under a newer liveness beat", failed: []step{{c1, x}}, newer: []step{{c1, nil}}, conn: c1, want: x},
		{name: "restored under a newer capacity", failed: []step{{c1, x}}, newer: []step{{c1, y}}, conn: c1, want: y},
		{name: "restored alone", failed: []step{{c1, x}}, conn: c1, want: x},
		{name: "restored under another connection", failed: []step{{c1, x}}, newer: []step{{c2, nil}}, conn: c2, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var b beats
			for _, s := range tc.steps {
				b.record(s.c, s.capacity)
			}
			if tc.failed != nil {
				for _, s := range tc.failed {
					b.record(s.c, s.capacity)
				}
				var failed []beat
				for _, x := range b.take() {
					failed = append(failed, x)
				}
				for _, s := range tc.newer {
					b.record(s.c, s.capacity)
				}
				b.restore(failed)
			}
			got := b.take()
			if len(got) != 1 {
				t.Fatalf("%d beats, want 1", len(got))
			}
			g := got[c1.id.Agent]
			if g.c != tc.conn || show(g.capacity) != show(tc.want) {
				t.Fatalf("the beat from %s carries %s; want one from %s carrying %s", g.c.connID, show(g.capacity), tc.conn.connID, show(tc.want))
			}
		})
	}
}
