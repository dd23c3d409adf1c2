package main

import (
	"errors"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// The deploy rule is a pure transition: step takes the rule's state, one
// event and the time, changes the state and returns the actions to carry
// out. It never sleeps, starts a goroutine or calls Docker; the runner
// does, and feeds the results back as events. So the rule can be driven
// step by step by a test, with any history and any clock.
//
// What it decides: the newest ready container of the selection serves; the
// one it replaced is retired once its grace period ends (or, with -drain,
// once it carries nothing); a container that became ready but is older than
// the serving one is retired at once, since it never carried a connection;
// a container that never became ready is never retired: it is left alone
// and checked slowly, and serves if it becomes the newest ready one.

// Probe schedule: fast while a container is expected to become ready, then
// only as often as a decision needs (see planProbes). Every probe is a
// connection the service sees, so a serving container is not probed at all
// unless a rollback is possible.
const (
	probeFast      = statusInterval   // checking: until ready or the deadline
	probeWatch     = time.Second      // serving and retiring, while a rollback is possible: first
	probeWatchMax  = 15 * time.Minute // then doubling to this, so a long grace period costs few
	probeSlow      = 5 * time.Second  // ignored: it may still become ready
	watchFails     = 2                // failed watch probes in a row that make it not ready
	crashStops     = 3                // stops within crashWindow that make a crash loop
	crashWindow    = time.Minute      // how far back stops are counted
	crashHold      = 30 * time.Second // a crash-looper must stay up this long to be considered
	removeRetryMin = time.Second      // backoff of a failed retirement
	removeRetryMax = time.Minute
)

// phase is where a container is in its life with the proxy.
type phase int

const (
	phaseChecking phase = iota // readiness check running until its deadline
	phaseServing               // in the route (or was, until paused)
	phaseRetiring              // superseded; retired when its grace period ends
	phaseIgnored               // not ready in time, failing or crash-looping: left alone, checked slowly
	phaseRemoving              // retirement asked, retried until it succeeds
	phaseRetired               // retired (stopped, or left running with -retire none): never served again
)

var phaseNames = [...]string{"checking", "serving", "retiring", "ignored", "removing", "retired"}

func (p phase) String() string { return phaseNames[p] }

// record is the rule's knowledge of one container of the selection.
type record struct {
	ctrInfo
	phase      phase
	ready      bool          // its latest verdict: answers its probe, or HEALTHCHECK healthy
	everReady  bool          // it was ready once: only such a container may be retired
	served     bool          // it carried connections (its backend exists)
	awaitFirst bool          // start-up: its first verdict is not in yet
	seen       time.Time     // when the rule first saw this run
	fails      int           // failed probes in a row while serving
	watchEvery time.Duration // serving or retiring: the gap to its next watch probe
	verdictAt  time.Time     // when its latest probe verdict came
	tried      bool          // a probe of this run has come back
	flapping   bool          // rolled back from too often: must answer for crashHold straight
	lastErr    error         // the last failed probe, for the log
	deadline   time.Time     // checking: ignored if not ready by then; retiring: retired then; removing: retried then
	probeAt    time.Time     // the next probe; zero: none planned
	holdUntil  time.Time     // crash-looping: no traffic before this
	probing    bool          // a probe is out
	busy       bool          // a retirement is out
	stopped    bool          // retiring or removing, and no longer running
	drained    bool          // -drain: its backend carries nothing
	why        string        // removing: the reason, for the log
	failures   int           // failed retirements in a row
}

// ruleConfig is what the flags tell the rule.
type ruleConfig struct {
	statusTimeout time.Duration
	grace         time.Duration
	drain         bool // retire as soon as the last connection closes
	probes        bool // -status_url or -status_port is set: a HEALTHCHECK does not decide
}

// rule is the deploy rule's state.
type rule struct {
	cfg     ruleConfig
	ctrs    map[string]*record
	serving string                 // the container meant to be in the route; "": none
	routed  string                 // the container in the route now
	stops   map[string][]time.Time // recent stops by container, for crash-loop damping
	died    map[string]time.Time   // when a serving or retiring container died, to tell its removal by others
	startup bool                   // the initial list is being checked
	warm    bool                   // state was inherited: the initial list also tells who stopped meanwhile
	log     *slog.Logger
	m       *metrics
}

func newRule(cfg ruleConfig, log *slog.Logger, m *metrics) *rule {
	return &rule{cfg: cfg, ctrs: make(map[string]*record), stops: make(map[string][]time.Time), died: make(map[string]time.Time), log: log, m: m}
}

// Events: what the watcher and the runner tell the rule. Plain values, so
// that a test can write a history down.
type (
	// evList holds every running container of the selection: the list at
	// start-up (initial), or after the event stream was restored.
	evList struct {
		ctrs    []ctrInfo
		initial bool
	}
	// evStart: a running container as inspected: after a start, and after
	// a pause, unpause, health or network change (a change of the same
	// run: paused, healthy, or a new address).
	evStart struct{ ctr ctrInfo }
	// evStop: a container stopped, is gone (destroyed), or lost its address.
	evStop struct {
		id        string
		destroyed bool
	}
	// evProbe: the outcome of actProbe.
	evProbe struct {
		id      string
		ip      netip.Addr
		started time.Time
		err     error
	}
	// evRetire: the outcome of actRetire.
	evRetire struct {
		id  string
		err error
	}
	// evDrained: the backend of id carries nothing (-drain).
	evDrained struct{ id string }
	// evTick: the time asked by actWake came.
	evTick struct{}
)

// Actions: what the rule asks the runner to do.
type (
	// actProbe: check the readiness of id's run at ip once; answer with
	// evProbe.
	actProbe struct {
		id      string
		ip      netip.Addr
		started time.Time
	}
	// actServe: new connections go to id at ip ("": none).
	actServe struct {
		id string
		ip netip.Addr
	}
	// actSeal: id takes no new connection.
	actSeal struct{ id string }
	// actClose: close what id carries, and forget its backend.
	actClose struct{ id string }
	// actRetire: retire id as -retire says; answer with evRetire.
	actRetire struct {
		id  string
		ip  netip.Addr
		why string
	}
	// actDrain: answer evDrained once id carries nothing.
	actDrain struct{ id string }
	// actWake: send evTick at this time; zero: no timer needed.
	actWake struct{ at time.Time }
)

// step applies ev at now and returns what to do.
func (r *rule) step(ev any, now time.Time) []any {
	var acts []any
	switch ev := ev.(type) {
	case evList:
		acts = r.list(ev, now)
	case evStart:
		acts = r.start(ev.ctr, now)
	case evStop:
		acts = r.stop(ev.id, ev.destroyed, now)
	case evProbe:
		r.probed(ev, now)
	case evRetire:
		r.retired(ev, now)
	case evDrained:
		if c := r.ctrs[ev.id]; c != nil && c.phase == phaseRetiring {
			c.drained = true
		}
	case evInherit:
		r.inherit(ev, now)
	}
	return append(acts, r.settle(now)...)
}

func (r *rule) byHealthcheck(c ctrInfo) bool { return !r.cfg.probes && c.healthcheck }

// sorted returns the records newest first, so that every decision is the
// same for the same history.
func (r *rule) sorted() []*record {
	cs := make([]*record, 0, len(r.ctrs))
	for _, c := range r.ctrs {
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b *record) int {
		switch {
		case a.id == b.id:
			return 0
		case newer(a.ctrInfo, b.ctrInfo):
			return -1
		}
		return 1
	})
	return cs
}

