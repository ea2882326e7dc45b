package gateway

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/tenant"
)

// recorder is a Store that only records traffic batches: the meter's batching is pure
// logic, tested here; the SQL is tested through the all-in-one flow test.
type recorder struct {
	Store
	mu      sync.Mutex
	batches map[tenant.ID][][]Traffic
	fail    error
}

func (r *recorder) RecordTraffic(ctx context.Context, ts []Traffic) error {
	p, _ := auth.FromContext(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	slices.SortFunc(ts, func(a, b Traffic) int { return cmp.Compare(a.SessionID, b.SessionID) })
	r.batches[p.Tenant] = append(r.batches[p.Tenant], ts)
	return nil
}

func TestMeterFlushesOneBatchPerTenantOnlyWithTraffic(t *testing.T) {
	t.Parallel()
	rec := &recorder{batches: map[tenant.ID][][]Traffic{}}
	m := newMeter(rec, slog.New(slog.DiscardHandler), prometheus.NewCounterVec(prometheus.CounterOpts{Name: "b"}, []string{"direction"}))
	a1, a2 := m.open("acme", "ses_a1"), m.open("acme", "ses_a2")
	again := m.open("acme", "ses_a1") // a second viewer of the same session shares its counter
	if again != a1 {
		t.Fatal("two streams of one session got two counters")
	}
	g := m.open("globex", "ses_g1")
	quiet := m.open("globex", "ses_quiet")
	write := func(tr *traffic, in, out int) {
		_, _ = (counter{w: io.Discard, n: &tr.in}).Write(make([]byte, in))
		_, _ = (counter{w: io.Discard, n: &tr.out}).Write(make([]byte, out))
	}
	write(a1, 10, 100)
	write(again, 1, 1)
	write(a2, 0, 7)
	write(g, 5, 0)
	ctx := context.Background()
	if err := m.flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[tenant.ID][][]Traffic{
		"acme":   {{{SessionID: "ses_a1", In: 11, Out: 101}, {SessionID: "ses_a2", In: 0, Out: 7}}},
		"globex": {{{SessionID: "ses_g1", In: 5, Out: 0}}},
	}
	if !equalBatches(rec.batches, want) {
		t.Fatalf("batches %+v, want %+v", rec.batches, want)
	}

	// Nothing new: nothing written.
	if err := m.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(rec.batches["acme"]) != 1 || len(rec.batches["globex"]) != 1 {
		t.Fatalf("a flush without traffic wrote %+v", rec.batches)
	}

	// A failed write keeps the bytes for the next flush, even of a released counter.
	write(g, 3, 4)
	m.release(g)
	rec.fail = errors.New("database down")
	if err := m.flush(ctx); err == nil {
		t.Fatal("the failed write was not reported")
	}
	rec.fail = nil
	if err := m.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rec.batches["globex"]; len(got) != 2 || len(got[1]) != 1 || got[1][0] != (Traffic{SessionID: "ses_g1", In: 3, Out: 4}) {
		t.Fatalf("globex after a failed flush: %+v", got)
	}

	// Released counters without bytes are forgotten; ones in use stay.
	m.release(a1)
	m.release(again)
	m.release(quiet)
	if err := m.flush(ctx); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.sessions["globex"]; ok {
		t.Errorf("globex's counters outlived their streams: %v", m.sessions["globex"])
	}
	if got := slices.Sorted(maps.Keys(m.sessions["acme"])); !slices.Equal(got, []SessionID{"ses_a2"}) {
		t.Errorf("acme's counters %v, want only the open ses_a2", got)
	}
}

func equalBatches(a, b map[tenant.ID][][]Traffic) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y := b[k]
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !slices.Equal(x[i], y[i]) {
				return false
			}
		}
	}
	return true
}
