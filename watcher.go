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

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
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
	created time.Time // orders containers: the newest ready one serves
	started time.Time // tells a restart from a repeated event
	ip      netip.Addr

	healthcheck bool // the image or container defines a HEALTHCHECK
	healthy     bool // its state was healthy when inspected
}

func (c ctrInfo) short() string { return shortID(c.id) }

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// newer reports whether a should serve rather than b: it was created later
// (the id breaks a tie, so the order is total).
func newer(a, b ctrInfo) bool {
	if !a.created.Equal(b.created) {
		return a.created.After(b.created)
	}
	return a.id > b.id
}

// changeKind says what happened to containers of the tag.
type changeKind int

const (
	started changeKind = iota // ctr started, or restarted
	stopped                   // id stopped or was removed
	synced                    // list holds every running container of the tag
	health                    // id's HEALTHCHECK turned healthy (or not)
)

// change is what the watcher tells the deployer.
type change struct {
	kind    changeKind
	ctr     ctrInfo   // started
	id      string    // stopped
	list    []ctrInfo // synced
	initial bool      // synced: the list made at start-up
	healthy bool      // health
}

// watcher follows the containers of one tag through the daemon's event
// stream and reports them to the deployer as changes.
type watcher struct {
	docker dockerAPI
	sel    selector
	net    string // -network
	m      *metrics
	// connected tells whether the event stream is up, for /status.
	connected atomic.Bool
	log       *slog.Logger
	out       chan<- change
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
		since   int64 // unix ns: the last event seen, or the last subscription
		backoff time.Duration
		initial = true
	)
	for {
		err := w.follow(ctx, since, initial, func(ev events.Message) {
			since = max(since, ev.TimeNano)
			backoff = 0
		}, func(subscribed int64) {
			since = max(since, subscribed)
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
// until the stream fails. seen is called for every event, listed once the
// list has been sent.
func (w *watcher) follow(ctx context.Context, since int64, initial bool, seen func(events.Message), listed func(subscribed int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	opts := events.ListOptions{Filters: w.sel.eventFilter()}
	if since > 0 {
		opts.Since = fmt.Sprintf("%d.%09d", since/1e9, since%1e9)
	}
	listAt := time.Now().UnixNano()
	msgs, errs := w.docker.Events(ctx, opts)
	list, err := w.list(ctx)
	if err != nil {
		return err
	}
	if !w.send(ctx, change{kind: synced, list: list, initial: initial}) {
		return ctx.Err()
	}
	listed(listAt)
	// Events replayed from Since can be older than the list: a stop that
	// the list has already seen undone (the container runs again) is
	// stale, and applying it would cut a container that serves.
	running := make(map[string]bool, len(list))
	for _, c := range list {
		running[c.id] = true
	}
	for {
		select {
		case ev := <-msgs:
			seen(ev)
			c, ok := w.translate(ctx, ev)
			if ok && c.kind == stopped && running[c.id] && ev.TimeNano < listAt {
				continue
			}
			if ok && !w.send(ctx, c) {
				return ctx.Err()
			}
		case err := <-errs:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (w *watcher) send(ctx context.Context, c change) bool {
	select {
	case w.out <- c:
		return true
	case <-ctx.Done():
		return false
	}
}

// translate turns a daemon event into a change, if it is one of ours.
func (w *watcher) translate(ctx context.Context, ev events.Message) (change, bool) {
	if ev.Type != events.ContainerEventType || !w.sel.match(ev.Actor.Attributes["image"], ev.Actor.Attributes) {
		return change{}, false
	}
	switch ev.Action {
	case events.ActionStart:
		info, running, err := w.inspect(ctx, ev.Actor.ID)
		if err != nil {
			w.log.Error("inspect failed", "container", shortID(ev.Actor.ID), "err", err)
			return change{}, false
		}
		if !running {
			return change{kind: stopped, id: ev.Actor.ID}, true
		}
		return change{kind: started, ctr: info}, true
	case events.ActionDie, events.ActionDestroy:
		return change{kind: stopped, id: ev.Actor.ID}, true
	case "health_status: healthy", "health_status: unhealthy":
		return change{kind: health, id: ev.Actor.ID, healthy: ev.Action == "health_status: healthy"}, true
	}
	return change{}, false
}

// list returns the running containers of the tag (see selector.maybe).
func (w *watcher) list(ctx context.Context) ([]ctrInfo, error) {
	all, err := w.docker.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var list []ctrInfo
	for _, c := range all {
		if !w.sel.maybe(c.Image, c.ImageID, c.Labels) {
			continue
		}
		info, running, err := w.inspect(ctx, c.ID)
		switch {
		case errors.Is(err, errNotOurs):
			continue
		case err != nil:
			// A container of ours that cannot be served, e.g. not on
			// -network: say so, or a typo looks like an empty host.
			w.log.Warn("inspect failed", "container", shortID(c.ID), "err", err)
			continue
		}
		if running {
			list = append(list, info)
		}
	}
	return list, nil
}

// errNotOurs says that an inspected container was not made from the tag.
var errNotOurs = errors.New("not selected")

// inspect reads a container of the tag, and whether it is running.
func (w *watcher) inspect(ctx context.Context, id string) (ctrInfo, bool, error) {
	c, err := w.docker.ContainerInspect(ctx, id)
	if err != nil {
		return ctrInfo{}, false, fmt.Errorf("inspect %s: %w", shortID(id), err)
	}
	if c.ContainerJSONBase == nil || c.State == nil || c.Config == nil || !w.sel.match(c.Config.Image, c.Config.Labels) {
		return ctrInfo{}, false, errNotOurs
	}
	info := ctrInfo{id: c.ID}
	info.created, _ = time.Parse(time.RFC3339Nano, c.Created)
	info.started, _ = time.Parse(time.RFC3339Nano, c.State.StartedAt)
	if !c.State.Running {
		return info, false, nil
	}
	ip, network, warn, err := containerIP(c.NetworkSettings, w.net)
	if err != nil {
		return info, false, fmt.Errorf("container %s: %w", shortID(id), err)
	}
	if warn != "" {
		w.log.Warn("several networks", "container", info.short(), "addr", ip, "networks", warn)
	}
	info.ip = ip
	if hc := c.Config.Healthcheck; hc != nil && len(hc.Test) > 0 && hc.Test[0] != "NONE" {
		info.healthcheck = true
		if c.State.Health != nil {
			info.healthy = c.State.Health.Status == container.Healthy
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