func (r *rule) list(ev evList, now time.Time) []any {
	var acts []any
	running := make(map[string]bool, len(ev.ctrs))
	for _, info := range ev.ctrs {
		running[info.id] = true
		acts = append(acts, r.start(info, now)...)
		if ev.initial {
			if c := r.ctrs[info.id]; c != nil && c.phase == phaseChecking && !c.ready {
				c.awaitFirst = !r.byHealthcheck(info) && !info.paused
			}
		}
	}
	if ev.initial {
		r.startup = !r.warm
		if len(ev.ctrs) == 0 {
			r.log.Warn("no container of the tag is running yet")
		}
		if !r.warm {
			return acts
		}
		r.warm = false
	}
	for _, c := range r.sorted() {
		if !running[c.id] && !c.stopped {
			acts = append(acts, r.stop(c.id, false, now)...)
		}
	}
	return acts
}

// start takes a running container: new, restarted, or seen again.
func (r *rule) start(info ctrInfo, now time.Time) []any {
	var acts []any
	if c := r.ctrs[info.id]; c != nil {
		switch {
		case c.started.Equal(info.started) && c.ip == info.ip:
			if info.unhealthy {
				c.lastErr = errUnhealthy // for the log, if it is ignored
			}
			acts = append(acts, r.pause(info.id, info.paused, now)...)
			if info.healthy != c.healthy {
				r.health(info.id, info.healthy, now) // a health event missed
			}
			return acts // the same run, seen again (a list after an event)
		case c.phase == phaseRemoving || c.phase == phaseRetired:
			c.ctrInfo = info
			return nil // on its way out already
		}
		// A restart, or a new address, whose stop was missed: count it now.
		acts = r.stop(info.id, false, now)
	}
	c := &record{ctrInfo: info, phase: phaseChecking, seen: now}
	if info.unhealthy {
		c.lastErr = errUnhealthy
	}
	r.ctrs[info.id] = c
	age := min(max(info.age, 0), r.cfg.statusTimeout)
	c.deadline = now.Add(r.cfg.statusTimeout - age)
	if r.crashLooping(info.id, now) {
		c.phase = phaseIgnored
		c.holdUntil = now.Add(crashHold)
		c.probeAt = c.holdUntil
		r.log.Warn("crash-looping: ignored until it stays up", "container", c.short(), "addr", c.ip, "hold", crashHold)
	} else if r.byHealthcheck(info) {
		r.log.Info("waiting for its HEALTHCHECK", "container", c.short(), "addr", c.ip)
	} else {
		c.probeAt = now
		r.log.Info("checking readiness", "container", c.short(), "addr", c.ip)
	}
	if info.healthy {
		r.health(info.id, true, now) // (not healthy yet may be only starting)
	}
	return acts
}

