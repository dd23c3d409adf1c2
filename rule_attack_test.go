package main

// Regression tests from an adversarial review of the deploy rule, runner
// and watcher: each is a history that broke a promise of issue 9 or the
// README (they failed on a705b67), plus the simulation run from a daemon
// that already runs containers, with probes in flight.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
)

// faultyAPI wraps the simulation's daemon with faults aimed at one
// container: its inspects fail (or hang until their deadline) while
// failInspect says so.
type faultyAPI struct {
	*simDocker
	mu          sync.Mutex
	failInspect map[string]int // by id: the next n inspects fail; -1: every one
	hangInspect map[string]int // by id: the next n inspects hang until their deadline
}

func (f *faultyAPI) ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error) {
	f.mu.Lock()
	fail, hang := f.failInspect[id], f.hangInspect[id]
	if fail > 0 {
		f.failInspect[id]--
	}
	if hang > 0 {
		f.hangInspect[id]--
	}
	f.mu.Unlock()
	switch {
	case hang > 0:
		<-ctx.Done()
		return container.InspectResponse{}, fmt.Errorf("simulated hung inspect of %s: %w", id, ctx.Err())
	case fail != 0:
		return container.InspectResponse{}, errors.New("simulated: Error response from daemon: container lock timeout")
	}
	return f.simDocker.ContainerInspect(ctx, id)
}

// slowProber delays the probes of some addresses, as a status endpoint or
// a SYN on a busy bridge may take up to statusAttempt.
type slowProber struct {
	d    *simDocker
	mu   sync.Mutex
	slow map[netip.Addr]time.Duration
}

func (p *slowProber) probe(ctx context.Context, ip netip.Addr) error {
	p.mu.Lock()
	delay := p.slow[ip]
	p.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return p.d.probe(ctx, ip)
}

// startAttackSim is startSim with a daemon made (and perhaps populated)
// beforehand, a faulty API in front of it, and a prober of the test's
// choice.
func startAttackSim(t *testing.T, d *simDocker, api dockerAPI, pr prober, cfg ruleConfig) *simRun {
	s := startSimWith(t, rand.New(rand.NewPCG(1, 2)), d, api, pr, cfg, 60)
	s.replay = "go test -run '^" + t.Name() + "$' ."
	return s
}

// Finding A. The proxy restarts while its container has run longer than
// -status_timeout (the usual case: every restart of the proxy, an upgrade,
// a host reboot in which the proxy starts after the app). The start-up
// list gives the container's age from "Up 2 hours", start() sets its
// readiness deadline to now - so settle ignores it in the same step,
// before its first probe goes out, and checks it again only probeSlow
// later. Nothing serves for 5 s on every proxy restart, and the log says
// "ignored: not ready in time" of a container that was never probed.
func TestAttackRestartIgnoresOldContainerBeforeProbing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newSimDocker(0)
		d.mu.Lock()
		a := d.create(simTag, 0, false)
		d.mu.Unlock()
		time.Sleep(time.Hour) // it has run an hour when the proxy starts
		s := startAttackSim(t, d, d, d, outageConfig)
		s.wait(time.Second)
		s.wantServing(a.id)
		if l := s.logs.lines("ignored: not ready in time"); len(l) > 0 {
			t.Errorf("logged %d times that %s was not ready in time, before any probe of it", len(l), a.id)
		}
	})
}

// Finding B. At start-up, pick waits until every listed container had its
// first verdict (awaitFirst). A container paused while its first probe is
// out (docker commit pauses by default; a probe may take up to
// statusAttempt) has that probe's answer dropped by rule.pause (probing =
// false) and awaitFirst is never cleared while it stays paused: pick
// returns nothing, and no container serves - not even the ready one beside
// it - until it is unpaused.
func TestAttackPauseDuringFirstProbeStallsStartup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newSimDocker(0)
		d.mu.Lock()
		a := d.create(simTag, 0, false)
		b := d.create(simTag, 0, false)
		d.mu.Unlock()
		pr := &slowProber{d: d, slow: map[netip.Addr]time.Duration{b.ip: 500 * time.Millisecond}}
		s := startAttackSim(t, d, d, pr, outageConfig)
		time.Sleep(100 * time.Millisecond)
		s.event("b is paused (docker commit) while its first probe is out", b, events.ContainerEventType, events.ActionPause, func(*simDocker) { b.paused = true })
		s.wait(time.Minute)
		s.wantServing(a.id) // a is ready: it should serve while b is paused
	})
}

