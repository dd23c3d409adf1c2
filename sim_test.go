package main

// The deterministic simulation: the real watcher, rule and runner against
// the fake daemon of simdocker_test.go, in a synctest bubble, through a
// history generated from a seed. After every step it checks:
//
//  1. the backend is a container of the selection that is running, not
//     paused, still holds the dialled address, and was ready; or none
//     (checked whenever the proxy can know: the event stream is up and no
//     fault is pending);
//  2. the proxy never removes a container of another image, the serving
//     one, or one that never became ready;
//  3. once the history goes quiet, within a bounded (virtual) time the
//     newest ready container serves and every older container that served
//     (in its current run: a restart or a new address is a new run) has
//     been retired;
//  4. every retirement of a container that served happens a grace period
//     after it stopped serving (with -drain: after it stopped serving);
//  5. nothing leaks: synctest.Test fails if a goroutine of the bubble is
//     left blocked once the proxy has stopped.
//
// make test runs a few hundred seeds; make simulate runs more for as long
// as asked. A failing seed prints its history and replays with
// -simulate.seed; each one found goes into simRegressions.

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/docker/docker/api/types/events"
)

var (
	simSeeds    = flag.Int("simulate.seeds", 300, "simulation: how many seeds to run")
	simSeed     = flag.Uint64("simulate.seed", 0, "simulation: run only this seed (replay a failure)")
	simDuration = flag.Duration("simulate.duration", 0, "simulation: run random seeds for this long instead")
	simSteps    = flag.Int("simulate.steps", 60, "simulation: steps per history")
)

// simRegressions are seeds that once failed. A seed replays its history
// only as long as the generator draws the same way: a failure found before
// a change of step is kept as a scripted test in outage_test.go instead.
var simRegressions = []uint64{
	1796163249711726856, // TestOutageHealthyWhilePaused
	59,                  // a paused container that served, handed over without "served": removed at once, not after its grace
	1796173066806567107, // a successor's first route, to the container the predecessor routed, taken for a new one serving
}

const simTag = "app:latest"

func TestSimulate(t *testing.T) {
	run := func(seed uint64) bool {
		return t.Run(fmt.Sprint(seed), func(t *testing.T) { simulate(t, seed, *simSteps) })
	}
	switch {
	case *simSeed != 0:
		run(*simSeed)
	case *simDuration > 0:
		seed := uint64(time.Now().UnixNano())
		n := 0
		for end := time.Now().Add(*simDuration); time.Now().Before(end); seed++ {
			n++
			if !run(seed) {
				break
			}
		}
		t.Logf("%d seeds from %d", n, seed-uint64(n)+1)
	default:
		for _, seed := range simRegressions {
			run(seed)
		}
		for seed := uint64(1); seed <= uint64(*simSeeds); seed++ {
			run(seed)
		}
	}
}

// simRun is one history being run.
type simRun struct {
	t     *testing.T
	rng   *rand.Rand
	d     *simDocker
	route *router
	cfg   ruleConfig
	start time.Time

	logs   *logBuffer
	m      *metrics
	replay string // how to run this history again

	// The proxy's watcher and runner, and what they are made of: a
	// restart (see restartProxy) makes new ones that inherit the rule's
	// records, as a hand-over does.
	api      dockerAPI
	pr       prober
	log      *slog.Logger
	ports    []portMap
	rn       *runner
	stop     context.CancelFunc
	proxyWG  sync.WaitGroup
	restarts *rand.Rand // nil: the proxy is never restarted

	mu       sync.Mutex
	served   map[string]bool      // containers that served in their current run
	leftAt   map[string]time.Time // when each stopped serving
	routed   string
	routedIP netip.Addr
	history  []string
	checked  int // removals checked so far
}

func (s *simRun) note(format string, args ...any) {
	s.history = append(s.history, fmt.Sprintf("%8v  ", time.Since(s.start).Truncate(time.Millisecond))+fmt.Sprintf(format, args...))
}

func simulate(t *testing.T, seed uint64, steps int) {
	synctest.Test(t, func(t *testing.T) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		skew := []time.Duration{0, -5 * time.Second, 5 * time.Second, time.Duration(rng.Int64N(int64(time.Minute))) - 30*time.Second}[rng.IntN(4)]
		cfg := ruleConfig{statusTimeout: 3 * time.Second, grace: 2 * time.Second, drain: rng.IntN(5) == 0, probes: rng.IntN(3) > 0}
		s := startSim(t, rng, skew, cfg)
		s.restarts = rand.New(rand.NewPCG(seed, 0x7e57a7))
		s.note("seed %d: clock skew %v, -drain %v, HEALTHCHECKs decide %v", seed, skew, cfg.drain, !cfg.probes)
		s.replay = fmt.Sprintf("go test -run 'TestSimulate' -simulate.seed=%d .", seed)
		s.run(steps)
	})
}