// crashLooping tells whether id stopped crashStops times within crashWindow.
func (r *rule) crashLooping(id string, now time.Time) bool {
	recent := slices.DeleteFunc(r.stops[id], func(t time.Time) bool { return now.Sub(t) > crashWindow })
	if len(recent) == 0 {
		delete(r.stops, id)
		return false
	}
	r.stops[id] = recent
	return len(recent) >= crashStops
}

// stop takes a container that no longer runs, or no longer holds the
// address the proxy dials.
func (r *rule) stop(id string, destroyed bool, now time.Time) []any {
	c := r.ctrs[id]
	if c == nil {
		if at, ok := r.died[id]; ok && destroyed {
			delete(r.died, id)
			if now.Sub(at) < removedWithin {
				r.removedByOthers(id, netip.Addr{})
			}
		}
		return nil
	}
	switch {
	case c.phase != phaseServing && c.phase != phaseRetiring:
	case destroyed:
		r.removedByOthers(id, c.ip)
	default:
		maps.DeleteFunc(r.died, func(_ string, at time.Time) bool { return now.Sub(at) >= removedWithin })
		r.died[id] = now // docker rm -f: the die comes first
	}
	var acts []any
	if c.served {
		// A stopped container carries nothing any more; what it did
		// carry would hang once its network is gone.
		acts = append(acts, actClose{c.id})
		c.served = false
	}
	switch c.phase {
	case phaseRemoving:
		c.stopped = true // retried until the removal succeeds
		return acts
	case phaseRetiring:
		c.stopped = true // retired when its grace period ends, as planned
		c.ready = false
		return acts
	case phaseServing:
		r.log.Warn("serving container stopped", "container", c.short(), "addr", c.ip)
	}
	if c.phase != phaseRetired {
		maps.DeleteFunc(r.stops, func(_ string, ts []time.Time) bool { return now.Sub(ts[len(ts)-1]) > crashWindow })
		r.stops[id] = append(r.stops[id], now)
	}
	if r.serving == id {
		r.serving = ""
	}
	if r.routed == id {
		// Out of the route now: a new run of the same container that
		// serves in this same step must be stored as a new backend.
		acts = append(acts, actServe{})
		r.routed = ""
		r.log.Warn("no ready container: new connections wait for one")
	}
	delete(r.ctrs, id) // a later start is a new run to the rule
	return acts
}

