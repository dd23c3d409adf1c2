package main

import (
	"strconv"
	"testing"
	"time"
)

// TestDockerOneOffNeitherServedNorRemoved (outage 1): with no -status_url,
// -status_port or HEALTHCHECK, a one-off container of the image that does
// not listen on the first mapping's port (a migration, a worker) takes no
// connection, is listed in /status as not serving, and is left running by
// the next deploy, which removes the old container. (Before, it took the
// traffic at once, and the serving container was removed.)
func TestDockerOneOffNeitherServedNorRemoved(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	cfg := testConfig(tag, portMap{80, 80})
	cfg.statusTimeout = 2 * time.Second
	cfg.metricsAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	oneOff := startCtr(t, tag, "-http=", "-echo=:81") // listens, but not on port 80
	p.logs.waitLog(t, 10*time.Second, "ignored: not ready in time", "container", oneOff.short())
	for range 5 {
		if host := whoAnswers(t, p.addrs[0]); host != old.host {
			t.Fatalf("answered by %s; want the serving container %s", host, old.host)
		}
	}
	eventually(t, 5*time.Second, "the one-off listed as ignored in /status", func() bool {
		s := readStatusDoc(t, cfg.metricsAddr)
		return s.serving() == old.short() && statusHas(s.Ignored, oneOff.short())
	})

	nu := startCtr(t, tag)
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	eventually(t, 10*time.Second, "the old container removed", func() bool { return !ctrExists(t, old.id) })
	if !ctrRunning(t, oneOff.id) {
		t.Fatal("the one-off container was removed or stopped; want it left alone")
	}
	if ls := p.logs.lines("removed", "container", oneOff.short()); len(ls) > 0 {
		t.Errorf("the one-off container was retired: %v", ls)
	}
}
