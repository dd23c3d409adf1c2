package main

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// readiness tells whether a container can take traffic (see checker).
type readiness interface {
	probe(ctx context.Context, ip netip.Addr) error
	waitReady(ctx context.Context, ip netip.Addr, deadline time.Time) error
}

// ctrState is where a container of the tag is in its life with the proxy.
type ctrState int

const (
	fresh    ctrState = iota // just seen, nothing decided yet
	checking                 // started; its readiness check runs
	serving                  // the backend for new connections
	retiring                 // superseded; removed when its grace period ends
	ignored                  // not ready in time; left alone, gets no traffic
	removed                  // removal sent
)

// ctr is the deployer's record of one container.
type ctr struct {
	ctrInfo
	state   ctrState
	backend *backend // once it has served
	stopped bool     // retiring, but no longer running: no rollback to it
	gen     int      // counts checks and retirements, so stale results are dropped
	cancel  context.CancelFunc
}

// deployer owns the swap rule: the newest ready container of the tag serves;
// the one it replaced is retired after the grace period; any other is
// removed at once, since it never carried a connection. It runs as one
// goroutine, so its state needs no lock.
type deployer struct {
	route         *router
	ports         []portMap
	ready         readiness
	retire        retirer
	statusTimeout time.Duration
	grace         time.Duration
	drain         bool // retire as soon as the last connection closes
	probes        bool // -status_url or -status_port is set: readiness is probed
	log           *slog.Logger

	ctrs    map[string]*ctr
	current *ctr
	results chan result

	m    *metrics
	name string                 // the selector, for /status
	snap atomic.Pointer[status] // for /status, renewed after every change
}

// result is the outcome of a readiness check, or the end of a grace period.
type result struct {
	c   *ctr
	gen int
	err error // readiness: nil when ready
}

func newDeployer(route *router, ports []portMap, ready readiness, retire retirer, log *slog.Logger) *deployer {
	return &deployer{
		route:   route,
		ports:   ports,
		ready:   ready,
		retire:  retire,
		log:     log,
		ctrs:    make(map[string]*ctr),
		results: make(chan result),
		m:       newMetrics(ports),
	}
}

// run applies changes until ctx ends. Pending checks and removals end
// with it: a proxy that stops removes nothing.
func (d *deployer) run(ctx context.Context, changes <-chan change) {
	for {
		select {
		case ch := <-changes:
			d.apply(ctx, ch)
		case r := <-d.results:
			if r.gen != r.c.gen || d.ctrs[r.c.id] != r.c {
				continue // superseded by a later check, a rollback or a stop
			}
			switch r.c.state {
			case checking:
				d.checked(ctx, r.c, r.err)
			case retiring:
				d.removeNow(ctx, r.c, "grace period over")
			case serving:
				d.failing(r.c, r.err)
			}
		case <-ctx.Done():
			return
		}
		d.publish()
	}
}

// publish renews the /status snapshot.
func (d *deployer) publish() {
	s := &status{Selector: d.name}
	for _, c := range d.ctrs {
		cs := ctrStatus{Container: c.short(), Addr: c.ip.String(), Created: c.created, backend: c.backend}
		switch c.state {
		case serving:
			s.Serving = &cs
		case checking:
			s.Pending = append(s.Pending, cs)
		case retiring:
			s.Draining = append(s.Draining, cs)
		case ignored:
			s.Ignored = append(s.Ignored, cs)
		}
	}
	d.snap.Store(s)
}

// backends returns every backend that may still carry connections.
func (d *deployer) backends() []*backend {
	var bs []*backend
	for _, c := range d.ctrs {
		if c.backend != nil && c.state != removed {
			bs = append(bs, c.backend)
		}
	}
	return bs
}

func (d *deployer) apply(ctx context.Context, ch change) {
	switch ch.kind {
	case started:
		d.started(ctx, ch.ctr)
	case stopped:
		d.stopped(ch.id)
	case health:
		d.health(ctx, ch.id, ch.healthy)
	case synced:
		if ch.initial {
			d.startup(ctx, ch.list)
			return
		}
		running := make(map[string]bool, len(ch.list))
		for _, info := range ch.list {
			running[info.id] = true
			d.started(ctx, info)
		}
		for id, c := range d.ctrs {
			if !running[id] && c.state != removed {
				d.stopped(id)
			}
		}
	}
}

// startup handles the containers that run when the proxy starts: each is
// probed once, the newest ready one serves, and every other one is removed
// at once, except a newer one that is still starting (a deploy in
// progress), which is checked like any new container.
func (d *deployer) startup(ctx context.Context, list []ctrInfo) {
	slices.SortFunc(list, func(a, b ctrInfo) int {
		switch {
		case a.id == b.id:
			return 0
		case newer(a, b):
			return -1
		}
		return 1
	})
	ok := make([]bool, len(list))
	var wg sync.WaitGroup
	for i, info := range list {
		wg.Go(func() { ok[i] = d.readyNow(ctx, info) })
	}
	wg.Wait()
	for i, info := range list {
		c := &ctr{ctrInfo: info}
		d.ctrs[info.id] = c
		switch {
		case ok[i] && d.current == nil:
			d.promote(ctx, c)
		case d.current == nil || newer(info, d.current.ctrInfo):
			d.check(ctx, c)
		default:
			d.removeNow(ctx, c, "start-up clean-up")
		}
	}
	if d.current == nil && len(list) == 0 {
		d.log.Warn("no container of the tag is running yet")
	}
}

