package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// prober makes one readiness attempt on a container's address (see
// checker).
type prober interface {
	probe(ctx context.Context, ip netip.Addr) error
}

// runner carries out the rule's actions: it probes, retires, keeps the
// timer the rule asks for and the backends the rule names, and feeds every
// outcome back to the rule as an event. It runs as one goroutine; probes
// and retirements run beside it and report through results.
type runner struct {
	rule   *rule
	route  *router
	ports  []portMap
	ready  prober
	retire retirer
	owner  func(ctx context.Context, id string) (netip.Addr, time.Time, error) // the address id holds now, and the start of its run; nil: not checked
	log    *slog.Logger
	name   string                 // the selector, for /status
	snap   atomic.Pointer[status] // for /status, renewed after every step
	feed   feed                   // the control API's event streams

	// What the status document tells besides the records.
	tag, address, version string
	settings              settings

	seen       map[string]seenRecord // the records as the last events left them (see changes)
	lastRouted string

	inherit   []inheritedCtr // a predecessor's records (see handover.go): the first step
	inherited chan struct{}  // closed once they are in the rule, and the route set
	// predecessor is closed once the predecessor is done: till then a
	// container it served may carry its connections (nil: none).
	predecessor <-chan struct{}
	snapshots   chan snapshotRequest           // a successor asks for the records
	onRoute     func(id string, ip netip.Addr) // tests: called after every change of route

	mu       sync.Mutex          // guards backends
	backends map[string]*backend // by container id: those that carry or carried connections
	results  chan any
}

func newRunner(rl *rule, route *router, ports []portMap, ready prober, retire retirer, log *slog.Logger) *runner {
	return &runner{
		rule:      rl,
		route:     route,
		ports:     ports,
		ready:     ready,
		retire:    retire,
		log:       log,
		backends:  make(map[string]*backend),
		results:   make(chan any),
		inherited: make(chan struct{}),
		snapshots: make(chan snapshotRequest),
	}
}

// run feeds events to the rule until ctx ends, then waits for the probes
// and retirements it started. A proxy that stops removes nothing more.
func (rn *runner) run(ctx context.Context, events <-chan any) {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	rn.publish(time.Now())
	if rn.inherit != nil {
		rn.apply(ctx, &wg, timer, evInherit{rn.inherit})
	}
	close(rn.inherited)
	for {
		var ev any
		select {
		case ev = <-events:
		case ev = <-rn.results:
			if d, ok := ev.(evDrained); ok && !rn.idle(d.id) {
				continue // carries connections again since (a rollback)
			}
		case <-timer.C:
			ev = evTick{}
		case req := <-rn.snapshots:
			// The rule holds still until the successor has them or
			// the hand-over failed: a swap in between would be lost
			// to the successor.
			req.records <- rn.rule.handOver()
			select {
			case <-req.resume:
			case <-ctx.Done():
			case <-time.After(3 * handoverTimeout):
			}
			continue
		case <-ctx.Done():
			return
		}
		rn.apply(ctx, &wg, timer, ev)
	}
}

// apply steps the rule with ev and carries out what it asks.
func (rn *runner) apply(ctx context.Context, wg *sync.WaitGroup, timer *time.Timer, ev any) {
	for _, a := range rn.rule.step(ev, time.Now()) {
		if w, ok := a.(actWake); ok {
			timer.Stop()
			if !w.at.IsZero() {
				timer.Reset(time.Until(w.at))
			}
			continue
		}
		rn.do(ctx, wg, a)
	}
	rn.publish(time.Now())
}

// snapshotRequest asks the run loop for the rule's records; it holds the
// rule still until resume is closed.
type snapshotRequest struct {
	records chan []inheritedCtr
	resume  <-chan struct{}
}

// handOver returns the rule's records, for a successor, and holds the rule
// still until resume is called (or the hand-over's time is up).
func (rn *runner) handOver(ctx context.Context) ([]inheritedCtr, func(), error) {
	req := snapshotRequest{records: make(chan []inheritedCtr, 1)}
	resume := make(chan struct{})
	req.resume = resume
	select {
	case rn.snapshots <- req:
	case <-ctx.Done():
		return nil, nil, fmt.Errorf("the deploy rule's records: %w", ctx.Err())
	}
	return <-req.records, sync.OnceFunc(func() { close(resume) }), nil
}

func (rn *runner) idle(id string) bool {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	b := rn.backends[id]
	return b == nil || b.count() == 0
}

// report hands an outcome to the run loop, unless ctx ends first.
func (rn *runner) report(ctx context.Context, ev any) {
	select {
	case rn.results <- ev:
	case <-ctx.Done():
	}
}

