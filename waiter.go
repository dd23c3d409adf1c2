package main

import (
	"fmt"
	"time"
)

// waiter decides, from the control API's events and status documents,
// whether the deploy of one container is done, failed, or goes on. It is
// pure: wait feeds it what the stream says.
//
// Done: the container served, and no container older than it still
// drains (they are retired; an older one that was never ready is left
// alone by the proxy, and not waited for). Failed: it was ignored, rolled
// back from, stopped, or superseded by a newer container before it
// served.
type waiter struct {
	target controlContainer
	seen   bool // the proxy listed it (since the stream was last opened)
	served bool
	last   *status
}

// reconnected forgets what only the lost stream told: a new proxy may not
// have listed the container yet.
func (w *waiter) reconnected() { w.seen = false }

func (w *waiter) event(e deployEvent) error {
	who := w.target.describe()
	if e.ID != w.target.ID {
		if e.Type == evtRollback && e.Previous == w.target.ID {
			return failf(exitFailed, "rolled back: %s failed after serving, and %s serves again", who, e.Container)
		}
		return nil
	}
	switch e.Type {
	case evtServing, evtSwap, evtRollback:
		w.served = true
	case evtIgnored:
		return w.ignored(e.Error)
	case evtStopped:
		return failf(exitFailed, "%s stopped before its deploy finished", who)
	case evtRetired:
		return failf(exitFailed, "%s was retired (%s) before its deploy finished", who, e.Reason)
	}
	return nil
}

func (w *waiter) ignored(why string) error {
	who := w.target.describe()
	if w.served {
		return failf(exitFailed, "rolled back: %s failed after serving: %s", who, orUnknown(why))
	}
	timeout := "-status_timeout"
	if w.last != nil {
		timeout += " " + w.last.Settings.StatusTimeout
	}
	return failf(exitFailed, "%s was ignored: not ready within %s: %s", who, timeout, orUnknown(why))
}

func orUnknown(s string) string {
	if s == "" {
		return "no error recorded"
	}
	return s
}

// find returns the target's entry in s and the list it is in.
func (w *waiter) find(s *status) (*ctrStatus, string) { return s.entry(w.target.ID) }

// status takes a status document: whether the deploy is done, or an error
// when it failed.
func (w *waiter) status(s *status) (bool, error) {
	w.last = s
	me, where := w.find(s)
	switch where {
	case "":
		if w.seen && s.Events == "connected" {
			return false, failf(exitFailed, "%s is gone: it stopped before its deploy finished", w.target.describe())
		}
		return false, nil
	case "serving", "draining", "retired":
		w.served = true // only a container that served drains or is retired
	case "ignored":
		return false, w.ignored(me.LastError)
	}
	w.seen = true
	if !w.served {
		if s.Serving != nil && s.Serving.Created.After(w.target.Created) {
			return false, failf(exitFailed, "superseded: %s serves, a newer container than %s, which never served", s.Serving.Container, w.target.describe())
		}
		return false, nil
	}
	// Pending again after serving: a restarted proxy checks every
	// container anew, the old one too, and may yet roll back to it.
	return where != "pending" && w.older(s) == nil, nil
}

// older returns an older container that still drains, if any.
func (w *waiter) older(s *status) *ctrStatus {
	for i, d := range s.Draining {
		if d.ID != w.target.ID && d.Created.Before(w.target.Created) {
			return &s.Draining[i]
		}
	}
	return nil
}

// waitLine is what wait shows while it waits: key changes when what it
// waits for does (a new plain line), text also when the figures do.
type waitLine struct{ key, text string }

func (w *waiter) progress(now time.Time) waitLine {
	who := w.target.describe()
	s := w.last
	if s == nil {
		return waitLine{"connect", "waiting for the proxy's state"}
	}
	stream := ""
	if s.Events != "connected" {
		stream = " (the proxy is reconnecting to Docker's event stream)"
	}
	me, where := w.find(s)
	switch {
	case where == "":
		return waitLine{"unseen", fmt.Sprintf("waiting for the proxy to see %s start%s", who, stream)}
	case !w.served || where == "pending":
		text := fmt.Sprintf("waiting for %s to become ready: checked for %s", who, now.Sub(me.Seen).Round(time.Second))
		if me.Deadline != nil {
			text += fmt.Sprintf(", ignored in %s", me.Deadline.Sub(now).Round(time.Second).String())
		}
		if me.LastError != "" {
			text += ", last error: " + me.LastError
		}
		return waitLine{"ready", text + stream}
	}
	old := w.older(s)
	if old == nil {
		return waitLine{"done", who + " serves"}
	}
	text := fmt.Sprintf("%s serves; waiting for %s to be retired: %d open connections", who, old.Container, old.Connections)
	if old.Deadline != nil {
		text += fmt.Sprintf(", %s of its grace period left", max(old.Deadline.Sub(now), 0).Round(time.Second))
	} else {
		text += ", being retired"
	}
	return waitLine{"retire " + old.ID, text + stream}
}
