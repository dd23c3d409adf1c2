package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// dockerAPI holds the only Docker calls the proxy makes, so that fakes stay
// small and a move to another client touches this file alone.
type dockerAPI interface {
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error)
	ContainerRemove(ctx context.Context, id string, options container.RemoveOptions) error
	ContainerStop(ctx context.Context, id string, options container.StopOptions) error
}

// ctrInfo is what the proxy knows of one running container of the tag.
type ctrInfo struct {
	id      string
	name    string    // without Docker's leading slash
	image   string    // as the container was started: the reference, or an image id
	created time.Time // orders containers: the newest ready one serves
	started time.Time // tells a restart from a repeated event
	ip      netip.Addr

	healthcheck bool          // the image or container defines a HEALTHCHECK
	healthy     bool          // its state was healthy when inspected
	unhealthy   bool          // its state was unhealthy (not only starting) when inspected
	paused      bool          // docker pause: the kernel accepts, nothing answers
	age         time.Duration // how long it had run when inspected, by the daemon's clock; 0: unknown
}

func (c ctrInfo) short() string { return shortID(c.id) }

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// watcher follows the containers of the selection through the daemon's
// event stream and tells the rule as events (see rule.go): it inspects
// every start, tells a stale (replayed) stop from a real one by the
// daemon's own times or else by an inspect, and re-inspects a container
// whose networks change, so that the rule never dials an address the container
// lost. Every call but the event stream has a deadline (dockerTimeout); a
// failed call restarts the stream, and with it the resync.
type watcher struct {
	docker dockerAPI
	sel    selector
	net    string // -network
	m      *metrics
	// connected tells whether the event stream is up, for /status.
	connected atomic.Bool
	log       *slog.Logger
	out       chan<- any
	ours      map[string]time.Time // containers of the selection seen: the start of their run (daemon clock; zero: not running)
	dialed    map[string]string    // the network each one's address was taken on
}

// Event stream reconnection backoff.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// run subscribes to events, lists the running containers of the tag and
// then follows events, until ctx ends. When the stream breaks it subscribes
// again with Since set to the last event seen, and lists again, so a
// container started during the gap is not missed.
func (w *watcher) run(ctx context.Context) error {
	var (
		since   int64 // unix ns: the daemon's time of the last event seen; before any, the proxy's at the first subscription
		seen    bool  // an event came: since is the daemon's
		backoff time.Duration
		initial = true
	)
	for {
		err := w.follow(ctx, since, initial, func(ev events.Message) {
			since, seen = max(since, ev.TimeNano), true
			backoff = 0
		}, func(subscribed int64) {
			if !seen {
				since = subscribed // only a hint: the list after each subscription is what counts
			}
			if !initial && backoff > 0 {
				w.log.Info("event stream restored")
			}
			initial = false
			backoff = 0
			w.connected.Store(true)
		})
		if ctx.Err() != nil {
			return nil
		}
		w.connected.Store(false)
		if backoff == 0 {
			w.m.reconnects.Inc()
			w.log.Warn("event stream lost, reconnecting", "err", err, "backoff", minBackoff)
		} else {
			w.log.Debug("event stream still down", "err", err, "backoff", backoff)
		}
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil
		}
	}
}

// follow makes one subscription: it subscribes, lists, then relays events
// until the stream fails or a call the events need fails. seen is called
// for every event, listed once the list has been sent.
func (w *watcher) follow(ctx context.Context, since int64, initial bool, seen func(events.Message), listed func(subscribed int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if w.dialed == nil {
		w.dialed = make(map[string]string)
	}
	if w.ours == nil {
		w.ours = make(map[string]time.Time)
	}
	opts := events.ListOptions{Filters: w.sel.eventFilter()}
	netOpts := events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.NetworkEventType)),
		filters.Arg("event", string(events.ActionConnect)),
		filters.Arg("event", string(events.ActionDisconnect)),
	)}
	if since > 0 {
		opts.Since = fmt.Sprintf("%d.%09d", since/1e9, since%1e9)
		netOpts.Since = opts.Since
	}
	// Since only asks the daemon to replay from about then, by its own
	// clock once an event has told it: events replayed from before the
	// list are harmless, since each is checked (see translate).
	listAt := time.Now().UnixNano()
	msgs, errs := w.docker.Events(ctx, opts)
	netMsgs, netErrs := w.docker.Events(ctx, netOpts)
	list, err := w.list(ctx)
	if err != nil {
		return err
	}
	if !w.send(ctx, evList{ctrs: list, initial: initial}) {
		return ctx.Err()
	}
	listed(listAt)
	// A daemon can stop sending events without closing the stream (a
	// wedged daemon, a proxy in front of it): a list now and then
	// catches up with whatever the stream missed.
	resync := time.NewTicker(resyncEvery)
	defer resync.Stop()
	for {
		var ev events.Message
		select {
		case ev = <-msgs:
		case ev = <-netMsgs:
		case err := <-errs:
			return err
		case err := <-netErrs:
			return err
		case <-resync.C:
			list, err := w.list(ctx)
			if err != nil {
				return err // the stream restarts, with a list
			}
			if !w.send(ctx, evList{ctrs: list}) {
				return ctx.Err()
			}
			continue
		case <-ctx.Done():
			return ctx.Err()
		}
		seen(ev)
		out, err := w.translate(ctx, ev)
		if err != nil {
			return err
		}
		if out != nil && !w.send(ctx, out) {
			return ctx.Err()
		}
	}
}