// Finding D. An inspect that hangs (the daemon holds the container's lock
// during docker cp, a long exec, a stuck shim) is counted as the serving
// container failing its readiness: runner.confirm runs an inspect after
// every watch probe and returns its error as the probe's. Two hung
// inspects of the new container while the old one is in its grace period
// roll traffic back to the old version, which the deploy was meant to
// replace, although the new one answers every probe.
func TestAttackHungInspectRollsBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := outageConfig
		cfg.grace = time.Minute
		d := newSimDocker(0)
		api := &faultyAPI{simDocker: d, failInspect: map[string]int{}, hangInspect: map[string]int{}}
		s := startAttackSim(t, d, api, d, cfg)
		a := s.deploy(0)
		s.wait(time.Second)
		b := s.deploy(0)
		s.wait(time.Second)
		s.wantServing(b.id)
		api.mu.Lock()
		api.hangInspect[b.id] = 2 // b itself answers all along
		api.mu.Unlock()
		s.note("the next 2 inspects of %s hang", b.id)
		s.wait(30 * time.Second)
		s.wantServing(b.id)
		if n := counterValue(t, s.m.rollbacks); n > 0 {
			t.Errorf("%v rollbacks to %s because inspects of %s hung", n, a.id, b.id)
		}
	})
}

// Finding E. watcher.list fails the whole resync on any inspect error but
// not-found. The list also inspects every container whose image is listed
// by id (selector.maybe: any container run from an untagged image, of any
// service). One such container whose inspect keeps failing or hanging (a
// stuck shim; a daemon bug) makes every resync fail, for ever: after the
// next break of the event stream the proxy is blind - a deploy is never
// served, a stop never seen.
func TestAttackOneStuckContainerBlindsWatcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newSimDocker(0)
		api := &faultyAPI{simDocker: d, failInspect: map[string]int{}, hangInspect: map[string]int{}}
		s := startAttackSim(t, d, api, d, outageConfig)
		a := s.deploy(0)
		s.wait(time.Second)
		s.wantServing(a.id)
		var x *simCtr
		s.do("another service's container, run from an image id, whose inspect always fails", func(d *simDocker) {
			x = d.create("sha256:0123456789abcdef", 0, false)
			api.mu.Lock()
			api.failInspect[x.id] = -1
			api.mu.Unlock()
		})
		s.do("the event streams break", func(d *simDocker) { d.breakStreams() })
		b := s.deploy(0)
		s.wait(time.Minute)
		s.wantServing(b.id)
	})
}

// Not a finding against a705b67 but a regression test that does what
// TestOutageClockAheadStaleStop means to: that test passes on 99a2b5c
// too (ported to the old deployer, it passes), since its stale stop is
// delivered 18 s after the resync, which even the old filter (the
// daemon's event time against the proxy's listAt) drops. Here the stale
// stop comes less than the skew after the resync: 99a2b5c applies it and
// cuts the serving container; a705b67 drops it. It passes now.
func TestAttackClockAheadStaleStopSoon(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 5*time.Second)
		var die events.Message
		s.do("the streams break; it restarts meanwhile", func(d *simDocker) {
			d.breakStreams()
			d.die(a)
			die = d.log[len(d.log)-1]
			d.start(a)
		})
		s.wait(2 * time.Second) // resubscribed, listed: its new run serves
		s.wantServing(a.id)
		served := s.route.load()
		s.do("its old die is delivered again", func(d *simDocker) { d.deliver(die) })
		s.wait(time.Second)
		if s.route.load() != served {
			t.Fatalf("the route changed to %q after a stale stop; want %s's backend kept", s.serving(), a.id)
		}
	})
}

// Finding G. The daemon host's clock steps back (NTP correcting a clock
// that ran ahead; a VM resumed; the issue: "a host's clock can step").
// translate drops, without an inspect, any die of a known run whose time
// is before the run's StartedAt: a real stop of the serving container
// right after such a step is taken for a stale replay. The proxy goes on
// dialling the dead container's address, and when Docker gives that
// address to a container of another image, this service's clients go to
// it (invariant 1: outage 7 again).
func TestAttackDaemonClockStepsBackDropsRealStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		s.do("the daemon's clock steps back a minute", func(d *simDocker) {
			d.skew -= time.Minute
			d.last = time.Time{}
		})
		s.wait(time.Second)
		s.do("the serving container dies", func(d *simDocker) { d.die(a) })
		s.wantServing("")
		s.do("a container of another image gets its address", func(d *simDocker) { d.create("other:latest", 0, false) })
		s.wait(time.Second)
	})
}

