package keyport

import "fmt"

// DomainState is where a supplementary security domain is in keyport's life
// cycle (DESIGN.md, "Domain state machine"). It is not the card's GP life-cycle
// byte; the card confirms the transitions that need it.
type DomainState string

// The domain states.
const (
	Unassigned   DomainState = "UNASSIGNED"
	Assigned     DomainState = "ASSIGNED"
	Personalized DomainState = "PERSONALIZED"
	Releasing    DomainState = "RELEASING"
	Locked       DomainState = "LOCKED"
	Failed       DomainState = "FAILED"
)

// Event names what moves a domain from one state to another.
type Event string

// The events of the state machine.
const (
	EventClaim              Event = "claim"
	EventSecondKeyConfirmed Event = "second-key-confirmed"
	EventRelease            Event = "release"
	EventReleaseConfirmed   Event = "release-confirmed"
	EventLock               Event = "lock"
	EventUnlock             Event = "unlock"
	EventFail               Event = "fail"
)

// transitions lists, per event, the states it may start from and the state it
// leads to. Unlock returns a domain to the state recorded when it was locked,
// so its target is decided by the caller (see Next).
var transitions = map[Event]struct {
	from []DomainState
	to   DomainState
}{
	EventClaim:              {[]DomainState{Unassigned}, Assigned},
	EventSecondKeyConfirmed: {[]DomainState{Assigned}, Personalized},
	EventRelease:            {[]DomainState{Personalized, Assigned}, Releasing},
	EventReleaseConfirmed:   {[]DomainState{Releasing}, Unassigned},
	EventLock:               {[]DomainState{Unassigned, Assigned, Personalized}, Locked},
	EventUnlock:             {[]DomainState{Locked}, ""},
	EventFail:               {[]DomainState{Unassigned, Assigned, Personalized, Releasing, Locked}, Failed},
}

// Next returns the state an event leads to from `from`, and the states it may
// start from (for the store's conditional update `WHERE state IN (...)`).
// For EventUnlock the target is `prior`, the state before the lock.
func Next(from DomainState, ev Event, prior DomainState) (DomainState, error) {
	t, ok := transitions[ev]
	if !ok {
		return "", fmt.Errorf("keyport: unknown event %q", ev)
	}
	for _, s := range t.from {
		if s == from {
			if ev == EventUnlock {
				if prior == "" || prior == Locked || prior == Failed {
					return "", fmt.Errorf("%w: cannot unlock to %q", ErrConflict, prior)
				}
				return prior, nil
			}
			return t.to, nil
		}
	}
	return "", fmt.Errorf("%w: a domain in state %s cannot take event %s", ErrConflict, from, ev)
}

// From returns the states an event may start from.
func From(ev Event) []DomainState { return append([]DomainState(nil), transitions[ev].from...) }

// Valid reports whether s is one of the known states.
func (s DomainState) Valid() bool {
	switch s {
	case Unassigned, Assigned, Personalized, Releasing, Locked, Failed:
		return true
	}
	return false
}

// IssuerManaged reports whether the issuer may manage the SSD's content: only
// while nobody owns it (DESIGN.md).
func (s DomainState) IssuerManaged() bool { return s == Unassigned || s == Releasing }
