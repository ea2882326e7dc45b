// Package feed fans a backend's observed session statuses out to its watchers. Publishing
// never blocks — backends publish while holding their own locks — so each watcher gets an
// unbounded queue that its own goroutine drains into the channel Subscribe returns.
package feed

import (
	"context"
	"sync"

	"streamspace.dev/libs/wire"
)

// Feed is a set of watchers. The zero value is ready to use; it is safe for concurrent use.
type Feed struct {
	mu   sync.Mutex
	subs map[*sub]struct{}
}

type sub struct {
	mu     sync.Mutex
	queue  []wire.SessionStatus
	signal chan struct{}
}

// Publish queues st for every current watcher.
func (f *Feed) Publish(st wire.SessionStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		s.mu.Lock()
		s.queue = append(s.queue, st)
		s.mu.Unlock()
		select {
		case s.signal <- struct{}{}:
		default:
		}
	}
}

// Subscribe returns a channel of every status published from now on, in order. It is
// closed when ctx ends or stop (which may be nil) is closed. The caller is registered
// before Subscribe returns, so nothing published afterwards is missed.
func (f *Feed) Subscribe(ctx context.Context, stop <-chan struct{}) <-chan wire.SessionStatus {
	s := &sub{signal: make(chan struct{}, 1)}
	f.mu.Lock()
	if f.subs == nil {
		f.subs = map[*sub]struct{}{}
	}
	f.subs[s] = struct{}{}
	f.mu.Unlock()
	out := make(chan wire.SessionStatus)
	go func() {
		defer close(out)
		defer func() {
			f.mu.Lock()
			delete(f.subs, s)
			f.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-stop:
				return
			case <-s.signal:
			}
			s.mu.Lock()
			q := s.queue
			s.queue = nil
			s.mu.Unlock()
			for _, st := range q {
				select {
				case out <- st:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out
}
