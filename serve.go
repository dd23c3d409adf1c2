package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// serve runs the proxy on lns, one listener per cfg.ports entry, until ctx
// ends; then it lets open connections finish for up to cfg.shutdown, or
// until abort is closed, and closes the rest. Whatever the connections do,
// it returns soon after.
func serve(ctx context.Context, abort <-chan struct{}, cfg config, docker dockerAPI, lns []*net.TCPListener, log *slog.Logger) error {
	return serveFrom(ctx, abort, cfg, docker, lns, log, nil)
}

// serveFrom is serve, after taking over from a predecessor (t) or not
// (nil). A successor, in turn, ends ctx's part here: it takes over.
func serveFrom(ctx context.Context, abort <-chan struct{}, cfg config, docker dockerAPI, lns []*net.TCPListener, log *slog.Logger, t *takeover) error {
	stopped := ctx    // told to stop, not handed over
	var refused error // the predecessor did not take this one's ack
	ctx, handedOver := context.WithCancel(ctx)
	defer handedOver()
	sel, err := newSelector(cfg.tag, cfg.labels)
	if err != nil {
		return err
	}
	log = log.With("tag", sel.String())
	route := newRouter()
	p := newProxy(route, cfg.ports, cfg.hold, cfg.maxConns, log)
	p.replayMax, p.proxyProtocol = cfg.replayBytes, cfg.proxyProtocol
	events := make(chan any)
	w := &watcher{docker: docker, sel: sel, net: cfg.network, log: log, out: events, m: p.m}
	p.m.followEvents(&w.connected)
	d := newDeployRunner(cfg, route, docker, p.m, log)
	d.name = sel.String()
	handed := sockets{}
	if t != nil {
		d.inherit, handed, d.predecessor = t.state.Containers, t.socks, t.gone
	}
	// A successor's end of the hand-over closes once this process is done
	// (see handover.go).
	var succMu sync.Mutex
	var succ io.Closer
	defer func() {
		succMu.Lock()
		defer succMu.Unlock()
		if succ == nil {
			return
		}
		if t != nil {
			select { // this process's predecessor may still carry connections too
			case <-t.gone:
			case <-time.After(cfg.shutdown):
			}
		}
		_ = succ.Close()
	}()
	handOff := func(conn io.Closer) {
		succMu.Lock()
		succ = conn
		succMu.Unlock()
		handedOver()
	}

	var wg sync.WaitGroup
	mln, err := metricsListener(cfg, handed)
	if err != nil {
		return err
	}
	if mln != nil {
		wg.Go(func() {
			if err := serveMetrics(ctx, mln, p.m, &d.snap, &w.connected, log); err != nil {
				log.Error("metrics server failed", "addr", cfg.metricsAddr, "err", err)
			}
		})
	}
	cln, err := controlListener(cfg, handed, log)
	if err != nil {
		return err
	}
	var ctl *control
	if cln != nil {
		ctl = &control{rn: d, connected: &w.connected, docker: docker, sel: sel, log: log, source: &handoverSource{
			id: listenID(cfg.address, cfg.ports), data: lns, ports: cfg.ports, metrics: mln, mAddr: cfg.metricsAddr,
			control: cln, state: d.handOver, done: handOff,
		}}
		wg.Go(func() {
			if err := ctl.serve(ctx, cln); err != nil {
				log.Error("control API failed", "socket", cln.Addr().String(), "err", err)
			}
		})
	}
	wg.Go(func() { _ = w.run(ctx) })
	wg.Go(func() { d.run(ctx, events) })
	for i, ln := range lns {
		log.Info("listening", "addr", ln.Addr().String(), "port", cfg.ports[i].String())
		wg.Go(func() { _ = p.serve(ctx, ln, i) })
	}
	switch {
	case t == nil:
		notifyReady(log)
	case waitInherited(stopped, d.inherited) != nil:
		// Told to stop while it took over: the predecessor, not told that
		// this one accepts, serves on.
		_ = t.conn.Close()
		log.Warn("stopped before taking over: the running proxy serves on")
	default:
		// systemd hears of the new main process before the old one may
		// exit.
		notifyReady(log)
		err := t.accepting()
		if errors.Is(err, errAckRefused) {
			// Two proxies must not both accept and run the rule: the
			// one that serves on is the predecessor.
			log.Error("the hand-over did not complete: the running proxy serves on, and this one stops", "err", err)
			refused = fmt.Errorf("the running proxy did not hand over: %w", err)
			handedOver()
		} else {
			if err != nil {
				// A predecessor that died after it sent its listeners:
				// this one is all there is.
				log.Warn("the predecessor did not answer the hand-over: serving", "err", err)
			}
			if ctl != nil && cln == handed.control {
				ctl.claim() // the control socket's path is this process's now
			}
		}
	}
	<-ctx.Done()
	p.drain()
	log.Info("no new connections; open ones may finish", "open", p.reg.count(), "shutdown_timeout", cfg.shutdown)
	done := make(chan struct{})
	go func() {
		wg.Wait()
		p.open.Wait()
		close(done)
	}()
	timeout := time.NewTimer(cfg.shutdown)
	defer timeout.Stop()
	select {
	case <-done:
	case <-timeout.C:
		log.Info("shutdown: closed open connections", "closed", p.shutdown())
	case <-abort:
		log.Info("shutdown: closed open connections", "closed", p.shutdown())
	}
	select {
	case <-done:
		log.Info("stopped")
	case <-time.After(closeWait):
		log.Error("stopped with connections still closing", "open", p.reg.count())
	}
	if ctl != nil {
		ctl.waitHandover(handoverTimeout, abort)
	}
	return refused
}

// waitInherited waits until the predecessor's records are in the rule
// (the serving container in the route), or ctx ends first.
func waitInherited(ctx context.Context, inherited <-chan struct{}) error {
	select {
	case <-inherited:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// closeWait bounds how long serve waits, after closing every connection,
// for their goroutines to end.
const closeWait = 2 * time.Second
