package main

import (
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// The deploy events and wait's verdicts, from the rule and runner in a
// bubble: what the control API streams for a good deploy, one never ready
// and a rollback, and when a waiter on that stream says done or failed.

// feedWatch collects the updates of a subscription to the runner's feed,
// and runs a waiter for target on them.
type feedWatch struct {
	t       *testing.T
	updates <-chan feedUpdate
	events  []deployEvent
	w       *waiter
	done    bool
	err     error
}

func watchFeed(t *testing.T, h *deployHarness, target ctrInfo) *feedWatch {
	last, updates, cancel := h.rn.feed.subscribe()
	t.Cleanup(cancel)
	fw := &feedWatch{t: t, updates: updates, w: &waiter{target: controlContainer{ID: target.id, Created: target.created, Selected: true}}}
	if last != nil {
		fw.take(feedUpdate{status: last})
	}
	return fw
}

// take feeds one update to the waiter, as wait does with the stream's
// lines: the events, then the status.
func (fw *feedWatch) take(u feedUpdate) {
	for _, e := range u.events {
		fw.events = append(fw.events, e)
		if fw.err == nil && !fw.done {
			fw.err = fw.w.event(e)
		}
	}
	if fw.err == nil && !fw.done {
		s := u.status.current(true, time.Now())
		fw.done, fw.err = fw.w.status(&s)
	}
}

// drain takes every update published so far.
func (fw *feedWatch) drain() {
	for {
		select {
		case u := <-fw.updates:
			fw.take(u)
		default:
			return
		}
	}
}

// types lists the events of id, in order.
func (fw *feedWatch) types(id string) []string {
	var ts []string
	for _, e := range fw.events {
		if e.ID == id {
			ts = append(ts, e.Type)
		}
	}
	return ts
}

func wantTypes(t *testing.T, fw *feedWatch, c ctrInfo, want ...string) {
	t.Helper()
	if got := fw.types(c.id); !slices.Equal(got, want) {
		t.Errorf("events of %s: %v; want %v", c.id, got, want)
	}
}

// TestEventsGoodDeploy: checking, ready, swap, draining, retired; the
// waiter is done when the old container is retired at the end of its
// grace period, not before.
func TestEventsGoodDeploy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil) // 10s status timeout, 5s grace
		c1, c2 := deployCtr(1), deployCtr(2)
		h.readyAt(c1, 0)
		h.readyAt(c2, 2*time.Second)
		h.initial(c1)
		fw := watchFeed(t, h, c2)
		h.startedCtr(c2)
		h.sleepUntil(3 * time.Second)
		fw.drain()
		if fw.done || fw.err != nil {
			t.Fatalf("after the swap: done %v, err %v; want waiting for ctr1's grace period", fw.done, fw.err)
		}
		h.sleepUntil(2*time.Second + 5*time.Second + time.Second)
		fw.drain()
		if !fw.done || fw.err != nil {
			t.Fatalf("after ctr1's grace period: done %v, err %v; want done", fw.done, fw.err)
		}
		wantTypes(t, fw, c2, evtChecking, evtReady, evtSwap)
		wantTypes(t, fw, c1, evtDraining, evtRetired)
		for _, e := range fw.events {
			if e.Type == evtSwap && e.Previous != c1.id {
				t.Errorf("swap's previous %q; want %s", e.Previous, c1.id)
			}
		}
	})
}

// TestEventsNeverReady: ignored at the status timeout, with the last
// error; the waiter fails then, not before.
func TestEventsNeverReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil)
		c1, c2 := deployCtr(1), deployCtr(2)
		h.readyAt(c1, 0)
		h.initial(c1)
		fw := watchFeed(t, h, c2)
		h.startedCtr(c2)
		h.sleepUntil(9 * time.Second)
		fw.drain()
		if fw.err != nil {
			t.Fatalf("before the status timeout: %v", fw.err)
		}
		h.sleepUntil(11 * time.Second)
		fw.drain()
		if exitCode(fw.err) != exitFailed || fw.err == nil {
			t.Fatalf("after the status timeout: %v; want a failed deploy", fw.err)
		}
		wantTypes(t, fw, c2, evtChecking, evtIgnored)
		if e := fw.events[len(fw.events)-1]; e.Error != errStillStarting.Error() {
			t.Errorf("ignored event's error %q; want the last readiness error %q", e.Error, errStillStarting)
		}
	})
}

// TestEventsRollback: the new container stops after serving, inside the
// old one's grace period: rollback to the old one, and the waiter fails.
func TestEventsRollback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, func(c *ruleConfig) { c.grace = time.Minute })
		c1, c2 := deployCtr(1), deployCtr(2)
		h.readyAt(c1, 0)
		h.readyAt(c2, 0)
		h.initial(c1)
		fw := watchFeed(t, h, c2)
		h.startedCtr(c2)
		h.sleepUntil(3 * time.Second) // ctr1 answered its watch probe
		h.stoppedCtr(c2)
		fw.drain()
		if exitCode(fw.err) != exitFailed {
			t.Fatalf("after the rollback: %v; want a failed deploy", fw.err)
		}
		wantTypes(t, fw, c1, evtDraining, evtRollback)
		wantTypes(t, fw, c2, evtChecking, evtReady, evtSwap, evtStopped)
	})
}

// TestEventsSuperseded: a newer container serves before the target did.
func TestEventsSuperseded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newDeployHarness(t, nil)
		c1, c2, c3 := deployCtr(1), deployCtr(2), deployCtr(3)
		h.readyAt(c1, 0)
		h.readyAt(c3, 0)
		h.initial(c1)
		fw := watchFeed(t, h, c2)
		h.startedCtr(c2)
		h.startedCtr(c3)
		h.sleepUntil(time.Second)
		fw.drain()
		if exitCode(fw.err) != exitFailed {
			t.Fatalf("after ctr3 serves: %v; want ctr2's deploy failed (superseded)", fw.err)
		}
	})
}
