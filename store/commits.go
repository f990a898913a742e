package store

import "github.com/keyport/keyport"

// ClaimCommits returns the keyport.Committer for claims: a Group of its own,
// on both databases. On SQLite every write transaction queues for the one
// writer connection, and a group hands the writer over once per group
// instead of once per claim. On PostgreSQL a transaction's audit seal holds
// the advisory lock through the commit, so claims pass the lock one after
// another whatever their connections: in a group the lock, the head read,
// the audit statement and the commit (the WAL flush) are shared, which
// measured a little faster than a transaction each (README, benchmarks).
func (s *Store) ClaimCommits() keyport.Committer { return s.Group() }
