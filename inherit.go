package main

import (
	"errors"
	"net/netip"
	"time"
)

// A restart that hands over (see handover.go) carries the deploy rule's
// records to the new process, so that it goes on where the old one was: a
// container in its grace period is retired when that period ends, one
// being checked keeps its deadline, and the serving one serves on. A cold
// start has none of this, and keeps the documented rule: all but the most
// recent ready container are removed.

// evInherit: the records a predecessor handed over, given before the
// first list.
type evInherit struct{ ctrs []inheritedCtr }

// inheritedCtr is one record as it crosses from one process to the next.
type inheritedCtr struct {
	ID          string        `json:"id"`
	Name        string        `json:"name,omitempty"`
	Image       string        `json:"image,omitempty"`
	Created     time.Time     `json:"created"`
	Started     time.Time     `json:"started"`
	IP          netip.Addr    `json:"ip"`
	Healthcheck bool          `json:"healthcheck,omitempty"`
	Healthy     bool          `json:"healthy,omitempty"`
	Paused      bool          `json:"paused,omitempty"`
	Age         time.Duration `json:"age,omitempty"`

	Phase     string    `json:"phase"`
	Routed    bool      `json:"routed,omitempty"` // new connections went to it
	Served    bool      `json:"served,omitempty"` // it carried connections: it gets a grace period
	Ready     bool      `json:"ready,omitempty"`
	EverReady bool      `json:"ever_ready,omitempty"`
	Tried     bool      `json:"tried,omitempty"`
	Flapping  bool      `json:"flapping,omitempty"`
	Stopped   bool      `json:"stopped,omitempty"`
	Seen      time.Time `json:"seen"`
	Deadline  time.Time `json:"deadline"`
	HoldUntil time.Time `json:"hold_until"`
	LastError string    `json:"last_error,omitempty"`
	Why       string    `json:"why,omitempty"`
}

// handOver returns the rule's records for a successor.
func (r *rule) handOver() []inheritedCtr {
	var out []inheritedCtr
	for _, c := range r.sorted() {
		in := inheritedCtr{
			ID: c.id, Name: c.name, Image: c.image, Created: c.created, Started: c.started, IP: c.ip,
			Healthcheck: c.healthcheck, Healthy: c.healthy, Paused: c.paused, Age: c.age,
			Phase: c.phase.String(), Routed: c.id == r.routed, Ready: c.ready, EverReady: c.everReady,
			Served: c.served, Tried: c.tried, Flapping: c.flapping, Stopped: c.stopped,
			Seen: c.seen, Deadline: c.deadline, HoldUntil: c.holdUntil, Why: c.why,
		}
		if c.lastErr != nil {
			in.LastError = c.lastErr.Error()
		}
		out = append(out, in)
	}
	return out
}

// inherit takes a predecessor's records. Only what is certain is kept: a
// container that serves serves on, but is not probed unless a rollback is
// possible, as before; one that retires is probed at once, so that a
// rollback to it has a fresh verdict; a removal that was under way is
// asked again at once (removing a container that is gone is done).
func (r *rule) inherit(ev evInherit, now time.Time) {
	for _, in := range ev.ctrs {
		ph, ok := parsePhase(in.Phase)
		if !ok || in.ID == "" || r.ctrs[in.ID] != nil {
			continue // a phase of a later version, or a duplicate
		}
		c := &record{
			ctrInfo: ctrInfo{
				id: in.ID, name: in.Name, image: in.Image, created: in.Created, started: in.Started, ip: in.IP,
				healthcheck: in.Healthcheck, healthy: in.Healthy, paused: in.Paused, age: in.Age,
			},
			phase: ph, ready: in.Ready, everReady: in.EverReady, served: in.Served, tried: in.Tried, flapping: in.Flapping,
			stopped: in.Stopped, seen: in.Seen, deadline: in.Deadline, holdUntil: in.HoldUntil, why: in.Why,
		}
		if in.LastError != "" {
			c.lastErr = errors.New(in.LastError)
		}
		switch ph {
		case phaseServing:
			c.served, c.verdictAt = true, now
			if in.Routed {
				r.serving = c.id
			}
		case phaseRetiring:
			c.probeAt = now // its verdict is as old as the hand-over
		case phaseChecking:
			c.probeAt = now
		case phaseIgnored:
			c.probeAt = now.Add(probeSlow)
		case phaseRemoving:
			c.deadline = now
		}
		r.ctrs[c.id] = c
	}
	r.warm = true
}

func parsePhase(s string) (phase, bool) {
	for i, n := range phaseNames {
		if n == s {
			return phase(i), true
		}
	}
	return 0, false
}
