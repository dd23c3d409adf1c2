package main

import (
	"testing"
	"time"
)

// TestWaiterStatus: wait's verdict from one status document, for the
// states an event stream can miss (wait started late, or reconnected).
func TestWaiterStatus(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := ctrStatus{ID: "old", Container: "old", Created: t0}
	me := ctrStatus{ID: "me", Container: "me", Created: t0.Add(time.Minute)}
	newer := ctrStatus{ID: "newer", Container: "newer", Created: t0.Add(2 * time.Minute)}
	ptr := func(c ctrStatus) *ctrStatus { return &c }
	with := func(c ctrStatus, f func(*ctrStatus)) ctrStatus { f(&c); return c }
	for _, tc := range []struct {
		name     string
		seen     bool
		s        status
		done     bool
		exit     int // of the error; exitOK: none
		wantSeen bool
	}{
		{"not listed yet", false, status{Serving: ptr(old), Events: "connected"}, false, exitOK, false},
		{"listed, then gone", true, status{Serving: ptr(old), Events: "connected"}, false, exitFailed, false},
		{"gone while the proxy reconnects to Docker", true, status{Serving: ptr(old), Events: "reconnecting"}, false, exitOK, true},
		{"checking", false, status{Serving: ptr(old), Pending: []ctrStatus{me}}, false, exitOK, true},
		{"serving, old one draining", false, status{Serving: ptr(me), Draining: []ctrStatus{old}}, false, exitOK, true},
		{"serving, nothing older left", false, status{Serving: ptr(me), Ignored: []ctrStatus{old}}, true, exitOK, true},
		{"superseded after serving, its old one gone", false, status{Serving: ptr(newer), Draining: []ctrStatus{me}}, true, exitOK, true},
		{"superseded before serving", false, status{Serving: ptr(newer), Pending: []ctrStatus{me}}, false, exitFailed, true},
		{"ignored", false, status{Serving: ptr(old), Ignored: []ctrStatus{with(me, func(c *ctrStatus) { c.LastError = "500" })}}, false, exitFailed, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := &waiter{target: controlContainer{ID: me.ID, Created: me.Created}, seen: tc.seen}
			done, err := w.status(&tc.s)
			if done != tc.done || exitCode(err) != tc.exit {
				t.Errorf("got done %v, err %v (exit %d); want done %v, exit %d", done, err, exitCode(err), tc.done, tc.exit)
			}
			if err == nil && w.seen != tc.wantSeen {
				t.Errorf("seen %v; want %v", w.seen, tc.wantSeen)
			}
		})
	}
}
