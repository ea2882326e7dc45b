package postgres

import "streamspace.dev/libs/tenant"

// ListSQL is listSQL, for TestListPlan.
const ListSQL = listSQL

// QueuedCreates is how many creates of tenant tid wait for a group, for tests that must
// know that theirs have queued.
func QueuedCreates(s *Store, tid tenant.ID) int {
	s.group.mu.Lock()
	defer s.group.mu.Unlock()
	return len(s.group.wait[tid])
}
