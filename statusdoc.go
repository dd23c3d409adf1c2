package main

import (
	"time"
)

// The status document: what the deploy rule knows now. The metrics server
// serves it as /status, the control socket as /v1/status, and docker-proxy
// status prints it.

// status is the status document.
type status struct {
	API      int         `json:"api"` // controlAPI: the version of this document and of the control API
	Selector string      `json:"selector"`
	Tag      string      `json:"tag,omitempty"` // -tag: the image deploy starts
	Address  string      `json:"address"`
	Ports    []string    `json:"ports"` // as -ports gives them: 80, 443=3000
	Settings settings    `json:"settings"`
	Serving  *ctrStatus  `json:"serving"`
	Pending  []ctrStatus `json:"pending"`           // readiness check running
	Draining []ctrStatus `json:"draining"`          // in their grace period, or being retired
	Ignored  []ctrStatus `json:"ignored"`           // not ready in time, failing, or crash-looping
	Retired  []ctrStatus `json:"retired,omitempty"` // -retire none: left running, never served again
	Events   string      `json:"events"`            // "connected" or "reconnecting"
	Version  string      `json:"version,omitempty"`
	Time     time.Time   `json:"time"` // when the document was read: the clock deadlines are on
}

// settings are the flags a client of the control API needs to know, as
// Go durations ("10s").
type settings struct {
	StatusTimeout string `json:"status_timeout"`
	GracePeriod   string `json:"grace_period"`
	Drain         bool   `json:"drain"`
	Retire        string `json:"retire"`
	StopTimeout   string `json:"stop_timeout,omitempty"` // a retirement may take this long more
}

// ctrStatus is one container in the status document.
type ctrStatus struct {
	Container   string     `json:"container"` // the short id
	ID          string     `json:"id"`
	Name        string     `json:"name,omitempty"`
	Image       string     `json:"image,omitempty"`
	Addr        string     `json:"addr"`
	Created     time.Time  `json:"created"`
	Seen        time.Time  `json:"seen"` // when the proxy first saw this run of it
	Phase       string     `json:"phase"`
	Served      bool       `json:"served"` // it carried connections (pending: it serves again after a rollback)
	Ready       bool       `json:"ready"`
	Deadline    *time.Time `json:"deadline,omitempty"`    // pending: ignored then; draining: retired then
	DeadlineIn  float64    `json:"deadline_in,omitempty"` // seconds from the document's time to Deadline
	LastError   string     `json:"last_error,omitempty"`  // the last failed readiness check, or why it is ignored
	Connections int        `json:"connections"`           // counted when the document is read
	backend     *backend
}

// current fills in what changes without an event: connection counts, time
// left, and the state of the event stream.
func (s status) current(connected bool, now time.Time) status {
	fill := func(cs []ctrStatus) []ctrStatus {
		out := make([]ctrStatus, len(cs))
		for i, c := range cs {
			if c.backend != nil {
				c.Connections = c.backend.count()
			}
			if c.Deadline != nil {
				c.DeadlineIn = max(c.Deadline.Sub(now), 0).Seconds()
			}
			out[i] = c
		}
		return out
	}
	if s.Serving != nil {
		s.Serving = &fill([]ctrStatus{*s.Serving})[0]
	}
	s.Pending, s.Draining, s.Ignored, s.Retired = fill(s.Pending), fill(s.Draining), fill(s.Ignored), fill(s.Retired)
	s.Events = "reconnecting"
	if connected {
		s.Events = "connected"
	}
	s.Time = now
	return s
}

// publish renews the status snapshot from the rule's records, and sends
// what changed since the last one to the control API's listeners.
func (rn *runner) publish(now time.Time) {
	s := &status{API: controlAPI, Selector: rn.name, Tag: rn.tag, Address: rn.address, Settings: rn.settings, Version: rn.version}
	for _, p := range rn.ports {
		s.Ports = append(s.Ports, p.String())
	}
	rn.mu.Lock()
	for _, c := range rn.rule.sorted() {
		cs := ctrStatus{
			Container: c.short(), ID: c.id, Name: c.name, Image: c.image, Addr: c.ip.String(),
			Created: c.created, Seen: c.seen, Phase: c.phase.String(), Served: c.served, Ready: c.ready,
			backend: rn.backends[c.id],
		}
		if c.lastErr != nil {
			cs.LastError = c.lastErr.Error()
		}
		switch {
		case c.id == rn.rule.routed:
			s.Serving = &cs
		case c.phase == phaseChecking || c.phase == phaseServing:
			if c.phase == phaseChecking && !c.deadline.IsZero() {
				cs.Deadline = new(c.deadline)
			}
			s.Pending = append(s.Pending, cs)
		case c.phase == phaseRetiring || c.phase == phaseRemoving:
			if c.phase == phaseRetiring {
				cs.Deadline = new(c.deadline)
			}
			s.Draining = append(s.Draining, cs)
		case c.phase == phaseIgnored:
			switch {
			case now.Before(c.holdUntil) && c.flapping:
				cs.LastError = "flapping: rolled back from too often"
			case now.Before(c.holdUntil):
				cs.LastError = "crash-looping: stopped too often"
			}
			s.Ignored = append(s.Ignored, cs)
		case c.phase == phaseRetired:
			s.Retired = append(s.Retired, cs)
		}
	}
	rn.mu.Unlock()
	evs := rn.changes(now)
	rn.snap.Store(s)
	rn.feed.publish(s, evs)
}

// entry returns the container id's entry in s and the list it is in
// ("serving", "pending", "draining", "ignored" or "retired"; "" when s
// lists it nowhere).
func (s *status) entry(id string) (*ctrStatus, string) {
	if s.Serving != nil && s.Serving.ID == id {
		return s.Serving, "serving"
	}
	for _, l := range []struct {
		name string
		cs   []ctrStatus
	}{{"pending", s.Pending}, {"draining", s.Draining}, {"ignored", s.Ignored}, {"retired", s.Retired}} {
		for i := range l.cs {
			if l.cs[i].ID == id {
				return &l.cs[i], l.name
			}
		}
	}
	return nil, ""
}
