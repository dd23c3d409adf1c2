package main

// Regression tests of the outages of issue 9, as scripted histories on the
// simulation's fake daemon (sim_test.go): the real watcher, rule and
// runner, fake time, and the simulation's invariants checked after every
// step. Outage 1 is also tested against the real daemon
// (TestDockerOneOffNeitherServedNorRemoved), outage 12's HEALTHCHECK in
// readiness_docker_test.go.

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// outageConfig is the rule's config in these tests.
var outageConfig = ruleConfig{statusTimeout: 3 * time.Second, grace: 5 * time.Second, probes: true}

func newOutageSim(t *testing.T, skew time.Duration) *simRun {
	s := startSim(t, rand.New(rand.NewPCG(1, 2)), skew, outageConfig)
	s.replay = "go test -run '^" + t.Name() + "$' ."
	return s
}

// newServingSim starts a simulation in which container a serves.
func newServingSim(t *testing.T, skew time.Duration) (s *simRun, a *simCtr) {
	t.Helper()
	s = newOutageSim(t, skew)
	a = s.deploy(0)
	s.wait(time.Second)
	s.wantServing(a.id)
	return s, a
}

// do changes the daemon, then lets the proxy settle and checks the
// invariants.
func (s *simRun) do(what string, f func(d *simDocker)) {
	s.t.Helper()
	s.d.mu.Lock()
	f(s.d)
	s.d.mu.Unlock()
	s.note("%s", what)
	synctest.Wait()
	s.check()
}

// event changes c with f and sends the event that says so.
func (s *simRun) event(what string, c *simCtr, typ events.Type, action events.Action, f func(d *simDocker)) {
	s.t.Helper()
	s.do(what, func(d *simDocker) {
		f(d)
		d.emit(typ, action, c)
	})
}

// wait lets time pass, checking the invariants.
func (s *simRun) wait(d time.Duration) {
	s.t.Helper()
	time.Sleep(d)
	synctest.Wait()
	s.check()
}

func (s *simRun) serving() string {
	if b := s.route.load(); b != nil {
		return b.id
	}
	return ""
}

func (s *simRun) wantServing(id string) {
	s.t.Helper()
	if got := s.serving(); got != id {
		s.t.Errorf("at %v: serving %q; want %q", time.Since(s.start), got, id)
	}
}

func (s *simRun) exists(id string) bool {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	return s.d.ctrs[id] != nil
}

// deploy starts a container of the tag that answers after listen
// (negative: never).
func (s *simRun) deploy(listen time.Duration) *simCtr {
	var c *simCtr
	s.do("deploy", func(d *simDocker) { c = d.create(simTag, listen, false) })
	return c
}

// Outage 1: a one-off container of the image (it does not listen) takes
// no traffic, and is never removed, even when a deploy clears older
// containers away.
func TestOutageOneOffContainer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		oneOff := s.deploy(-1)
		s.wait(time.Minute)
		s.wantServing(a.id)
		b := s.deploy(0)
		s.wait(time.Minute)
		s.wantServing(b.id)
		if s.exists(a.id) || !s.exists(oneOff.id) {
			t.Errorf("old container exists %v, one-off exists %v; want only the one-off left", s.exists(a.id), s.exists(oneOff.id))
		}
	})
}

// Outage 2: an inspect that fails during a resync fails the resync, which
// is retried; the serving container is not taken as gone.
func TestOutageResyncInspectFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		served := s.route.load()
		s.do("the stream breaks, the next inspect fails", func(d *simDocker) {
			d.fail[callInspect] = 1
			d.breakStreams()
		})
		for range 20 {
			s.wait(500 * time.Millisecond)
			if s.route.load() != served {
				t.Fatalf("at %v: the route changed to %q; want %s's backend kept", time.Since(s.start), s.serving(), a.id)
			}
		}
	})
}

