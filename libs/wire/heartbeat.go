package wire

// CapacityRefresh bounds how many heartbeats in a row may omit capacity (since 1.2):
// every CapacityRefresh-th heartbeat carries it even when it did not change, so a
// gateway that lost what it was told (a failed write, a restart of its state) has it
// again within CapacityRefresh heartbeat intervals, a minute at the default 10 s.
const CapacityRefresh = 6

// minorOptionalCapacity is the minor that made Heartbeat.Capacity optional.
const minorOptionalCapacity = 2

// omitsCapacity reports whether heartbeats under the accepted version v may omit
// capacity. A gateway before 1.2 decodes an absent capacity as zeros, which would tell
// the scheduler the agent can host nothing.
func (v Version) omitsCapacity() bool { return v.Major == Major && v.Minor >= minorOptionalCapacity }

// CapacityReporter decides which heartbeats of one connection carry capacity, so that
// the agent and anything simulating it (the gateway's scale benchmark) follow the same
// rule. Under 1.2 or later a heartbeat carries capacity when it differs from the last
// capacity the connection reported (Hello's counts) and at least every CapacityRefresh
// beats; otherwise it omits it, which the gateway reads as "unchanged", and the gateway
// decodes a beat of a few bytes instead of six numbers. Under an older version every
// heartbeat carries capacity. A CapacityReporter belongs to one connection's heartbeat
// loop and is not safe for concurrent use.
type CapacityReporter struct {
	omit    bool
	last    Capacity
	known   bool // last holds a capacity this connection reported
	skipped int  // heartbeats in a row that carried none
}

// NewCapacityReporter returns the reporter of a connection whose HelloAck accepted
// version accepted. hello is the capacity the connection's Hello carried, or nil when the
// agent could not tell it then (Hello then carried zeros, which the gateway stored, so
// the first capacity the agent learns is sent at once).
func NewCapacityReporter(accepted Version, hello *Capacity) *CapacityReporter {
	r := &CapacityReporter{omit: accepted.omitsCapacity()}
	if hello != nil {
		r.last, r.known = *hello, true
	}
	return r
}

// Next returns the capacity the next heartbeat carries, nil for none. now is the
// agent's capacity at this beat, or nil when the agent cannot tell it (its backend
// failed). An unknown capacity is never reported as zeros: under 1.2 the beat carries
// none and the gateway keeps what it has; an older gateway, which would store zeros
// for a missing capacity, is sent the last capacity reported again, if there was one.
func (r *CapacityReporter) Next(now *Capacity) *Capacity {
	switch {
	case now == nil && r.omit:
	case now == nil && r.known:
		c := r.last
		return &c
	case now == nil:
		return nil
	case !r.omit || !r.known || *now != r.last || r.skipped+1 >= CapacityRefresh:
		r.last, r.known, r.skipped = *now, true, 0
		c := *now
		return &c
	}
	r.skipped++
	return nil
}
