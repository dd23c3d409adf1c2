package main

// A fake Docker daemon for the simulation (sim_test.go): containers with
// addresses on one network, an event log that subscriptions replay from
// Since, and faults the generator turns on: calls that fail or hang, event
// streams that break, duplicate, reorder and replay, a clock off the
// proxy's. It runs inside a synctest bubble.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
)

// simCtr is one container of the fake daemon.
type simCtr struct {
	id, image        string
	created, started time.Time // the daemon's clock
	running, paused  bool
	ip               netip.Addr    // zero: no address
	listenAfter      time.Duration // after each start it answers probes this late; negative: never
	listenAt         time.Time     // the proxy's clock: it answers probes from then on; zero: never
	unready          bool          // answers no probe for now
	restart          bool          // --restart always
	healthcheck      bool          // it has a HEALTHCHECK ...
	healthy          bool          // ... and reported healthy last
}

func (c *simCtr) listening(now time.Time) bool {
	return c.running && !c.paused && !c.unready && c.ip.IsValid() && !c.listenAt.IsZero() && !now.Before(c.listenAt)
}

type simSub struct {
	network bool // network events, else container events
	msgs    chan events.Message
	errs    chan error
}

// simCall names a Docker call that faults can hit.
type simCall string

const (
	callList    simCall = "list"
	callInspect simCall = "inspect"
	callRemove  simCall = "remove"
)

type simDocker struct {
	mu      sync.Mutex
	skew    time.Duration // the daemon's clock minus the proxy's
	dropped bool          // an event was dropped since the streams last broke
	last    time.Time     // the daemon's clock when last read
	ctrs    map[string]*simCtr
	seq     int
	log     []events.Message
	subs    []*simSub

	fail, hang map[simCall]int // the next n calls fail, or hang until their deadline
	hung       int             // calls hanging now
	drop       int             // the next n events reach no subscription (the log keeps them)
	dup        bool            // the next event is sent twice
	reorder    bool            // the next event is held back ...
	held       *events.Message // ... and sent after the one that follows it
	midList    func()          // runs inside the next list, after it was taken

	// What the invariants need.
	okProbes   map[string]int // successful probes by container
	removals   []simRemoval
	violations []string
	routed     func() *backend // the proxy's route, read at each removal
}

type simRemoval struct {
	id string
	at time.Time
}

func newSimDocker(skew time.Duration) *simDocker {
	return &simDocker{
		skew:     skew,
		ctrs:     make(map[string]*simCtr),
		fail:     make(map[simCall]int),
		hang:     make(map[simCall]int),
		okProbes: make(map[string]int),
	}
}

// daemonNow is the daemon's clock. It never stands still, as a real one
// does not at nanosecond resolution: a stop and a restart in one instant
// of the bubble still come in order.
func (d *simDocker) daemonNow() time.Time {
	now := time.Now().Add(d.skew)
	if !now.After(d.last) {
		now = d.last.Add(time.Microsecond)
	}
	d.last = now
	return now
}

// sorted returns the containers in id order, which is creation order.
func (d *simDocker) sorted() []*simCtr {
	cs := make([]*simCtr, 0, len(d.ctrs))
	for _, c := range d.ctrs {
		cs = append(cs, c)
	}
	slices.SortFunc(cs, func(a, b *simCtr) int { return strings.Compare(a.id, b.id) })
	return cs
}

// freeIP returns the lowest address no running container holds, so that
// addresses are reused as soon as they are free, as Docker's IPAM may.
func (d *simDocker) freeIP() netip.Addr {
	for i := 2; ; i++ {
		ip := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		used := false
		for _, c := range d.ctrs {
			used = used || c.ip == ip
		}
		if !used {
			return ip
		}
	}
}

// emit logs an event and sends it to the subscriptions.
func (d *simDocker) emit(typ events.Type, action events.Action, c *simCtr) {
	ev := events.Message{Type: typ, Action: action, TimeNano: d.daemonNow().UnixNano()}
	if typ == events.NetworkEventType {
		ev.Actor = events.Actor{ID: "net-bridge", Attributes: map[string]string{"container": c.id, "name": "bridge"}}
	} else {
		ev.Actor = events.Actor{ID: c.id, Attributes: map[string]string{"image": c.image}}
	}
	d.log = append(d.log, ev)
	d.send(ev)
}