// Outage 3, the daemon's clock ahead: a stop replayed from before the
// list, of a container that runs again, is not applied.
func TestOutageClockAheadStaleStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newOutageSim(t, 5*time.Second)
		a := s.deploy(0)
		s.do("it restarts", func(d *simDocker) {
			d.die(d.ctrs[a.id])
			d.start(d.ctrs[a.id])
		})
		s.wait(time.Second)
		served := s.route.load()
		if served == nil {
			t.Fatal("nothing serves")
		}
		for range 3 {
			s.do("the stream breaks", func(d *simDocker) { d.breakStreams() })
			s.wait(6 * time.Second) // it resubscribes, and the daemon replays from Since
			if s.route.load() != served {
				t.Fatalf("the route changed to %q after a replay; want %s's backend kept", s.serving(), a.id)
			}
		}
		s.do("an old stop is replayed", func(d *simDocker) {
			for _, ev := range d.log {
				if ev.Action == events.ActionDie {
					d.deliver(ev)
				}
			}
		})
		if s.route.load() != served {
			t.Fatalf("the route changed to %q after a replayed stop; want %s's backend kept", s.serving(), a.id)
		}
	})
}

// Outage 3, the daemon's clock behind: a real stop just after a resync is
// applied.
func TestOutageClockBehindRealStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, -5*time.Second)
		s.do("the stream breaks", func(d *simDocker) { d.breakStreams() })
		s.wait(time.Second) // resubscribed, listed
		s.do("the serving container dies", func(d *simDocker) { d.die(d.ctrs[a.id]) })
		s.wantServing("")
	})
}

// Outage 4: a failed removal is retried with backoff, logged once, and
// counted.
func TestOutageRemovalRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		s.do("the next 3 removals fail", func(d *simDocker) { d.fail[callRemove] = 3 })
		b := s.deploy(0)
		s.wait(time.Second)
		s.wantServing(b.id)
		s.wait(time.Minute)
		if s.exists(a.id) {
			t.Fatalf("%s still exists a minute after its grace period", a.id)
		}
		if n := len(s.logs.lines("retire failed")); n != 1 {
			t.Errorf("logged %d retire failures at error level; want 1", n)
		}
		if n := counterValue(t, s.m.removalFailures); n != 3 {
			t.Errorf("docker_proxy_removal_failures_total %v; want 3", n)
		}
	})
}

// Outage 5: a Docker call that hangs is an error at its deadline; the
// watcher retries, and a deploy made meanwhile is picked up.
func TestOutageHungCalls(t *testing.T) {
	for _, call := range []simCall{callList, callInspect} {
		t.Run(string(call), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, _ := newServingSim(t, 0)
				s.do("the next call hangs; the stream breaks", func(d *simDocker) {
					d.hang[call] = 1
					d.breakStreams()
				})
				b := s.deploy(0)
				s.wait(dockerTimeout + maxBackoff + time.Second)
				s.wantServing(b.id)
			})
		})
	}
}

// Outage 7: after a network disconnect of the serving container, its
// address is no longer dialled, even when a container of another image
// gets it.
func TestOutageNetworkDisconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		s.event("the serving container is disconnected", a, events.NetworkEventType, events.ActionDisconnect, func(d *simDocker) { a.ip = netipNone })
		s.wantServing("")
		s.do("another image's container gets its address", func(d *simDocker) { d.create("other:latest", 0, false) })
		s.wait(time.Minute)
		s.wantServing("")
		s.event("it is connected again", a, events.NetworkEventType, events.ActionConnect, func(d *simDocker) { a.ip = d.freeIP() })
		s.wait(time.Second)
		s.wantServing(a.id)
	})
}

