package store

import "github.com/keyport/keyport"

// ClaimCommits returns the keyport.Committer for claims: a Group of its own,
// on both databases. On SQLite every write transaction queues for the one
// writer connection, and a group hands the writer over once per group
// instead of once per claim. On PostgreSQL a claim's audit append holds the
// advisory lock through the commit, so claims pass the lock one after
// another whatever their connections: in a group the lock and the head are
// taken once (auditTail) and the commit (the WAL flush) is shared, which
// measured a little faster than a transaction each (README, benchmarks).
func (s *Store) ClaimCommits() keyport.Committer { return s.Group() }