func (d *simDocker) send(ev events.Message) {
	if d.drop > 0 {
		d.drop--
		d.dropped = true
		return
	}
	if d.dup {
		d.dup = false
		d.deliver(ev)
	}
	if d.reorder && d.held == nil {
		d.reorder = false
		d.held = &ev
		return
	}
	if d.held != nil {
		held := *d.held
		d.held = nil
		d.deliver(ev)
		d.deliver(held)
		return
	}
	d.deliver(ev)
}

func (d *simDocker) deliver(ev events.Message) {
	for _, s := range d.subs {
		if s.network == (ev.Type == events.NetworkEventType) {
			s.msgs <- ev
		}
	}
}

// breakStreams ends every subscription with an error.
func (d *simDocker) breakStreams() {
	d.dropped = false
	for _, s := range d.subs {
		s.errs <- errors.New("simulated: event stream broken")
	}
	d.subs = nil
}

// settled tells whether the proxy can know what the daemon knows: a
// subscription of each kind is up and no fault is pending.
func (d *simDocker) settled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, s := range d.subs {
		if len(s.msgs) == 0 {
			n++
		}
	}
	pending := d.hung > 0 || d.held != nil || d.midList != nil || d.dropped
	for _, k := range []simCall{callList, callInspect} {
		pending = pending || d.fail[k] > 0 || d.hang[k] > 0
	}
	return n >= 2 && !pending
}

// fault returns the error a call meets, after hanging if it must.
func (d *simDocker) fault(ctx context.Context, call simCall) error {
	d.mu.Lock()
	if d.hang[call] > 0 {
		d.hang[call]--
		d.hung++
		d.mu.Unlock()
		<-ctx.Done() // a call with no deadline hangs for ever: the simulation notices
		d.mu.Lock()
		d.hung--
		d.mu.Unlock()
		return fmt.Errorf("simulated hang: %w", ctx.Err())
	}
	defer d.mu.Unlock()
	if d.fail[call] > 0 {
		d.fail[call]--
		return fmt.Errorf("simulated %s failure", call)
	}
	return nil
}

func (d *simDocker) Events(ctx context.Context, opts events.ListOptions) (<-chan events.Message, <-chan error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := &simSub{
		network: slices.Contains(opts.Filters.Get("type"), string(events.NetworkEventType)),
		msgs:    make(chan events.Message, 10000),
		errs:    make(chan error, 1),
	}
	if opts.Since != "" {
		sec, nsec, _ := strings.Cut(opts.Since, ".")
		secs, _ := strconv.ParseInt(sec, 10, 64)
		nsecs, _ := strconv.ParseInt(nsec, 10, 64)
		since := secs*1e9 + nsecs
		for _, ev := range d.log {
			if ev.TimeNano >= since && s.network == (ev.Type == events.NetworkEventType) {
				s.msgs <- ev
			}
		}
	}
	d.subs = append(d.subs, s)
	context.AfterFunc(ctx, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.subs = slices.DeleteFunc(d.subs, func(o *simSub) bool { return o == s })
	})
	return s.msgs, s.errs
}

func (d *simDocker) ContainerList(ctx context.Context, _ container.ListOptions) ([]container.Summary, error) {
	if err := d.fault(ctx, callList); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []container.Summary
	for _, c := range d.sorted() {
		if c.running {
			up := d.daemonNow().Sub(c.started)
			out = append(out, container.Summary{ID: c.id, Image: c.image, ImageID: "sha256:" + c.image,
				Status: fmt.Sprintf("Up %d seconds", int(up.Seconds()))})
		}
	}
	if f := d.midList; f != nil {
		d.midList = nil
		f() // a change the list does not show
	}
	return out, nil
}