// removedWithin is how soon after its die a destroy tells that a container
// was removed (docker rm -f), not stopped and cleaned up later.
const removedWithin = 10 * time.Second

// removedByOthers warns of a container the proxy serves that someone else
// removed: another proxy whose selection overlaps this one removes its
// containers, and this proxy removes the other's (see README).
func (r *rule) removedByOthers(id string, ip netip.Addr) {
	r.log.Warn("a container the proxy serves was removed by someone else", "container", shortID(id), "addr", ip)
}

// pause takes docker pause (not ready: the kernel still accepts, nothing
// answers) and unpause (a new readiness check).
func (r *rule) pause(id string, paused bool, now time.Time) []any {
	c := r.ctrs[id]
	if c == nil || c.paused == paused {
		return nil
	}
	c.paused = paused
	if paused {
		r.log.Warn("paused: not ready", "container", c.short(), "addr", c.ip)
		c.ready, c.probing = false, false
		c.awaitFirst = false // start-up does not wait for a paused one
		if c.phase == phaseServing {
			c.phase = phaseChecking
			c.deadline = time.Time{}
			r.serving = ""
			return []any{actSeal{c.id}}
		}
		return nil
	}
	switch c.phase {
	case phaseChecking, phaseIgnored, phaseServing:
		r.log.Info("unpaused: checking readiness", "container", c.short(), "addr", c.ip)
		c.phase = phaseChecking
		c.deadline = now.Add(r.cfg.statusTimeout)
		if !r.byHealthcheck(c.ctrInfo) {
			c.probeAt = now
		} else {
			r.verdict(c, c.healthy, now)
		}
	}
	return nil
}

var (
	errNotHealthy = errors.New("HEALTHCHECK not healthy in time")
	errUnhealthy  = errors.New("HEALTHCHECK reports unhealthy")
)

// health takes a HEALTHCHECK verdict. Unhealthy while checking is only
// "not ready yet": a HEALTHCHECK without a start period reports unhealthy
// while the service starts.
func (r *rule) health(id string, healthy bool, now time.Time) {
	c := r.ctrs[id]
	if c == nil || !r.byHealthcheck(c.ctrInfo) {
		return
	}
	c.healthy = healthy
	if !healthy {
		c.lastErr = errUnhealthy
		if c.phase == phaseServing && c.ready {
			r.log.Warn("serving container failing its status check", "container", c.short(), "addr", c.ip, "err", errUnhealthy)
		}
	}
	if c.paused || c.phase == phaseRemoving || c.phase == phaseRetired || (c.phase == phaseRetiring && c.stopped) {
		return
	}
	r.verdict(c, healthy, now)
}

// verdict records that c is ready or not.
func (r *rule) verdict(c *record, ok bool, now time.Time) {
	c.awaitFirst = false
	if ok && !c.ready && !c.everReady {
		r.m.readiness.WithLabelValues("ready").Inc()
		r.m.readyTime.Observe((now.Sub(c.seen) + max(c.age, 0)).Seconds())
	}
	if ok && c.phase == phaseIgnored && !c.everReady {
		r.log.Info("ready after all", "container", c.short(), "addr", c.ip)
	}
	c.ready = ok
	c.everReady = c.everReady || ok
	c.verdictAt = now
}

// servingReady tells whether a container serves and may go on serving.
func (r *rule) servingReady(now time.Time) bool {
	cur := r.ctrs[r.serving]
	return cur != nil && r.candidate(cur, now)
}