// simulateFromRunning is the simulation with a daemon that already runs
// containers when the proxy starts (a restart of the proxy), which
// TestSimulate never does: its start-up list is always empty, so the
// start-up clean-up (which removes at once) is never exercised.
func simulateFromRunning(t *testing.T, seed uint64, steps int, slow bool) {
	synctest.Test(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(seed, 0xa77ac4))
		cfg := ruleConfig{statusTimeout: 3 * time.Second, grace: 2 * time.Second, drain: rng.IntN(5) == 0, probes: rng.IntN(3) > 0}
		d := newSimDocker(time.Duration(rng.Int64N(int64(20*time.Second))) - 10*time.Second)
		var pre []string
		d.mu.Lock()
		for range 1 + rng.IntN(4) {
			listen := time.Duration(rng.Int64N(int64(6 * time.Second)))
			if rng.IntN(4) == 0 {
				listen = -1
			}
			c := d.createHC(simTag, listen, rng.IntN(6) == 0, !cfg.probes && rng.IntN(2) == 0)
			if rng.IntN(5) == 0 {
				c.paused = true
			}
			pre = append(pre, fmt.Sprintf("%s listens after %v paused %v hc %v", c.id, listen, c.paused, c.healthcheck))
			d.mu.Unlock()
			time.Sleep(time.Duration(rng.Int64N(int64(5 * time.Second))))
			d.mu.Lock()
			d.healthChecks()
		}
		d.mu.Unlock()
		var pr prober = d
		if slow {
			pr = ipDelayProber{d}
		}
		s := startAttackSim(t, d, d, pr, cfg)
		s.rng = rng
		s.note("seed %d (from running): %v; -drain %v, HEALTHCHECKs decide %v", seed, pre, cfg.drain, !cfg.probes)
		s.run(steps)
	})
}

// ipDelayProber answers as the daemon says, after a delay fixed by the
// address (up to statusAttempt): probes in flight while events arrive,
// which the instant probes of TestSimulate never are.
type ipDelayProber struct{ d *simDocker }