// byHealthcheck tells whether c's readiness comes from its HEALTHCHECK:
// when it has one and no status URL or port is set.
func (d *deployer) byHealthcheck(c ctrInfo) bool { return !d.probes && c.healthcheck }

// readyNow tells whether a container is ready at this moment.
func (d *deployer) readyNow(ctx context.Context, c ctrInfo) bool {
	if d.byHealthcheck(c) {
		return c.healthy
	}
	return d.ready.probe(ctx, c.ip) == nil
}

// started handles a container of the tag that started or restarted.

func (d *deployer) started(ctx context.Context, info ctrInfo) {
	c, known := d.ctrs[info.id]
	if known {
		switch {
		case c.started.Equal(info.started):
			return // the same start, seen again (a list after an event)
		case c.state == retiring || c.state == removed:
			c.ctrInfo = info
			return // on its way out already
		}
		d.stopped(info.id) // a restart whose stop was missed: count it now
	}
	c = &ctr{ctrInfo: info}
	d.ctrs[info.id] = c
	if d.current != nil && !newer(info, d.current.ctrInfo) {
		d.removeNow(ctx, c, "older than the serving container")
		return
	}
	d.check(ctx, c)
}

// check starts the readiness check of c.
func (d *deployer) check(ctx context.Context, c *ctr) {
	c.state = checking
	c.gen++
	cctx, cancel := context.WithCancel(ctx)
	c.cancel = cancel
	deadline := time.Now().Add(d.statusTimeout)
	gen, ip := c.gen, c.ip
	if d.byHealthcheck(c.ctrInfo) {
		if c.healthy {
			d.checked(ctx, c, nil)
			return
		}
		d.log.Info("waiting for its HEALTHCHECK", "container", c.short(), "addr", ip)
		time.AfterFunc(d.statusTimeout, func() {
			select {
			case d.results <- result{c: c, gen: gen, err: errNotHealthy}:
			case <-cctx.Done():
			}
		})
		return
	}
	d.log.Info("checking readiness", "container", c.short(), "addr", ip)
	go func() {
		err := d.ready.waitReady(cctx, ip, deadline)
		select {
		case d.results <- result{c: c, gen: gen, err: err}:
		case <-cctx.Done():
		}
	}()
}

var (
	errNotHealthy = errors.New("HEALTHCHECK not healthy in time")
	errUnhealthy  = errors.New("HEALTHCHECK reports unhealthy")
)

// health takes a HEALTHCHECK's verdict on a container: the end of its
// readiness check, or a serving container failing during a grace period.
func (d *deployer) health(ctx context.Context, id string, healthy bool) {
	c, ok := d.ctrs[id]
	if !ok {
		return
	}
	c.healthy = healthy
	switch {
	case c.state == checking && d.byHealthcheck(c.ctrInfo):
		if healthy {
			d.checked(ctx, c, nil)
		} else {
			d.checked(ctx, c, errUnhealthy)
		}
	case c.state == serving && !healthy && d.byHealthcheck(c.ctrInfo):
		d.failing(c, errUnhealthy)
	}
}

// checked takes the outcome of c's readiness check.
func (d *deployer) checked(ctx context.Context, c *ctr, err error) {
	c.cancel()
	switch {
	case err != nil:
		d.m.readiness.WithLabelValues("ignored").Inc()
		c.state = ignored
		d.log.Warn("ignored: not ready in time", "container", c.short(), "addr", c.ip, "timeout", d.statusTimeout, "err", err)
	case d.current == nil || newer(c.ctrInfo, d.current.ctrInfo):
		d.m.readiness.WithLabelValues("ready").Inc()
		d.m.readyTime.Observe(time.Since(c.started).Seconds())
		d.promote(ctx, c)
	default:
		d.m.readiness.WithLabelValues("superseded").Inc()
		d.removeNow(ctx, c, "older than the serving container")
	}
}

// promote makes c the backend for new connections, retires the container
// it replaces, and removes older ones that never served.
func (d *deployer) promote(ctx context.Context, c *ctr) {
	old := d.current
	c.state = serving
	c.gen++
	c.backend = newBackend(c.id, c.ip, d.ports)
	d.current = c
	d.route.store(c.backend)
	d.m.setServing(c)
	if old != nil {
		// No new connection joins the old container from here on: one
		// that loaded it just before the swap dials the new one instead.
		old.backend.seal()
		d.m.swaps.Inc()
		d.log.Info("swap", "container", c.short(), "addr", c.ip, "previous", old.short())
		d.startRetiring(ctx, old)
		d.watchServing(ctx, c)
	} else {
		d.log.Info("serving", "container", c.short(), "addr", c.ip)
	}
	for _, o := range d.ctrs {
		if (o.state == checking || o.state == ignored) && newer(c.ctrInfo, o.ctrInfo) {
			d.removeNow(ctx, o, "older than the serving container")
		}
	}
}