// stale tells whether c, a rollback target checked by probes, has a
// verdict too old to send traffic on: its watch probes back off, so it is
// probed again (new connections wait for the answer, a round trip on the
// bridge) before it serves.
func (r *rule) stale(c *record, now time.Time) bool {
	return c.phase == phaseRetiring && !r.byHealthcheck(c.ctrInfo) && now.Sub(c.verdictAt) > probeFast
}

// probed takes the outcome of a probe.
func (r *rule) probed(ev evProbe, now time.Time) {
	c := r.ctrs[ev.id]
	if c == nil || c.ip != ev.ip || !c.started.Equal(ev.started) || !c.probing {
		return // a probe of an earlier run or address
	}
	c.probing = false
	if c.paused {
		return
	}
	if errors.Is(ev.err, errUnconfirmed) {
		// No verdict: a hung inspect must not roll a deploy back.
		c.probeAt = now.Add(probeFast)
		return
	}
	c.tried = true
	ok := ev.err == nil
	if !ok {
		c.lastErr = ev.err
	}
	switch c.phase {
	case phaseChecking:
		r.verdict(c, ok, now)
		if !ok {
			c.probeAt = now.Add(probeFast)
		}
	case phaseIgnored:
		r.verdict(c, ok, now)
		switch {
		case !ok && c.flapping:
			c.holdUntil = now.Add(crashHold) // it must answer for crashHold straight
			c.probeAt = now.Add(probeSlow)
		case !ok, c.flapping && now.Before(c.holdUntil):
			c.probeAt = now.Add(probeSlow)
		}
	case phaseServing:
		c.fails++
		if ok {
			c.fails = 0
		}
		if c.ready && c.fails == watchFails {
			r.log.Warn("serving container failing its status check", "container", c.short(), "addr", c.ip, "err", ev.err)
		}
		if ok || c.fails >= watchFails {
			r.verdict(c, ok, now)
		}
		c.probeAt = now.Add(c.nextWatch(ok))
	case phaseRetiring:
		r.verdict(c, ok, now) // a rollback target must answer
		c.probeAt = now.Add(c.nextWatch(ok))
	}
}

// nextWatch is the gap to c's next watch probe: probeWatch after a failure
// (a second one confirms it soon), doubling after each success up to
// probeWatchMax. Every probe is a connection the service counts (MariaDB
// blocks an address after 100 that close without a handshake), so an hour
// of grace costs about 14 probes, not 3,600, and a day about 105.
func (c *record) nextWatch(ok bool) time.Duration {
	if !ok || c.watchEvery == 0 {
		c.watchEvery = probeWatch
		return c.watchEvery
	}
	c.watchEvery = min(2*c.watchEvery, probeWatchMax)
	return c.watchEvery
}

// retired takes the outcome of a retirement.
func (r *rule) retired(ev evRetire, now time.Time) {
	c := r.ctrs[ev.id]
	if c == nil || c.phase != phaseRemoving {
		return
	}
	c.busy = false
	if ev.err == nil {
		c.phase = phaseRetired
		if c.stopped {
			delete(r.ctrs, c.id)
		}
		return
	}
	c.failures++
	r.m.removalFailures.Inc()
	if c.failures == 1 {
		r.log.Error("retire failed", "container", c.short(), "addr", c.ip, "reason", c.why, "err", ev.err)
	} else {
		r.log.Debug("retire failed again", "container", c.short(), "addr", c.ip, "failures", c.failures, "err", ev.err)
	}
	c.deadline = now.Add(min(removeRetryMin<<min(c.failures-1, 10), removeRetryMax))
}

// retire starts c's retirement.
func (r *rule) retire(c *record, why string) []any {
	c.phase, c.why, c.busy = phaseRemoving, why, true
	c.ready, c.probeAt, c.probing = false, time.Time{}, false
	c.served = false // the runner closes what it carries once retired
	return []any{actRetire{c.id, c.ip, why}}
}

// candidate tells whether c may serve: ready, running, not paused and not
// on its way out.
func (r *rule) candidate(c *record, now time.Time) bool {
	switch c.phase {
	case phaseRemoving, phaseRetired:
		return false
	}
	return c.ready && !c.paused && !c.stopped && !now.Before(c.holdUntil) && !r.stale(c, now)
}