func (p ipDelayProber) probe(ctx context.Context, ip netip.Addr) error {
	b := ip.As4()
	select {
	case <-time.After(time.Duration(int(b[3])*137%1000) * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.d.probe(ctx, ip)
}

func TestAttackSimulateFromRunning(t *testing.T) {
	for _, slow := range []bool{false, true} {
		for seed := uint64(1); seed <= 150; seed++ {
			if !t.Run(fmt.Sprint(slow, seed), func(t *testing.T) { simulateFromRunning(t, seed, 40, slow) }) {
				return
			}
		}
	}
}

// ruleDriver steps a rule by itself: every probe answers at once, and the
// clock jumps to each wake-up the rule asks for.
type ruleDriver struct {
	r      *rule
	now    time.Time
	wake   time.Time
	probes map[string]int
}

func (d *ruleDriver) step(ev any) {
	queue := []any{ev}
	for len(queue) > 0 {
		ev, queue = queue[0], queue[1:]
		for _, a := range d.r.step(ev, d.now) {
			switch a := a.(type) {
			case actProbe:
				d.probes[a.id]++
				queue = append(queue, evProbe{id: a.id, ip: a.ip, started: a.started})
			case actRetire:
				queue = append(queue, evRetire{id: a.id})
			case actWake:
				d.wake = a.at
			}
		}
	}
}

// Finding H. Outage 6 comes back with a long grace period. While a
// rollback is possible the serving container (and the one it replaced) is
// probed 1 s apart doubling to probeWatchMax, a minute, and then every
// minute for the rest of the grace period: each probe a connect and close
// that MariaDB counts as a connection error of the proxy's address. With
// -status_port 3306, no client and -grace_period 2h (long-lived
// connections are why one sets a long grace), that is about 125 probes,
// past max_connect_errors (100): the new server blocks every proxied
// client. The MariaDB docker test uses a 30 s grace period: 5 probes.
func TestAttackLongGraceProbesBlockMariaDB(t *testing.T) {
	cfg := ruleConfig{statusTimeout: 10 * time.Second, grace: 2 * time.Hour, probes: true}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &ruleDriver{r: newRule(cfg, slog.New(slog.DiscardHandler), newMetrics([]portMap{{3306, 3306}})), now: t0, probes: map[string]int{}}
	old := ctrInfo{id: "old", created: t0, started: t0, ip: netip.MustParseAddr("172.17.0.2")}
	d.step(evList{ctrs: []ctrInfo{old}, initial: true})
	d.now = t0.Add(time.Minute)
	nu := ctrInfo{id: "new", created: d.now, started: d.now, ip: netip.MustParseAddr("172.17.0.3")}
	d.step(evStart{ctr: nu})
	if d.r.routed != nu.id {
		t.Fatalf("routed %q; want %q", d.r.routed, nu.id)
	}
	before := d.probes[nu.id] // its readiness check
	for end := d.now.Add(cfg.grace); !d.wake.IsZero() && d.wake.Before(end); {
		d.now = d.wake
		d.step(evTick{})
	}
	if n := d.probes[nu.id] - before; n >= 100 {
		t.Errorf("%d probes of the serving container, no client, during a %v grace period; MariaDB blocks the proxy's address at 100", n, cfg.grace)
	}
}

// TestWatcherKeepsDialledNetwork: without -network and the default bridge,
// connecting the serving container to one more network moved the address
// the proxy dials to the new network (the first by name), and the rule
// took that for a new run: every connection cut. The network an address
// was taken on is kept while the container still has an address there.
func TestWatcherKeepsDialledNetwork(t *testing.T) {
	w := &watcher{dialed: map[string]string{}}
	nets := map[string]*network.EndpointSettings{"shop_default": {IPAddress: "172.18.0.2"}}
	ns := &container.NetworkSettings{Networks: nets}
	before, chosen, _, err := containerIP(ns, w.keptNetwork("web1", ns))
	if err != nil {
		t.Fatal(err)
	}
	w.dialed["web1"] = chosen
	nets["monitoring"] = &network.EndpointSettings{IPAddress: "172.19.0.7"} // first by name
	after, _, _, err := containerIP(ns, w.keptNetwork("web1", ns))
	if err != nil || after != before {
		t.Fatalf("after docker network connect monitoring: dialing %v, %v; want %v still", after, err, before)
	}
	delete(nets, "shop_default") // now it is gone from the first network
	moved, _, _, err := containerIP(ns, w.keptNetwork("web1", ns))
	if err != nil || moved.String() != "172.19.0.7" {
		t.Fatalf("after disconnecting shop_default: dialing %v, %v; want the address on monitoring", moved, err)
	}
}

// Readiness flapping was not damped: only stops counted towards
// crashStops. A new container that fails two watch probes now and then
// (a GC pause, a full connection pool) is rolled back, checked again
// every probeSlow, swapped in again as soon as it answers once, and each
// swap restarts the old container's grace period (startRetiring), so the
// old one is never retired and traffic swaps for ever.
func TestAttackReadinessFlapNotDamped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cfg := outageConfig
		cfg.grace = time.Minute
		d := newSimDocker(0)
		s := startAttackSim(t, d, d, d, cfg)
		a := s.deploy(0)
		s.wait(time.Second)
		s.wantServing(a.id)
		b := s.deploy(0)
		s.wait(time.Second)
		s.wantServing(b.id)
		for range 30 { // 5 minutes: b fails for 4 s in every 10
			s.do("b stalls", func(d *simDocker) { b.unready = true })
			s.wait(4 * time.Second)
			s.do("b answers again", func(d *simDocker) { b.unready = false })
			s.wait(6 * time.Second)
		}
		swaps, rollbacks := counterValue(t, s.m.swaps), counterValue(t, s.m.rollbacks)
		if rollbacks > crashStops {
			t.Errorf("%v swaps and %v rollbacks in 5 minutes of a flaky container; want it damped after %d", swaps, rollbacks, crashStops)
		}
		s.wantServing(a.id) // the flaky one is held off; the old one serves
	})
}

// TestOutageWedgedEventStream: a daemon that stops sending events without
// closing the stream (wedged, or a proxy in front of it) hid every deploy
// from then on. The watcher lists now and then (resyncEvery) and serves
// the deploy it missed.
func TestOutageWedgedEventStream(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, a := newServingSim(t, 0)
		var b *simCtr
		s.do("a deploy whose events never reach the proxy, the stream still open", func(d *simDocker) {
			d.drop = 4
			b = d.create(simTag, 0, false)
		})
		s.wait(time.Minute)
		s.wantServing(a.id) // nothing told it yet
		s.wait(resyncEvery)
		s.wantServing(b.id)
	})
}