// Outage 7, while the event stream cannot tell: a container whose address
// went to a container of another image, unseen, is not taken for ready
// when that one answers the probe. Found by the simulation at once.
func TestOutageAddressReusedUnseen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		b := s.deploy(-1) // never answers: ignored, checked every probeSlow
		s.wait(outageConfig.statusTimeout + time.Second)
		s.do("it is disconnected and another image's container gets its address; the events are lost", func(d *simDocker) {
			d.drop = 2
			ip := b.ip
			b.ip = netipNone
			d.emit(events.NetworkEventType, events.ActionDisconnect, b)
			d.create("other:latest", 0, false)
			if d.ctrs["c003"].ip != ip {
				t.Fatalf("the other container got %v; want %v", d.ctrs["c003"].ip, ip)
			}
		})
		s.wait(time.Minute)
		s.wantServing(a.id)
	})
}

// Outage 8: a rollback goes only to a ready container, and a container
// ignored for a stall keeps being checked and serves once ready.
func TestOutageRollbackTargetMustBeReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		b := s.deploy(0)
		s.wait(time.Second)
		s.wantServing(b.id)
		s.do("the old one answers 503", func(d *simDocker) { d.ctrs[a.id].unready = true })
		s.wait(probeWatch) // its verdict is at most this old
		s.do("the new one crashes", func(d *simDocker) { d.die(d.ctrs[b.id]) })
		s.wait(time.Second)
		s.wantServing("")
		s.do("the old one is well again", func(d *simDocker) { d.ctrs[a.id].unready = false })
		s.wait(time.Second)
		s.wantServing(a.id)
	})
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		b := s.deploy(outageConfig.statusTimeout + 2*time.Second) // stalls past its status timeout
		s.wait(outageConfig.statusTimeout + time.Second)
		s.wantServing(a.id)
		s.wait(probeSlow + 2*time.Second)
		s.wantServing(b.id)
		s.do("the old one stops", func(d *simDocker) { d.die(d.ctrs[a.id]) })
		s.wantServing(b.id)
	})
}

// A restart the proxy did not see (its events lost) is a run it has not
// inspected: a probe the new run answers is not taken for the old run's
// readiness. Found by the simulation (a seed of make simulate).
func TestOutageUnseenRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		b := s.deploy(5 * time.Second) // ignored at its status timeout, 3s
		s.wait(4 * time.Second)
		s.do("it restarts; the two events are lost", func(d *simDocker) {
			d.drop = 2
			d.die(b)
			d.start(b)
		})
		s.wait(time.Minute)
		s.wantServing(a.id)
		s.do("the stream breaks", func(d *simDocker) { d.breakStreams() })
		s.wait(10 * time.Second)
		s.wantServing(b.id)
	})
}

// A container whose restart the proxy learns from a list, already healthy,
// serves at its new address: the old run's backend leaves the route even
// though the same container serves again in the same step. Found by the
// simulation under -race.
func TestOutageRestartSeenInList(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := outageConfig
		cfg.probes = false // its HEALTHCHECK decides
		s := startSim(t, rand.New(rand.NewPCG(1, 2)), 0, cfg)
		var a *simCtr
		s.do("deploy with a HEALTHCHECK", func(d *simDocker) { a = d.createHC(simTag, 0, false, true) })
		s.healthChecks()
		s.wantServing(a.id)
		s.do("it restarts at another address; the events are lost", func(d *simDocker) {
			d.drop = 3
			d.die(a)
			d.create("other:latest", -1, false) // takes its address
			d.start(a)
		})
		s.healthChecks()
		s.do("the stream breaks", func(d *simDocker) { d.breakStreams() })
		s.wait(time.Second)
		b := s.route.load()
		if b == nil || b.id != a.id || b.ip != a.ip {
			got := "none"
			if b != nil {
				got = b.id + " at " + b.ip.String()
			}
			t.Errorf("serving %s; want %s at its new address %v", got, a.id, a.ip)
		}
	})
}

// Outage 9: a paused container is not ready; unpaused, it is checked and
// serves again.
func TestOutagePause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		s.event("paused", a, events.ContainerEventType, events.ActionPause, func(*simDocker) { a.paused = true })
		s.wantServing("")
		s.event("unpaused", a, events.ContainerEventType, events.ActionUnPause, func(*simDocker) { a.paused = false })
		s.wantServing(a.id)
	})
}