// resyncEvery is how often the watcher lists the containers while the
// event stream is up.
const resyncEvery = 5 * time.Minute

func (w *watcher) send(ctx context.Context, ev any) bool {
	select {
	case w.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// translate turns a daemon event into a rule event, if it is about one of
// ours. An error means the watcher cannot tell (an inspect failed).
func (w *watcher) translate(ctx context.Context, ev events.Message) (any, error) {
	id := ev.Actor.ID
	if ev.Type == events.NetworkEventType {
		id = ev.Actor.Attributes["container"]
		if _, ok := w.ours[id]; !ok {
			return nil, nil
		}
		return w.confirm(ctx, id, ev)
	}
	if ev.Type != events.ContainerEventType || !w.sel.match(ev.Actor.Attributes["image"], ev.Actor.Attributes) {
		return nil, nil
	}
	switch ev.Action {
	case events.ActionDie, events.ActionDestroy:
		// A stop is applied at once when the daemon's clock says it
		// ends the run the watcher knows (new connections must not
		// wait for an inspect to stop dialling it); any other die, a
		// replayed one or one whose time went back with the daemon's
		// clock, is confirmed by an inspect.
		started, known := w.ours[id]
		switch {
		case known && !started.IsZero() && ev.TimeNano >= started.UnixNano():
		case ev.Action == events.ActionDie:
			return w.confirm(ctx, id, ev)
		}
		w.ours[id] = time.Time{}
		if ev.Action == events.ActionDestroy {
			delete(w.ours, id)
		}
		return evStop{id: id, destroyed: ev.Action == events.ActionDestroy}, nil
	case events.ActionStart, events.ActionPause, events.ActionUnPause, "health_status: healthy", "health_status: unhealthy":
		// The daemon sends pause and health events only on a change: a
		// replayed one that is no longer true would stick, so the
		// inspect tells what is true now.
		return w.confirm(ctx, id, ev)
	}
	return nil, nil
}

// confirm inspects id after ev and tells what the daemon says now: it
// runs (a start, perhaps on another address), or it does not (a stop).
func (w *watcher) confirm(ctx context.Context, id string, ev events.Message) (any, error) {
	info, running, err := w.inspect(ctx, id)
	var noAddr *noAddrError
	switch {
	case cerrdefs.IsNotFound(err):
		delete(w.ours, id)
		return evStop{id: id, destroyed: true}, nil
	case errors.As(err, &noAddr):
		w.log.Warn("inspect failed", "container", shortID(id), "event", string(ev.Action), "err", err)
		return evStop{id: id}, nil
	case errors.Is(err, errNotOurs):
		return nil, nil
	case err != nil:
		return nil, err // the stream restarts, and the list catches up
	case !running:
		return evStop{id: id}, nil
	}
	if ev.Action == events.ActionStart && ev.TimeNano > 0 && !info.started.IsZero() {
		// Both times are the daemon's.
		info.age = max(time.Duration(ev.TimeNano-info.started.UnixNano()), 0)
	}
	return evStart{ctr: info}, nil
}

// list returns the running containers of the selection (see
// selector.maybe). One inspect that fails, other than for a container that
// is gone, fails the list (a container missing from it is taken as
// stopped), unless the container is listed by image id only and the
// watcher has never seen it.
func (w *watcher) list(ctx context.Context) ([]ctrInfo, error) {
	lctx, cancel := context.WithTimeout(ctx, dockerTimeout)
	all, err := w.docker.ContainerList(lctx, container.ListOptions{})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var list []ctrInfo
	var noAddr *noAddrError
	for _, c := range all {
		if !w.sel.maybe(c.Image, c.ImageID, c.Labels) {
			continue
		}
		info, running, err := w.inspect(ctx, c.ID)
		switch {
		case errors.Is(err, errNotOurs), cerrdefs.IsNotFound(err):
			continue
		case errors.As(err, &noAddr):
			// A container of ours that cannot be served, e.g. not on
			// -network: say so, or a typo looks like an empty host.
			w.log.Warn("inspect failed", "container", shortID(c.ID), "err", err)
			continue
		case err != nil:
			if _, known := w.ours[c.ID]; !known && !w.sel.match(c.Image, c.Labels) {
				// Listed by image id only (its tag was rebuilt): it may
				// be any service's, and one stuck container of another
				// must not fail every resync.
				w.log.Warn("inspect failed; skipped, it may not be selected", "container", shortID(c.ID), "err", err)
				continue
			}
			return nil, err
		}
		if running {
			info.age = upFor(c.Status)
			list = append(list, info)
		}
	}
	return list, nil
}

// upFor reads how long a listed container has run from its status, which
// the daemon words by its own clock ("Up 8 seconds", "Up About a minute
// (healthy)"); 0 when it cannot tell.
func upFor(status string) time.Duration {
	rest, ok := strings.CutPrefix(status, "Up ")
	if !ok {
		return 0
	}
	var n int
	var unit string
	switch {
	case strings.HasPrefix(rest, "Less than a second"):
		return 0
	case strings.HasPrefix(rest, "About a minute"):
		return time.Minute
	case strings.HasPrefix(rest, "About an hour"):
		return time.Hour
	}
	if _, err := fmt.Sscanf(rest, "%d %s", &n, &unit); err != nil {
		return 0
	}
	switch strings.TrimSuffix(unit, "s") {
	case "second":
		return time.Duration(n) * time.Second
	case "minute":
		return time.Duration(n) * time.Minute
	case "hour":
		return time.Duration(n) * time.Hour
	}
	return 0
}

// errNotOurs says that an inspected container was not made from the tag.
var errNotOurs = errors.New("not selected")

// keptNetwork is the network to take id's address on: -network if set;
// else the one it was taken on before, while id still has an address
// there, so that connecting a container to one more network does not
// move the address the proxy dials (and cut its connections); else none
// (containerIP's default).
func (w *watcher) keptNetwork(id string, ns *container.NetworkSettings) string {
	if w.net != "" {
		return w.net
	}
	prev, ok := w.dialed[id]
	if !ok || ns == nil {
		return ""
	}
	if ep := ns.Networks[prev]; ep != nil && ep.IPAddress != "" {
		return prev
	}
	return ""
}

// noAddrError says that a container of ours has no address to dial.
type noAddrError struct{ err error }

func (e *noAddrError) Error() string { return e.err.Error() }
func (e *noAddrError) Unwrap() error { return e.err }

// inspect reads a container of the selection, and whether it is running.
func (w *watcher) inspect(ctx context.Context, id string) (ctrInfo, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, dockerTimeout)
	defer cancel()
	c, err := w.docker.ContainerInspect(ctx, id)
	if err != nil {
		return ctrInfo{}, false, fmt.Errorf("inspect %s: %w", shortID(id), err)
	}
	if c.ContainerJSONBase == nil || c.State == nil || c.Config == nil || !w.sel.match(c.Config.Image, c.Config.Labels) {
		return ctrInfo{}, false, errNotOurs
	}
	info := ctrInfo{id: c.ID, name: strings.TrimPrefix(c.Name, "/"), image: c.Config.Image, paused: c.State.Paused}
	info.created, _ = time.Parse(time.RFC3339Nano, c.Created)
	info.started, _ = time.Parse(time.RFC3339Nano, c.State.StartedAt)
	w.ours[c.ID] = time.Time{}
	if !c.State.Running {
		return info, false, nil
	}
	w.ours[c.ID] = info.started
	ip, network, warn, err := containerIP(c.NetworkSettings, w.keptNetwork(c.ID, c.NetworkSettings))
	if err != nil {
		return info, false, &noAddrError{fmt.Errorf("container %s: %w", shortID(id), err)}
	}
	w.dialed[c.ID] = network
	if warn != "" {
		w.log.Warn("several networks", "container", info.short(), "addr", ip, "networks", warn)
	}
	info.ip = ip
	if hc := c.Config.Healthcheck; hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE" {
		info.healthcheck = true
		if c.State.Health != nil {
			info.healthy = c.State.Health.Status == container.Healthy
			info.unhealthy = c.State.Health.Status == container.Unhealthy
		}
	}
	w.log.Debug("inspected", "container", info.short(), "addr", ip, "network", network, "healthcheck", info.healthcheck)
	return info, true, nil
}

