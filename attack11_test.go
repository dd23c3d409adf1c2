package main

import (
	"testing"
	"time"
)

// TestAttackWaiterProxyRestartedMidDeploy: the proxy restarts while the
// old container drains. The new proxy checks every container again (both
// pending, the old one not yet retired): wait must not call that done.
func TestAttackWaiterProxyRestartedMidDeploy(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := ctrStatus{ID: "old", Container: "old", Created: t0}
	me := ctrStatus{ID: "me", Container: "me", Created: t0.Add(time.Minute)}
	w := &waiter{target: controlContainer{ID: me.ID, Created: me.Created}}
	if done, err := w.status(&status{Serving: &me, Draining: []ctrStatus{old}, Events: "connected"}); done || err != nil {
		t.Fatalf("serving, old one draining: done %v, err %v", done, err)
	}
	w.reconnected() // the proxy restarted
	s := &status{Pending: []ctrStatus{me, old}, Events: "connected"}
	if done, err := w.status(s); done || err != nil {
		t.Fatalf("after a restart, both checked again, the old one still there: done %v, err %v; want not done yet", done, err)
	}
}
