package main

import (
	"sync"
	"time"
)

// Deploy events: what changed in the rule's records, as the control API
// streams it to docker-proxy wait and deploy. They are read off the
// records after each step, not told by the rule, so the rule stays a pure
// transition and no change can go unreported.

// Event types.
const (
	evtChecking     = "checking"      // a new run of a container: its readiness is checked
	evtReady        = "ready"         // it answered (or turned healthy) for the first time
	evtServing      = "serving"       // it serves, where none served before
	evtSwap         = "swap"          // it serves instead of an older one (Previous)
	evtRollback     = "rollback"      // it serves again instead of a newer one that failed (Previous)
	evtUnrouted     = "unrouted"      // no container serves: new connections wait for one
	evtIgnored      = "ignored"       // not ready in time, failing after serving, or crash-looping
	evtDraining     = "draining"      // its grace period started
	evtRetired      = "retired"       // removed, stopped or left, as -retire says
	evtRetireFailed = "retire_failed" // a retirement failed; it is retried
	evtStopped      = "stopped"       // it stopped or was removed, not by the proxy
)

// deployEvent is one line of the control API's event stream.
type deployEvent struct {
	Time      time.Time `json:"time"`
	Type      string    `json:"type"`
	ID        string    `json:"id"`
	Container string    `json:"container"` // the short id
	Name      string    `json:"name,omitempty"`
	Addr      string    `json:"addr,omitempty"`
	Previous  string    `json:"previous,omitempty"` // swap, rollback: the id that served before
	Error     string    `json:"error,omitempty"`    // ignored, retire_failed: the last error
	Reason    string    `json:"reason,omitempty"`   // retired: why
}

// seenRecord is what changes tells events from.
type seenRecord struct {
	phase     phase
	everReady bool
	failures  int
	info      ctrInfo
	why       string
}

// changes returns the events since its last call, and remembers the
// records as they are now. It runs on the runner's goroutine, as step does.
func (rn *runner) changes(now time.Time) []deployEvent {
	var evs []deployEvent
	ev := func(typ string, info ctrInfo) *deployEvent {
		evs = append(evs, deployEvent{Time: now, Type: typ, ID: info.id, Container: info.short(), Name: info.name, Addr: addrString(info)})
		return &evs[len(evs)-1]
	}
	cur := make(map[string]seenRecord, len(rn.rule.ctrs))
	for _, c := range rn.rule.sorted() {
		was, known := rn.seen[c.id]
		cur[c.id] = seenRecord{c.phase, c.everReady, c.failures, c.ctrInfo, c.why}
		if !known || !was.info.started.Equal(c.started) {
			if c.phase == phaseIgnored {
				ev(evtIgnored, c.ctrInfo).Error = "crash-looping: stopped too often"
			} else {
				ev(evtChecking, c.ctrInfo)
			}
		}
		if c.everReady && !was.everReady {
			ev(evtReady, c.ctrInfo)
		}
		if c.phase == was.phase && known {
			if c.failures > was.failures {
				e := ev(evtRetireFailed, c.ctrInfo)
				e.Reason = c.why
			}
			continue
		}
		switch c.phase {
		case phaseIgnored:
			if known {
				e := ev(evtIgnored, c.ctrInfo)
				if c.lastErr != nil {
					e.Error = c.lastErr.Error()
				}
			}
		case phaseRetiring:
			ev(evtDraining, c.ctrInfo)
		case phaseRetired:
			ev(evtRetired, c.ctrInfo).Reason = c.why
		}
	}
	if routed := rn.rule.routed; routed != rn.lastRouted {
		prev := rn.seen[rn.lastRouted].info
		if c := rn.rule.ctrs[routed]; c == nil {
			ev(evtUnrouted, ctrInfo{})
		} else {
			typ := evtServing
			switch {
			case rn.lastRouted == "":
			case newer(c.ctrInfo, prev):
				typ = evtSwap
			default:
				typ = evtRollback
			}
			ev(typ, c.ctrInfo).Previous = rn.lastRouted
		}
		rn.lastRouted = routed
	}
	for id, was := range rn.seen {
		if _, ok := cur[id]; ok {
			continue
		}
		switch was.phase {
		case phaseRemoving:
			ev(evtRetired, was.info).Reason = was.why
		case phaseRetired:
		default:
			ev(evtStopped, was.info)
		}
	}
	rn.seen = cur
	return evs
}

func addrString(c ctrInfo) string {
	if !c.ip.IsValid() {
		return ""
	}
	return c.ip.String()
}

// feed hands the status and its events to the control API's listeners.
// A listener that falls behind by feedBuffer updates is dropped (its
// stream ends, and a client such as wait reconnects): the runner never
// waits for one.
type feed struct {
	mu   sync.Mutex
	last *status
	subs map[chan feedUpdate]struct{}
}

// feedUpdate is what one step changed: the events, then the status after
// them.
type feedUpdate struct {
	events []deployEvent
	status *status
}

const feedBuffer = 256

func (f *feed) publish(s *status, evs []deployEvent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = s
	if len(evs) == 0 {
		return
	}
	for ch := range f.subs {
		select {
		case ch <- feedUpdate{evs, s}:
		default:
			delete(f.subs, ch)
			close(ch)
		}
	}
}

// subscribe returns the status now and a channel of the updates after it;
// cancel ends the subscription.
func (f *feed) subscribe() (*status, <-chan feedUpdate, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan feedUpdate, feedBuffer)
	if f.subs == nil {
		f.subs = make(map[chan feedUpdate]struct{})
	}
	f.subs[ch] = struct{}{}
	return f.last, ch, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.subs[ch]; ok {
			delete(f.subs, ch)
			close(ch)
		}
	}
}
