package keyport_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keyport/keyport"
	"github.com/keyport/keyport/gp"
)

// cardKeyUses counts the judgements and precomputations run under a
// domain's keys in the HSM.
type cardKeyUses struct {
	keyport.Custody
	n atomic.Int64
}

func (c *cardKeyUses) WithCardKeys(ctx context.Context, refs []keyport.KeyRef, fn func(cmac func(int, []byte) ([]byte, error)) error) error {
	c.n.Add(1)
	return c.Custody.(keyport.CardKeyScope).WithCardKeys(ctx, refs, fn)
}

// assignedWorld is newAssignedWorld with the HSM's uses of card keys
// counted.
func assignedWorld(t *testing.T) (*pendingWorld, *cardKeyUses) {
	t.Helper()
	w := newAssignedWorld(t)
	uses := &cardKeyUses{Custody: w.Svc.Custody}
	w.Svc.Custody = uses
	return w, uses
}

// A second-key script's answer is computed, under the first keys, when the
// script is submitted; the card's answer, being that one, is judged
// without the HSM and confirms the key change as the long way would.
func TestASecondKeyAnswerComputedAtSubmissionIsJudgedWithoutTheHSM(t *testing.T) {
	w, uses := assignedWorld(t)
	j := w.submit(t, w.secondKey(t))
	if j.SecondKey == nil || len(j.SecondKey.AnswerDigest) != 64 {
		t.Fatalf("the job holds no answer digest: %+v", j.SecondKey)
	}
	before := uses.n.Load()
	w.session(t, nil)
	done := w.wantJob(t, j.Ref, keyport.JobDone)
	if n := uses.n.Load() - before; n != 0 {
		t.Fatalf("the expected answer was judged with %d uses of the card keys, want none", n)
	}
	if !done.Result.Confirmed || done.Result.SequenceCounter == nil || *done.Result.SequenceCounter != 1 {
		t.Fatalf("result %+v", done.Result)
	}
	if d := w.domain(t); d.State != keyport.Personalized || d.KVN != 0x31 {
		t.Fatalf("domain %s KVN %02X", d.State, d.KVN)
	}
	if !w.authenticates(t, 0x31, secondKeys) {
		t.Fatal("the card does not hold the second keys")
	}
}

// An answer that is not the expected one is judged the long way, under
// the first keys, exactly as before: here the card's counter moved
// meanwhile (a session keyport did not see), so the card refuses the
// script's EXTERNAL AUTHENTICATE, and the job fails with the domain as it
// was.
func TestAnAnswerOtherThanTheExpectedOneIsJudgedUnderTheKeys(t *testing.T) {
	w, uses := assignedWorld(t)
	j := w.submit(t, w.secondKey(t))
	if !w.authenticates(t, 0x30, w.Keys[w.eid][w.aid]) {
		t.Fatal("the card refused its first keys")
	}
	before := uses.n.Load()
	w.session(t, nil)
	failed := w.wantJob(t, j.Ref, keyport.JobFailed)
	if uses.n.Load()-before != 1 {
		t.Fatalf("%d uses of the card keys to judge an unexpected answer, want 1", uses.n.Load()-before)
	}
	if failed.Result.Confirmed || len(failed.Result.Responses) != 2 || !strings.HasSuffix(failed.Result.Responses[1], "6982") {
		t.Fatalf("result %+v", failed.Result)
	}
	if d := w.domain(t); d.State != keyport.Assigned || d.KVN != 0x30 {
		t.Fatalf("domain %s KVN %02X", d.State, d.KVN)
	}
}

// A forged answer in the expected shape — the right statuses and PUT KEY
// data, MACs that are not the card's — is neither the expected answer nor
// a proven one.
func TestAForgedAnswerIsNotTakenForTheExpectedOne(t *testing.T) {
	w, _ := assignedWorld(t)
	j := w.submit(t, w.secondKey(t))
	w.session(t, func(_ *keyport.Job, body []byte) []byte {
		rs, err := gp.ParseResponseScript(body)
		if err != nil {
			t.Fatal(err)
		}
		last := &rs.Responses[len(rs.Responses)-1]
		last.Data = append([]byte(nil), last.Data...)
		last.Data[len(last.Data)-1] ^= 0x01 // the SET STATUS answer's R-MAC
		return rs.Bytes()
	})
	failed := w.wantJob(t, j.Ref, keyport.JobFailed)
	if failed.Result.Confirmed {
		t.Fatalf("a forged answer confirmed the key change: %+v", failed.Result)
	}
	if d := w.domain(t); d.State != keyport.Assigned {
		t.Fatalf("domain %s after a forged answer", d.State)
	}
}