// run makes steps random steps of history, checking the invariants after
// each, then lets the history go quiet and checks what must follow.
func (s *simRun) run(steps int) {
	for i := 0; i < steps && !s.t.Failed(); i++ {
		if s.restarts != nil && s.restarts.IntN(25) == 0 {
			s.note("the proxy restarts, handing its state over")
			s.restartProxy()
		}
		s.step()
		time.Sleep(time.Duration(s.rng.Int64N(int64(1500 * time.Millisecond))))
		s.healthChecks()
		s.check()
	}
	if !s.t.Failed() {
		s.quiet()
	}
}

// startSim starts the proxy's watcher and runner against a fake daemon in
// the current bubble; they stop when the test ends.
func startSim(t *testing.T, rng *rand.Rand, skew time.Duration, cfg ruleConfig) *simRun {
	d := newSimDocker(skew)
	return startSimWith(t, rng, d, d, d, cfg, 400)
}

// startSimWith is startSim with a daemon made (and perhaps populated)
// beforehand, the API the proxy calls in front of it, and the prober;
// a failing test logs the proxy's last logLines lines.
func startSimWith(t *testing.T, rng *rand.Rand, d *simDocker, api dockerAPI, pr prober, cfg ruleConfig, logLines int) *simRun {
	s := &simRun{
		t: t, rng: rng, d: d, route: newRouter(), start: time.Now(), cfg: cfg,
		served: make(map[string]bool), leftAt: make(map[string]time.Time),
	}
	s.d.routed = s.route.load
	s.logs = &logBuffer{}
	log := slog.New(slog.NewJSONHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ports := []portMap{{80, 80}}
	s.m = newMetrics(ports)
	s.api, s.pr, s.log, s.ports = api, pr, log, ports
	s.startProxy(nil)
	t.Cleanup(func() {
		s.stopProxy()
		if t.Failed() {
			t.Logf("history (replay: %s):\n%s", s.replay, strings.Join(s.history, "\n"))
			lines := strings.Split(s.logs.String(), "\n")
			t.Logf("proxy log, last lines:\n%s", strings.Join(lines[max(0, len(lines)-logLines):], "\n"))
		}
	})
	synctest.Wait()
	return s
}

// startProxy starts a watcher and a runner, with a predecessor's records
// or none.
func (s *simRun) startProxy(inherit []inheritedCtr) {
	sel, _ := newSelector(simTag, nil)
	evs := make(chan any)
	rn := newRunner(newRule(s.cfg, s.log, s.m), s.route, s.ports, s.pr, dockerRetirer{docker: s.api, mode: retireRemove}, s.log)
	rn.onRoute = s.onRoute
	rn.owner = addressOf(s.api, "")
	rn.inherit = inherit
	w := &watcher{docker: s.api, sel: sel, log: s.log, out: evs, m: s.m}
	ctx, cancel := context.WithCancel(context.Background())
	s.rn, s.stop = rn, cancel
	s.proxyWG.Go(func() { _ = w.run(ctx) })
	s.proxyWG.Go(func() { rn.run(ctx, evs) })
}

func (s *simRun) stopProxy() {
	s.stop()
	s.proxyWG.Wait()
}

// restartProxy stops the proxy and starts its successor with the rule's
// records, as a hand-over does (the old process stops its rule before the
// new one starts its own, which a real hand-over overlaps by a moment).
func (s *simRun) restartProxy() {
	s.stopProxy()
	records := s.rn.rule.handOver()
	s.startProxy(records)
	synctest.Wait()
}

// healthChecks runs the fake daemon's HEALTHCHECKs, then lets the proxy
// settle.
func (s *simRun) healthChecks() {
	s.d.mu.Lock()
	s.d.healthChecks()
	s.d.mu.Unlock()
	synctest.Wait()
}

// onRoute is the runner's hook: it records who serves, and since when. A
// container served at an address it no longer holds is not its current
// run serving (invariant 1 says whether the proxy could have known).
func (s *simRun) onRoute(id string, ip netip.Addr) {
	s.d.mu.Lock()
	c := s.d.ctrs[id]
	current := c != nil && c.ip == ip
	s.d.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == s.routed && ip == s.routedIP {
		return // a successor's first route (see restartProxy): clients reach whom they reached
	}
	if s.routed != "" && s.routed != id {
		s.leftAt[s.routed] = time.Now()
	}
	if current {
		s.served[id] = true
		delete(s.leftAt, id)
	}
	s.routed, s.routedIP = id, ip
}

// pick returns a random container for which ok holds, or nil.
func (s *simRun) pick(ok func(c *simCtr) bool) *simCtr {
	var cs []*simCtr
	for _, c := range s.d.sorted() {
		if ok(c) {
			cs = append(cs, c)
		}
	}
	if len(cs) == 0 {
		return nil
	}
	return cs[s.rng.IntN(len(cs))]
}

func running(c *simCtr) bool { return c.running }
func ours(c *simCtr) bool    { return c.running && c.image == simTag }
func restarted(s *simRun, c *simCtr) {
	s.mu.Lock()
	delete(s.served, c.id) // a new run to the proxy
	delete(s.leftAt, c.id)
	s.mu.Unlock()
}

// step makes one change to the daemon, chosen by the seed.
func (s *simRun) step() {
	d := s.d
	d.mu.Lock()
	defer d.mu.Unlock()
	r := s.rng
	listen := func() time.Duration {
		if r.IntN(8) == 0 {
			return -1 // never ready
		}
		return time.Duration(r.Int64N(int64(4 * time.Second)))
	}
	switch op := r.IntN(22); {
	case op < 5:
		c := d.createHC(simTag, listen(), r.IntN(6) == 0, !s.cfg.probes && r.IntN(4) > 0)
		s.note("deploy %s at %v (listens after %v, restart always %v, HEALTHCHECK %v)", c.id, c.ip, c.listenAfter, c.restart, c.healthcheck)
	case op == 5:
		c := d.create(simTag, -1, false)
		s.note("one-off %s of the image at %v (never listens)", c.id, c.ip)
	case op == 6:
		c := d.create("other:latest", 0, false)
		s.note("container %s of another image at %v", c.id, c.ip)
	case op < 9:
		if c := s.pick(running); c != nil {
			d.die(c)
			s.note("%s crashes", c.id)
			if c.restart && r.IntN(3) > 0 {
				restarted(s, c)
				d.start(c)
				s.note("%s restarts (restart always) at %v", c.id, c.ip)
			}
		}
	case op == 9:
		if c := s.pick(func(c *simCtr) bool { return !c.running }); c != nil {
			restarted(s, c)
			d.start(c)
			s.note("%s started again at %v", c.id, c.ip)
		}
	case op == 10:
		if c := s.pick(func(c *simCtr) bool { return c.running && !c.paused }); c != nil {
			c.paused = true
			d.emit(events.ContainerEventType, events.ActionPause, c)
			s.note("%s paused", c.id)
		}
	case op == 11:
		if c := s.pick(func(c *simCtr) bool { return c.paused }); c != nil {
			c.paused = false
			d.emit(events.ContainerEventType, events.ActionUnPause, c)
			s.note("%s unpaused", c.id)
		}
	case op == 12:
		if c := s.pick(ours); c != nil {
			c.unready = !c.unready
			s.note("%s unready %v", c.id, c.unready)
		}
	case op == 13:
		if c := s.pick(func(c *simCtr) bool { return c.running && c.ip.IsValid() }); c != nil {
			s.note("%s disconnected from its network (had %v)", c.id, c.ip)
			restarted(s, c) // a new address is a new run to the proxy
			c.ip = netip.Addr{}
			d.emit(events.NetworkEventType, events.ActionDisconnect, c)
		}
	case op == 14:
		if c := s.pick(func(c *simCtr) bool { return c.running && !c.ip.IsValid() }); c != nil {
			c.ip = d.freeIP()
			d.emit(events.NetworkEventType, events.ActionConnect, c)
			s.note("%s connected at %v", c.id, c.ip)
		}
	case op == 15:
		if c := s.pick(func(*simCtr) bool { return true }); c != nil {
			d.destroy(c)
			s.note("%s removed by someone else", c.id)
		}
	case op == 16:
		d.breakStreams()
		s.note("event streams break")
	case op == 17:
		switch r.IntN(4) {
		case 0:
			d.dup = true
			s.note("the next event is sent twice")
		case 3:
			d.drop = 1 + r.IntN(2)
			s.note("the next %d events are lost", d.drop)
		case 1:
			d.reorder = true
			s.note("the next two events are swapped")
		default:
			if len(d.log) > 0 {
				ev := d.log[r.IntN(len(d.log))]
				d.deliver(ev)
				s.note("an old event is replayed: %s %s", ev.Action, ev.Actor.ID)
			}
		}
	case op == 18:
		call := []simCall{callList, callInspect, callRemove}[r.IntN(3)]
		n := 1 + r.IntN(3)
		if r.IntN(2) == 0 {
			d.fail[call] += n
			s.note("the next %d %s calls fail", n, call)
		} else {
			d.hang[call] += n
			s.note("the next %d %s calls hang", n, call)
		}
	case op == 19:
		if c := s.pick(running); c != nil {
			d.midList = func() { d.die(c) }
		}
		d.breakStreams()
		s.note("event streams break; a container dies while the next list is taken")
	default:
		s.note("nothing happens")
	}
}

// check applies invariants 1, 2 and 4 after a step.
func (s *simRun) check() {
	t := s.t
	t.Helper()
	s.d.mu.Lock()
	for _, v := range s.d.violations {
		t.Errorf("invariant 2: %s", v)
	}
	s.d.violations = nil
	removals := s.d.removals[s.checked:]
	s.checked = len(s.d.removals)
	s.d.mu.Unlock()

	s.mu.Lock()
	for _, rm := range removals {
		left, ok := s.leftAt[rm.id]
		switch {
		case !s.served[rm.id]:
		case !ok:
			t.Errorf("invariant 4: %s removed at %v while it serves", rm.id, rm.at.Sub(s.start))
		case !s.cfg.drain && rm.at.Sub(left) < s.cfg.grace:
			t.Errorf("invariant 4: %s removed %v after it stopped serving; want at least the grace period %v", rm.id, rm.at.Sub(left), s.cfg.grace)
		}
	}
	s.mu.Unlock()

	if !s.d.settled() {
		return
	}
	b := s.route.load()
	if b == nil {
		return
	}
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	c := s.d.ctrs[b.id]
	switch {
	case c == nil:
		t.Errorf("invariant 1: serving %s, which is gone", b.id)
	case c.image != simTag:
		t.Errorf("invariant 1: serving %s of another image", b.id)
	case !c.running || c.paused:
		t.Errorf("invariant 1: serving %s, which is not running (paused %v)", b.id, c.paused)
	case c.ip != b.ip:
		t.Errorf("invariant 1: serving %s at %v; it holds %v", b.id, b.ip, c.ip)
	case s.d.okProbes[b.id] == 0:
		t.Errorf("invariant 1: serving %s, which never answered a probe", b.id)
	}
}

// simQuiet is how long a quiet history may take to settle: the status
// timeout, a crash-looper's hold, the slowest probe and retry, a grace
// period and the event stream's backoff, with room to spare.
const simQuiet = 3 * time.Minute

// quiet heals every fault, lets the history go quiet, and checks
// invariant 3.
func (s *simRun) quiet() {
	t := s.t
	d := s.d
	d.mu.Lock()
	clear(d.fail)
	clear(d.hang)
	d.dup, d.reorder, d.midList, d.drop = false, false, nil, 0
	if d.held != nil {
		d.deliver(*d.held)
		d.held = nil
	}
	if d.dropped {
		d.breakStreams() // as the daemon ends the stream of a subscriber it dropped events for
	}
	d.mu.Unlock()
	s.note("quiet")
	for end := time.Now().Add(simQuiet); time.Now().Before(end); {
		time.Sleep(time.Second)
		s.healthChecks()
	}
	s.check()

	d.mu.Lock()
	defer d.mu.Unlock()
	var want *simCtr
	for _, c := range d.sorted() {
		if c.image == simTag && c.listening(time.Now()) {
			want = c // sorted oldest first: the last one is the newest
		}
	}
	if want == nil {
		return
	}
	if b := s.route.load(); b == nil || b.id != want.id {
		got := "none"
		if b != nil {
			got = b.id
		}
		t.Errorf("invariant 3: %v after the history went quiet, %s serves; want the newest ready %s", simQuiet, got, want.id)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range d.sorted() {
		if c != want && c.running && s.served[c.id] && newer(ctrInfo{id: want.id, created: want.created}, ctrInfo{id: c.id, created: c.created}) {
			t.Errorf("invariant 3: %s served and still runs, %v after the history went quiet", c.id, simQuiet)
		}
	}
}