// A replayed pause (or health) event that is no longer true does not
// stick: the daemon sends them only on a change.
func TestOutageReplayedPause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		s.event("paused", a, events.ContainerEventType, events.ActionPause, func(*simDocker) { a.paused = true })
		s.event("unpaused", a, events.ContainerEventType, events.ActionUnPause, func(*simDocker) { a.paused = false })
		s.wantServing(a.id)
		s.do("the pause is replayed", func(d *simDocker) {
			for _, ev := range d.log {
				if ev.Action == events.ActionPause {
					d.deliver(ev)
				}
			}
		})
		s.wait(time.Minute)
		s.wantServing(a.id)
	})
}

// A HEALTHCHECK container that became healthy while paused (its event
// lost), then served, is retired once a newer one serves. Found by make
// simulate: the unpause made it ready without counting it as ever ready,
// so it was never retired.
func TestOutageHealthyWhilePaused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := outageConfig
		cfg.probes = false
		s := startSim(t, rand.New(rand.NewPCG(1, 2)), 0, cfg)
		var a *simCtr
		s.do("deploy with a HEALTHCHECK", func(d *simDocker) { a = d.createHC(simTag, 0, false, true) })
		s.do("it turns healthy; the event is lost", func(d *simDocker) {
			d.drop = 1
			d.healthChecks()
		})
		s.event("paused", a, events.ContainerEventType, events.ActionPause, func(*simDocker) { a.paused = true })
		s.event("unpaused", a, events.ContainerEventType, events.ActionUnPause, func(*simDocker) { a.paused = false })
		s.wantServing(a.id)
		s.event("paused again", a, events.ContainerEventType, events.ActionPause, func(*simDocker) { a.paused = true })
		var b *simCtr
		s.do("a newer one", func(d *simDocker) { b = d.createHC(simTag, 0, false, true) })
		s.healthChecks()
		s.wantServing(b.id)
		s.wait(cfg.grace + time.Second)
		if s.exists(a.id) {
			t.Errorf("%s, which served, still exists a grace period after %s took over", a.id, b.id)
		}
	})
}

// Outage 10: a crash-looping container is damped: after a few stops in a
// short time it gets no traffic until it stays up.
func TestOutageCrashLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		var b *simCtr
		s.do("a crash-looper is deployed", func(d *simDocker) { b = d.create(simTag, 100*time.Millisecond, true) })
		for range 8 {
			s.wait(time.Second)
			s.do("it crashes and restarts", func(d *simDocker) {
				restarted(s, d.ctrs[b.id])
				d.die(d.ctrs[b.id])
				d.start(d.ctrs[b.id])
			})
		}
		if n := counterValue(t, s.m.swaps); n > crashStops {
			t.Errorf("%v swaps in 8 restarts; want at most %d", n, crashStops)
		}
		s.wait(time.Second)
		s.wantServing(a.id)
		s.wait(crashHold + probeSlow)
		s.wantServing(b.id) // it stayed up
	})
}

// Outage 11: a serving container removed by someone else is logged.
func TestOutageRemovedBySomeoneElse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		s.do("someone else removes it", func(d *simDocker) { d.destroy(d.ctrs[a.id]) })
		if len(s.logs.lines("a container the proxy serves was removed by someone else", "container", a.id)) != 1 {
			t.Error("no warning that someone else removed the serving container")
		}
	})
}

// Outage 12: a container that joins a network after it started is
// followed; and -status_timeout counts from its start.
func TestOutageNetworkAfterStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newOutageSim(t, 0)
		var a *simCtr
		s.do("started with no network", func(d *simDocker) {
			a = d.create(simTag, 0, false)
			a.ip = netipNone
		})
		s.event("connected", a, events.NetworkEventType, events.ActionConnect, func(d *simDocker) { a.ip = d.freeIP() })
		s.wait(time.Second)
		s.wantServing(a.id)
	})
}

var netipNone netip.Addr

// counterValue reads a Prometheus counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