func (d *simDocker) ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error) {
	if err := d.fault(ctx, callInspect); err != nil {
		return container.InspectResponse{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.ctrs[id]
	if c == nil {
		return container.InspectResponse{}, fmt.Errorf("no such container %s: %w", id, cerrdefs.ErrNotFound)
	}
	cfg := &container.Config{Image: c.image}
	state := &container.State{Running: c.running, Paused: c.paused, StartedAt: c.started.Format(time.RFC3339Nano)}
	if c.healthcheck {
		cfg.Healthcheck = &container.HealthConfig{Test: []string{"CMD", "/check"}}
		state.Health = &container.Health{Status: container.Unhealthy}
		if c.healthy {
			state.Health.Status = container.Healthy
		}
	}
	nets := map[string]*network.EndpointSettings{}
	if c.ip.IsValid() {
		nets["bridge"] = &network.EndpointSettings{IPAddress: c.ip.String()}
	}
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID:      c.id,
			Created: c.created.Format(time.RFC3339Nano),
			State:   state,
		},
		Config:          cfg,
		NetworkSettings: &container.NetworkSettings{Networks: nets},
	}, nil
}

func (d *simDocker) ContainerRemove(ctx context.Context, id string, _ container.RemoveOptions) error {
	d.mu.Lock()
	c := d.ctrs[id]
	d.check(id, c)
	d.mu.Unlock()
	if err := d.fault(ctx, callRemove); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c = d.ctrs[id]; c == nil {
		return fmt.Errorf("no such container %s: %w", id, cerrdefs.ErrNotFound)
	}
	d.removals = append(d.removals, simRemoval{id, time.Now()})
	d.destroy(c)
	return nil
}

func (d *simDocker) ContainerStop(ctx context.Context, id string, _ container.StopOptions) error {
	return errors.New("simulated: stop is not used")
}

// check applies invariant 2 to a removal the proxy asks for.
func (d *simDocker) check(id string, c *simCtr) {
	switch {
	case c == nil:
		return // gone already: a retried removal
	case c.image != simTag:
		d.violations = append(d.violations, fmt.Sprintf("removed %s of another image %s", id, c.image))
	case d.okProbes[id] == 0:
		d.violations = append(d.violations, fmt.Sprintf("removed %s, which never became ready", id))
	}
	if b := d.routed(); b != nil && b.id == id {
		d.violations = append(d.violations, fmt.Sprintf("removed %s while it serves", id))
	}
}

// probe is the proxy's readiness probe: whatever listens at ip answers,
// even a container of another image that got the address.
func (d *simDocker) probe(ctx context.Context, ip netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.ctrs {
		if c.ip == ip && c.listening(time.Now()) {
			d.okProbes[c.id]++
			return nil
		}
	}
	return fmt.Errorf("dial %s: connection refused", ip)
}

// The daemon's side of the history.

func (d *simDocker) create(image string, listenAfter time.Duration, restart bool) *simCtr {
	return d.createHC(image, listenAfter, restart, false)
}

func (d *simDocker) createHC(image string, listenAfter time.Duration, restart, healthcheck bool) *simCtr {
	d.seq++
	now := d.daemonNow()
	c := &simCtr{id: fmt.Sprintf("c%03d", d.seq), image: image, created: now, restart: restart, listenAfter: listenAfter, healthcheck: healthcheck}
	d.ctrs[c.id] = c
	d.start(c)
	return c
}

func (d *simDocker) start(c *simCtr) {
	c.running, c.paused, c.started, c.healthy = true, false, d.daemonNow(), false
	c.ip = d.freeIP()
	c.listenAt = time.Time{}
	if c.listenAfter >= 0 {
		c.listenAt = time.Now().Add(c.listenAfter)
	}
	d.emit(events.ContainerEventType, events.ActionStart, c)
}

// healthChecks runs the HEALTHCHECKs, as the daemon does every so often:
// a container reports healthy while it answers, else unhealthy.
func (d *simDocker) healthChecks() {
	for _, c := range d.sorted() {
		if !c.healthcheck || !c.running || c.paused || c.listening(time.Now()) == c.healthy {
			continue
		}
		c.healthy = !c.healthy
		if c.healthy {
			d.okProbes[c.id]++ // the proxy's verdict, as a probe's would be
			d.emit(events.ContainerEventType, "health_status: healthy", c)
		} else {
			d.emit(events.ContainerEventType, "health_status: unhealthy", c)
		}
	}
}

func (d *simDocker) die(c *simCtr) {
	if !c.running {
		return
	}
	c.running, c.paused, c.ip = false, false, netip.Addr{}
	d.emit(events.ContainerEventType, events.ActionDie, c)
}

func (d *simDocker) destroy(c *simCtr) {
	d.die(c)
	delete(d.ctrs, c.id)
	d.emit(events.ContainerEventType, events.ActionDestroy, c)
}
