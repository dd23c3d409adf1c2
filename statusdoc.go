package main

import "time"

// The /status document: what the deploy rule knows now, served by the
// metrics server (see serveMetrics).

// status is the /status document: what the deploy rule knows now.
type status struct {
	Selector string      `json:"selector"`
	Serving  *ctrStatus  `json:"serving"`
	Pending  []ctrStatus `json:"pending"`  // readiness check running
	Draining []ctrStatus `json:"draining"` // in their grace period
	Ignored  []ctrStatus `json:"ignored"`  // not ready in time
	Events   string      `json:"events"`   // "connected" or "reconnecting"
}

type ctrStatus struct {
	Container   string    `json:"container"`
	Addr        string    `json:"addr"`
	Created     time.Time `json:"created"`
	Connections int       `json:"connections"` // counted when /status is read
	backend     *backend
}

// current fills in what changes without an event: connection counts, and
// the state of the event stream.
func (s status) current(connected bool) status {
	fill := func(cs []ctrStatus) []ctrStatus {
		out := make([]ctrStatus, len(cs))
		for i, c := range cs {
			if c.backend != nil {
				c.Connections = c.backend.count()
			}
			out[i] = c
		}
		return out
	}
	if s.Serving != nil {
		s.Serving = &fill([]ctrStatus{*s.Serving})[0]
	}
	s.Pending, s.Draining, s.Ignored = fill(s.Pending), fill(s.Draining), fill(s.Ignored)
	s.Events = "reconnecting"
	if connected {
		s.Events = "connected"
	}
	return s
}

// publish renews the /status snapshot from the rule's records. A container
// that never became ready is listed as ignored: left alone, not serving.
func (rn *runner) publish() {
	s := &status{Selector: rn.name}
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, c := range rn.rule.sorted() {
		cs := ctrStatus{Container: c.short(), Addr: c.ip.String(), Created: c.created, backend: rn.backends[c.id]}
		switch {
		case c.id == rn.rule.routed:
			s.Serving = &cs
		case c.phase == phaseChecking || c.phase == phaseServing:
			s.Pending = append(s.Pending, cs)
		case c.phase == phaseRetiring:
			s.Draining = append(s.Draining, cs)
		case c.phase == phaseIgnored:
			s.Ignored = append(s.Ignored, cs)
		}
	}
	rn.snap.Store(s)
}