// settle applies what is due at now, picks the container to serve, plans
// the probes, and asks for a wake-up at the next thing due.
func (r *rule) settle(now time.Time) []any {
	var acts []any
	cs := r.sorted()
	for _, c := range cs {
		switch {
		case c.phase == phaseChecking && !c.ready && !c.paused && !c.deadline.IsZero() && !now.Before(c.deadline) &&
			(c.tried || r.byHealthcheck(c.ctrInfo)): // never ignored before its first probe
			err := c.lastErr
			if r.byHealthcheck(c.ctrInfo) && err == nil {
				err = errNotHealthy
			}
			r.m.readiness.WithLabelValues("ignored").Inc()
			r.log.Warn("ignored: not ready in time", "container", c.short(), "addr", c.ip, "timeout", r.cfg.statusTimeout, "err", err)
			c.phase, c.awaitFirst = phaseIgnored, false
			if !r.byHealthcheck(c.ctrInfo) {
				c.probeAt = now.Add(probeSlow)
			}
		case c.phase == phaseRetiring && (!now.Before(c.deadline) || (r.cfg.drain && c.drained)):
			acts = append(acts, r.retire(c, "grace period over")...)
		case c.phase == phaseRemoving && !c.busy && !now.Before(c.deadline):
			c.busy = true
			acts = append(acts, actRetire{c.id, c.ip, c.why})
		}
	}
	acts = append(acts, r.pick(cs, now)...)
	acts = append(acts, r.planProbes(cs, now)...)
	if r.serving != r.routed {
		c := r.ctrs[r.serving]
		if c == nil {
			acts = append(acts, actServe{})
			r.log.Warn("no ready container: new connections wait for one")
		} else {
			acts = append(acts, actServe{c.id, c.ip})
		}
		r.routed = r.serving
	}
	r.m.setServing(r.servingInfo())
	return append(acts, actWake{r.nextWake(cs, now)})
}

func (r *rule) servingInfo() *ctrInfo {
	if c := r.ctrs[r.serving]; c != nil {
		return &c.ctrInfo
	}
	return nil
}

// pick makes the newest ready container serve.
func (r *rule) pick(cs []*record, now time.Time) []any {
	for _, c := range cs {
		if c.awaitFirst {
			return nil // start-up: wait until every listed container had its first probe
		}
	}
	startup := r.startup
	r.startup = false
	var best *record
	for _, c := range cs {
		if r.candidate(c, now) {
			best = c
			break
		}
	}
	cur := r.ctrs[r.serving]
	var acts []any
	if best != nil && best != cur {
		acts = r.promote(best, cur, now)
	}
	why := "older than the serving container"
	if startup {
		why = "start-up clean-up"
	}
	return append(acts, r.clearOlder(cs, why, now)...)
}

// promote makes best serve instead of cur (nil: none).
func (r *rule) promote(best, cur *record, now time.Time) []any {
	var acts []any
	if cur != nil {
		// No new connection joins the old container from here on: one
		// that loaded it just before the swap dials the new one instead.
		acts = append(acts, actSeal{cur.id})
		if newer(best.ctrInfo, cur.ctrInfo) {
			r.m.swaps.Inc()
			r.log.Info("swap", "container", best.short(), "addr", best.ip, "previous", cur.short())
			acts = append(acts, r.startRetiring(cur, now)...)
		} else {
			cur.phase = phaseIgnored // failing: it serves again if it becomes the newest ready one
			cur.probeAt = now.Add(probeSlow)
			// A rollback from it counts like a stop: one whose readiness
			// flaps is damped like a crash loop.
			r.stops[cur.id] = append(r.stops[cur.id], now)
			if r.crashLooping(cur.id, now) {
				cur.flapping, cur.holdUntil = true, now.Add(crashHold)
				r.log.Warn("flapping: ignored until it answers for a while", "container", cur.short(), "addr", cur.ip, "hold", crashHold)
			}
		}
	}
	switch {
	case best.phase == phaseRetiring:
		r.m.rollbacks.Inc()
		r.log.Warn("rollback", "container", best.short(), "addr", best.ip)
	case cur == nil:
		r.log.Info("serving", "container", best.short(), "addr", best.ip)
	}
	best.phase, best.fails, best.drained, best.flapping = phaseServing, 0, false, false
	best.probeAt, best.deadline = time.Time{}, time.Time{}
	best.served = true
	r.serving = best.id
	return acts
}