// startRetiring starts c's grace period; with -drain it ends early once c
// carries no connection.
func (d *deployer) startRetiring(ctx context.Context, c *ctr) {
	c.state = retiring
	c.gen++
	gen := c.gen
	cctx, cancel := context.WithTimeout(ctx, d.grace)
	c.cancel = cancel
	var drained <-chan struct{}
	if d.drain {
		drained = c.backend.drained()
	}
	go func() {
		select {
		case <-cctx.Done():
			if !errors.Is(cctx.Err(), context.DeadlineExceeded) || ctx.Err() != nil {
				return // a rollback, or the proxy stops
			}
		case <-drained:
		}
		select {
		case d.results <- result{c: c, gen: gen}:
		case <-ctx.Done():
		}
	}()
}

// stopped handles a container of the tag that stopped or went away.
func (d *deployer) stopped(id string) {
	c, ok := d.ctrs[id]
	if !ok {
		return
	}
	if c.state == retiring {
		c.stopped = true // removed when its grace period ends, as planned
		return
	}
	if c.cancel != nil {
		c.cancel()
	}
	c.gen++ // a check result on its way is stale now
	n := 0
	if c.backend != nil && c.state != removed {
		// A stopped container carries nothing any more; what it did
		// carry would hang once its network is gone.
		n = c.backend.closeAll()
	}
	if c.state == serving {
		d.current = nil
		d.log.Warn("serving container stopped", "container", c.short(), "addr", c.ip, "closed", n)
		d.rollback()
	}
	delete(d.ctrs, id) // a later start is a new container to the deployer
}

// rollbackTarget is the newest retiring container that still runs: the
// one to serve again if the serving one fails during its grace period.
func (d *deployer) rollbackTarget() *ctr {
	var best *ctr
	for _, c := range d.ctrs {
		if c.state == retiring && !c.stopped && (best == nil || newer(c.ctrInfo, best.ctrInfo)) {
			best = c
		}
	}
	return best
}

// rollback serves the rollback target, if any, and cancels its removal.
func (d *deployer) rollback() {
	best := d.rollbackTarget()
	d.m.setServing(best)
	if best == nil {
		d.route.store(nil)
		d.log.Warn("no ready container: new connections wait for one")
		return
	}
	best.cancel()
	best.state = serving
	best.gen++
	best.backend.unseal()
	d.current = best
	d.route.store(best.backend)
	d.m.rollbacks.Inc()
	d.log.Warn("rollback", "container", best.short(), "addr", best.ip)
}

// removeNow retires c (docker rm -f by default), then closes whatever c
// still carries: after a graceful stop (-stop_timeout) that is only what
// the service left open, and after rm -f the container's network is gone,
// so without this those connections would hang.
func (d *deployer) removeNow(ctx context.Context, c *ctr, why string) {
	if c.cancel != nil {
		c.cancel()
	}
	c.state = removed
	c.gen++
	id, b := c.id, c.backend
	args := []any{"container", c.short(), "addr", c.ip, "reason", why}
	go func() {
		err := d.retire.retire(ctx, id)
		closed := 0
		if b != nil {
			closed = b.closeAll()
		}
		switch {
		case err == nil:
			d.m.removals.Inc()
			d.log.Info(d.retire.String(), append(args, "closed", closed)...)
		case ctx.Err() == nil:
			d.log.Error("retire failed", append(args, "err", err)...)
		}
	}()
}

// watchServing keeps probing c after it began serving, for as long as the
// container it replaced may take over again (its grace period): if c fails
// twice in a row, the deployer rolls back.
func (d *deployer) watchServing(ctx context.Context, c *ctr) {
	if !d.probes {
		return // a HEALTHCHECK reports by event (see health)
	}
	gen, ip := c.gen, c.ip
	go func() {
		ctx, cancel := context.WithTimeout(ctx, d.grace)
		defer cancel()
		tick := time.NewTicker(statusInterval)
		defer tick.Stop()
		fails := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			err := d.ready.probe(ctx, ip)
			if err == nil || ctx.Err() != nil {
				fails = 0
				continue
			}
			if fails++; fails == 2 {
				select {
				case d.results <- result{c: c, gen: gen, err: err}:
				case <-ctx.Done():
				}
				return
			}
		}
	}()
}

// failing handles a serving container whose status check fails while the
// one it replaced could still serve: it gets no more new connections (it is
// ignored, and left running) and the previous one serves again.
func (d *deployer) failing(c *ctr, err error) {
	d.log.Warn("serving container failing its status check", "container", c.short(), "addr", c.ip, "err", err)
	if d.rollbackTarget() == nil {
		return // nothing better to serve
	}
	c.state = ignored
	c.gen++
	c.backend.seal()
	d.current = nil
	d.rollback()
}
