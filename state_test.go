package keyport

import (
	"errors"
	"testing"
)

func TestStateMachineAllowsOnlyTheDesignedTransitions(t *testing.T) {
	all := []DomainState{Unassigned, Assigned, Personalized, Releasing, Locked, Failed}
	allowed := map[[2]string]DomainState{
		{"UNASSIGNED", "claim"}:              Assigned,
		{"ASSIGNED", "second-key-confirmed"}: Personalized,
		{"PERSONALIZED", "release"}:          Releasing,
		{"ASSIGNED", "release"}:              Releasing,
		{"RELEASING", "release-confirmed"}:   Unassigned,
		{"UNASSIGNED", "lock"}:               Locked,
		{"ASSIGNED", "lock"}:                 Locked,
		{"PERSONALIZED", "lock"}:             Locked,
		{"LOCKED", "unlock"}:                 Assigned, // prior below
		{"UNASSIGNED", "fail"}:               Failed,
		{"ASSIGNED", "fail"}:                 Failed,
		{"PERSONALIZED", "fail"}:             Failed,
		{"RELEASING", "fail"}:                Failed,
		{"LOCKED", "fail"}:                   Failed,
	}
	events := []Event{EventClaim, EventSecondKeyConfirmed, EventRelease, EventReleaseConfirmed, EventLock, EventUnlock, EventFail}
	for _, from := range all {
		for _, ev := range events {
			got, err := Next(from, ev, Assigned)
			want, ok := allowed[[2]string{string(from), string(ev)}]
			if ok && (err != nil || got != want) {
				t.Errorf("%s --%s--> %s, %v; want %s", from, ev, got, err, want)
			}
			if !ok && !errors.Is(err, ErrConflict) {
				t.Errorf("%s --%s--> %s allowed; want ErrConflict", from, ev, got)
			}
		}
	}
}

func TestUnlockReturnsToThePriorStateOnly(t *testing.T) {
	if s, err := Next(Locked, EventUnlock, Personalized); err != nil || s != Personalized {
		t.Errorf("unlock to PERSONALIZED: %s %v", s, err)
	}
	for _, prior := range []DomainState{"", Locked, Failed} {
		if _, err := Next(Locked, EventUnlock, prior); !errors.Is(err, ErrConflict) {
			t.Errorf("unlock to %q allowed", prior)
		}
	}
}

func TestIssuerManagesContentOnlyWhileNobodyOwnsTheDomain(t *testing.T) {
	for s, want := range map[DomainState]bool{Unassigned: true, Releasing: true, Assigned: false, Personalized: false, Locked: false} {
		if s.IssuerManaged() != want {
			t.Errorf("%s.IssuerManaged() = %v", s, !want)
		}
	}
}
