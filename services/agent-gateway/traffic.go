package gateway

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/tenant"
)

// Traffic is what one flush records for one session: the bytes its streams carried since
// the previous flush (In from the browser, Out to it). Recording it also stamps the
// session's last traffic time, which the sessions service's idle timer reads.
type Traffic struct {
	SessionID SessionID
	In, Out   int64
}

// DefaultTrafficFlush is how often the gateway records session traffic: well under any
// idle timeout, and few enough writes that a replica carrying thousands of streams makes
// one statement per tenant every few seconds.
const DefaultTrafficFlush = 5 * time.Second

// traffic counts one session's bytes on this replica, shared by all its open streams.
type traffic struct {
	tenant  tenant.ID
	session SessionID
	in, out atomic.Int64
	// streams is how many open streams use it; guarded by meter.mu.
	streams int
}

// meter holds the per-session counters of open streams and flushes them in batches: a
// write per tenant per interval, never one per packet, and only for sessions that
// carried bytes since the last flush.
type meter struct {
	store Store
	log   *slog.Logger
	bytes *prometheus.CounterVec

	mu       sync.Mutex
	sessions map[tenant.ID]map[SessionID]*traffic
	// flushMu serialises flushes, so a forced flush and the loop's never interleave.
	flushMu sync.Mutex
}

func newMeter(store Store, log *slog.Logger, bytes *prometheus.CounterVec) *meter {
	return &meter{store: store, log: log, bytes: bytes, sessions: map[tenant.ID]map[SessionID]*traffic{}}
}

// open returns the session's counter for one more stream; release gives it back.
func (m *meter) open(tid tenant.ID, id SessionID) *traffic {
	m.mu.Lock()
	defer m.mu.Unlock()
	byID := m.sessions[tid]
	if byID == nil {
		byID = map[SessionID]*traffic{}
		m.sessions[tid] = byID
	}
	t := byID[id]
	if t == nil {
		t = &traffic{tenant: tid, session: id}
		byID[id] = t
	}
	t.streams++
	return t
}

// release ends one stream's use of t. The counter stays until a flush has taken its
// last bytes.
func (m *meter) release(t *traffic) {
	m.mu.Lock()
	t.streams--
	m.mu.Unlock()
}

// run flushes every interval until ctx ends, then once more.
func (m *meter) run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = m.flush(fctx)
			cancel()
			return
		case <-tick.C:
			if err := m.flush(ctx); err != nil && ctx.Err() == nil {
				m.log.Warn("recording session traffic", "err", err)
			}
		}
	}
}

// flush records the bytes counted since the last flush, one statement per tenant, and
// forgets counters that no stream uses any more. Bytes of a failed write are put back
// for the next flush.
func (m *meter) flush(ctx context.Context) error {
	m.flushMu.Lock()
	defer m.flushMu.Unlock()
	batches := map[tenant.ID][]*traffic{}
	taken := map[*traffic][2]int64{}
	m.mu.Lock()
	for tid, byID := range m.sessions {
		for id, t := range byID {
			in, out := t.in.Swap(0), t.out.Swap(0)
			if in != 0 || out != 0 {
				batches[tid] = append(batches[tid], t)
				taken[t] = [2]int64{in, out}
			} else if t.streams == 0 {
				delete(byID, id)
			}
		}
		if len(byID) == 0 {
			delete(m.sessions, tid)
		}
	}
	m.mu.Unlock()
	var firstErr error
	for tid, ts := range batches {
		rows := make([]Traffic, len(ts))
		for i, t := range ts {
			rows[i] = Traffic{SessionID: t.session, In: taken[t][0], Out: taken[t][1]}
		}
		err := m.store.RecordTraffic(auth.AsSystem(ctx, tid, "agent-gateway"), rows)
		if err == nil {
			for _, r := range rows {
				m.bytes.WithLabelValues("in").Add(float64(r.In))
				m.bytes.WithLabelValues("out").Add(float64(r.Out))
			}
			continue
		}
		if firstErr == nil {
			firstErr = err
		}
		for _, t := range ts {
			t.in.Add(taken[t][0])
			t.out.Add(taken[t][1])
		}
		// A counter dropped meanwhile (no streams, nothing new) must keep its bytes.
		m.mu.Lock()
		for _, t := range ts {
			byID := m.sessions[tid]
			if byID == nil {
				byID = map[SessionID]*traffic{}
				m.sessions[tid] = byID
			}
			if byID[t.session] == nil {
				byID[t.session] = t
			}
		}
		m.mu.Unlock()
	}
	return firstErr
}

// counter is an io.Writer that counts what it wrote.
type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