// containerIP picks the address the proxy dials: the one on network if it
// is set; else the one on the default bridge, else on the only network.
// With several networks and no bridge it takes the first by name, so that
// the choice is the same every time, and says so in warn.
func containerIP(ns *container.NetworkSettings, network string) (ip netip.Addr, chosen, warn string, err error) {
	if ns == nil {
		return ip, "", "", fmt.Errorf("no network settings")
	}
	names := make([]string, 0, len(ns.Networks))
	for name, ep := range ns.Networks {
		if ep != nil && ep.IPAddress != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	switch {
	case network != "":
		if !slices.Contains(names, network) {
			return ip, "", "", fmt.Errorf("no address on network %s (it has one on: %s)", network, strings.Join(names, ", "))
		}
		chosen = network
	case len(names) == 0:
		return ip, "", "", fmt.Errorf("no IP address on any network")
	case slices.Contains(names, "bridge"):
		chosen = "bridge"
	default:
		chosen = names[0]
		if len(names) > 1 {
			warn = fmt.Sprintf("on networks %s; using %s (choose with -network)", strings.Join(names, ", "), chosen)
		}
	}
	ip, err = netip.ParseAddr(ns.Networks[chosen].IPAddress)
	if err != nil {
		return ip, "", "", fmt.Errorf("network %s: %w", chosen, err)
	}
	return ip, chosen, warn, nil
}