// clearOlder retires the containers older than the serving one that were
// ready once: at once if they never carried a connection, else after a
// grace period. Newer ones may still become ready, and one that never was
// ready is never retired.
func (r *rule) clearOlder(cs []*record, why string, now time.Time) []any {
	best := r.ctrs[r.serving]
	if best == nil {
		return nil
	}
	var acts []any
	for _, o := range cs {
		if o == best || !newer(best.ctrInfo, o.ctrInfo) || !o.everReady {
			continue
		}
		switch {
		case o.phase != phaseChecking && o.phase != phaseIgnored:
		case o.served:
			acts = append(acts, r.startRetiring(o, now)...)
		default:
			r.m.readiness.WithLabelValues("superseded").Inc()
			acts = append(acts, r.retire(o, why)...)
		}
	}
	return acts
}

// startRetiring starts c's grace period.
func (r *rule) startRetiring(c *record, now time.Time) []any {
	c.phase, c.deadline, c.drained = phaseRetiring, now.Add(r.cfg.grace), false
	// A rollback target must be ready: a probed one is probed at once, and
	// then every probeWatch, so that a rollback needs no wait.
	c.ready = r.byHealthcheck(c.ctrInfo) && c.healthy
	c.probeAt, c.fails, c.watchEvery = now, 0, 0
	acts := []any{actSeal{c.id}}
	if r.cfg.drain {
		acts = append(acts, actDrain{c.id})
	}
	return acts
}

// planProbes decides which containers are probed: checking and ignored
// ones as their phase says; the serving one and the ones it replaced
// (rollback targets) only while a rollback is possible, every probeWatch.
func (r *rule) planProbes(cs []*record, now time.Time) []any {
	rollback := false // a retiring container could serve instead
	for _, c := range cs {
		if c.phase == phaseRetiring && !c.stopped && !c.paused {
			rollback = true
		}
	}
	var acts []any
	for _, c := range cs {
		if r.byHealthcheck(c.ctrInfo) {
			continue // its HEALTHCHECK reports by event
		}
		switch c.phase {
		case phaseServing:
			if !rollback {
				c.probeAt, c.watchEvery = time.Time{}, 0
			} else if c.probeAt.IsZero() && !c.probing {
				c.probeAt = now.Add(c.nextWatch(false))
			}
		case phaseRetiring:
			switch {
			case c.stopped:
				c.probeAt = time.Time{}
			case !r.servingReady(now) && c.ready && r.stale(c, now) && !c.probing:
				c.probeAt = now // a rollback waits for a fresh verdict
			}
		}
		if !c.probeAt.IsZero() && !c.probing && !c.paused && !now.Before(c.probeAt) {
			c.probing, c.probeAt = true, time.Time{}
			acts = append(acts, actProbe{c.id, c.ip, c.started})
		}
	}
	return acts
}

// nextWake is the next time something is due.
func (r *rule) nextWake(cs []*record, now time.Time) time.Time {
	var at time.Time
	soon := func(t time.Time) {
		if t.After(now) && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	for _, c := range cs {
		switch c.phase {
		case phaseChecking:
			if !c.ready && !c.paused {
				soon(c.deadline)
			}
		case phaseRetiring:
			soon(c.deadline)
		case phaseRemoving:
			if !c.busy {
				soon(c.deadline)
			}
		}
		if !c.probing && !c.paused {
			soon(c.probeAt)
		}
		soon(c.holdUntil)
	}
	return at
}

// newer reports whether a should serve rather than b: it was created later
// (the id breaks a tie, so the order is total).
func newer(a, b ctrInfo) bool {
	if !a.created.Equal(b.created) {
		return a.created.After(b.created)
	}
	return a.id > b.id
}