func (rn *runner) do(ctx context.Context, wg *sync.WaitGroup, a any) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	switch a := a.(type) {
	case actProbe:
		wg.Go(func() {
			err := rn.ready.probe(ctx, a.ip)
			if err == nil && rn.owner != nil {
				err = rn.confirm(ctx, a)
			}
			if ctx.Err() == nil {
				rn.report(ctx, evProbe{a.id, a.ip, a.started, err})
			}
		})
	case actServe:
		var b *backend
		if a.id != "" {
			b = rn.backends[a.id]
			if b == nil || b.ip != a.ip {
				b = newBackend(a.id, a.ip, rn.ports)
				rn.backends[a.id] = b
			}
			b.unseal()
		}
		rn.route.store(b)
		if rn.onRoute != nil {
			rn.onRoute(a.id, a.ip)
		}
	case actSeal:
		if b := rn.backends[a.id]; b != nil {
			b.seal()
		}
	case actClose:
		if b := rn.backends[a.id]; b != nil {
			delete(rn.backends, a.id)
			if n := b.closeAll(); n > 0 {
				rn.log.Info("closed connections", "container", shortID(a.id), "addr", b.ip, "closed", n)
			}
		}
	case actDrain:
		// Drained once this process carries nothing to it, and the
		// predecessor, which may have served it, is done.
		var waits []<-chan struct{}
		if b := rn.backends[a.id]; b != nil {
			waits = append(waits, b.drained())
		}
		if rn.predecessor != nil && slices.ContainsFunc(rn.inherit, func(in inheritedCtr) bool { return in.ID == a.id }) {
			waits = append(waits, rn.predecessor)
		}
		wg.Go(func() {
			for _, w := range waits {
				select {
				case <-w:
				case <-ctx.Done():
					return
				}
			}
			rn.report(ctx, evDrained{a.id})
		})
	case actRetire:
		b := rn.backends[a.id]
		delete(rn.backends, a.id)
		wg.Go(func() { rn.retireOne(ctx, a, b) })
	}
}

// confirm checks that the run of the container probed still holds the
// address that answered: while the event stream is down, a container that
// lost it (a network disconnect, a stop) is not known to, and another
// container may hold the address and answer, even one of another image; a
// container restarted meanwhile is a run the rule has not seen.
// errUnconfirmed: a probe answered, but Docker could not say whom it
// reached (the inspect failed or hung): no verdict either way.
var errUnconfirmed = errors.New("answered, but not confirmed")

func (rn *runner) confirm(ctx context.Context, a actProbe) error {
	ip, started, err := rn.owner(ctx, a.id)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %w", errUnconfirmed, err)
	case ip != a.ip:
		return fmt.Errorf("%s answered, but %s holds %v now", a.ip, shortID(a.id), ip)
	case !started.Equal(a.started):
		return fmt.Errorf("%s answered, but %s restarted since", a.ip, shortID(a.id))
	}
	return nil
}

// retireOne retires a container (docker rm -f by default), then closes
// whatever it still carries: after a graceful stop (-stop_timeout) that is
// only what the service left open, and after rm -f the container's network
// is gone, so without this those connections would hang.
func (rn *runner) retireOne(ctx context.Context, a actRetire, b *backend) {
	err := rn.retire.retire(ctx, a.id)
	if ctx.Err() != nil {
		return
	}
	closed := 0
	if b != nil {
		closed = b.closeAll()
	}
	if err == nil {
		rn.rule.m.removals.Inc()
		rn.log.Info(rn.retire.String(), "container", shortID(a.id), "addr", a.ip, "reason", a.why, "closed", closed)
	}
	rn.report(ctx, evRetire{a.id, err})
}

// newDeployRunner makes the rule and its runner from the flags.
func newDeployRunner(cfg config, route *router, docker dockerAPI, m *metrics, log *slog.Logger) *runner {
	rl := newRule(ruleConfig{
		statusTimeout: cfg.statusTimeout,
		grace:         cfg.grace,
		drain:         cfg.drain,
		probes:        cfg.statusURL.port != 0 || cfg.statusPort != 0,
	}, log, m)
	rn := newRunner(rl, route, cfg.ports, newChecker(cfg.statusURL, readinessPort(cfg)),
		dockerRetirer{docker: docker, mode: cfg.retire, stopTimeout: cfg.stopTimeout}, log)
	rn.owner = addressOf(docker, cfg.network)
	rn.tag, rn.address, rn.version = cfg.tag, cfg.address, versionString()
	rn.settings = settings{StatusTimeout: cfg.statusTimeout.String(), GracePeriod: cfg.grace.String(), Drain: cfg.drain,
		Retire: string(cfg.retire), StopTimeout: cfg.stopTimeout.String()}
	return rn
}

// addressOf returns a function that tells, by an inspect, the address a
// running, unpaused container holds and when its run started.
func addressOf(docker dockerAPI, network string) func(ctx context.Context, id string) (netip.Addr, time.Time, error) {
	return func(ctx context.Context, id string) (netip.Addr, time.Time, error) {
		ctx, cancel := context.WithTimeout(ctx, dockerTimeout)
		defer cancel()
		c, err := docker.ContainerInspect(ctx, id)
		switch {
		case err != nil:
			return netip.Addr{}, time.Time{}, fmt.Errorf("inspect %s: %w", shortID(id), err)
		case c.ContainerJSONBase == nil || c.State == nil || !c.State.Running || c.State.Paused:
			return netip.Addr{}, time.Time{}, fmt.Errorf("container %s: not running", shortID(id))
		}
		started, _ := time.Parse(time.RFC3339Nano, c.State.StartedAt)
		ip, _, _, err := containerIP(c.NetworkSettings, network)
		return ip, started, err
	}
}
