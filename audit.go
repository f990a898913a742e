package keyport

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// ChainHash is the hash of audit event e chained to the previous event's hash:
// SHA-256(prev ‖ seq ‖ at ‖ actor ‖ action ‖ object ‖ detail), each variable
// field length-prefixed so that no two events encode alike. At is taken in UTC
// with nanoseconds, the precision both stores keep (microseconds are stored,
// so callers truncate At to microseconds before chaining).
func ChainHash(prev []byte, e AuditEvent) []byte {
	h := sha256.New()
	field := func(b []byte) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field(prev)
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], uint64(e.Seq))
	h.Write(seq[:])
	field([]byte(e.At.UTC().Format(time.RFC3339Nano)))
	field([]byte(e.Actor))
	field([]byte(e.Action))
	field([]byte(e.Object))
	field([]byte(e.Detail))
	return h.Sum(nil)
}

// AuditTime is the timestamp precision the audit log keeps.
func AuditTime(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }
