package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestAttack13hHandlersEndWithServe: kept handlers waited on p.idle until
// p.life ended, and life ends only in p.shutdown, which serve (serve.go)
// calls only when -shutdown_timeout runs out or on a second signal. A
// proxy that stops accepting and whose connections all finish in time
// (the usual SIGTERM, and the old process after a hand-over) never calls
// it: up to maxIdleHandlers goroutines, and the proxy they reference, were
// kept waiting for a connection no loop would ever send. A handler must
// stop waiting once the loop that gave it its connection has stopped.
func TestAttack13hHandlersEndWithServe(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	route := newRouter()
	ln := listenLoopback(t)
	p := newProxy(route, []portMap{{host: 1, container: 1}}, 30*time.Second, 0, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { // frees what the test leaves, pass or fail
		p.shutdown()
		waitUntil(t, 5*time.Second, "no handler after shutdown", func() bool { return p.idlers.Load() == 0 })
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- p.serve(ctx, ln, 0) }()
	addr := ln.Addr().String()

	// A burst of held connections: one handler each.
	const burst = 2 * maxIdleHandlers
	var clients []*net.TCPConn
	for range burst {
		clients = append(clients, dialTCP(t, addr))
	}
	waitUntil(t, 5*time.Second, "every connection held", func() bool { return p.reg.count() == burst })
	route.store(srv.backend("a"))
	for _, c := range clients {
		echoRound(t, c, "hi")
		_ = c.Close()
	}
	waitUntil(t, 5*time.Second, "every pair closed", func() bool { return p.reg.count() == 0 })
	waitUntil(t, 5*time.Second, "handlers kept", func() bool { return p.idlers.Load() == maxIdleHandlers })

	// The proxy stops accepting; every connection is already closed, so
	// serve.go would never call p.shutdown.
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve still running 5s after its context ended")
	}
	if !waitGroupFor(&p.open, 5*time.Second) {
		t.Fatal("connections still open")
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.idlers.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d handlers still wait for a connection 5s after the proxy stopped accepting, with no connection open (p.life never ends without p.shutdown)", p.idlers.Load())
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
	}
}

// handlerGoroutines counts goroutines in (*proxy).handler.
func handlerGoroutines() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte(".(*proxy).handler("))
}

// TestAttack13hServeLeavesNoHandler: the same through serve itself (the
// path of a SIGTERM and of the old process after a hand-over): the
// connections finish before -shutdown_timeout, serve returns, and kept
// handlers of its proxy were still there, for good.
func TestAttack13hServeLeavesNoHandler(t *testing.T) {
	before := handlerGoroutines() // earlier tests' proxies may have left some
	cfg := testConfig("myapp", portMap{host: 18080, container: 80})
	ln := listenLoopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, nil, cfg, newSimDocker(0), []*net.TCPListener{ln}, slog.New(slog.DiscardHandler))
	}()
	// No container and no -hold_timeout: each connection is closed at
	// once, and its handler then waits for the next one.
	for range 3 {
		c := dialTCP(t, ln.Addr().String())
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("read: %v", err)
		}
		_ = c.Close()
	}
	waitUntil(t, 5*time.Second, "a handler waiting", func() bool { return handlerGoroutines() > before })
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not return")
	}
	deadline := time.Now().Add(5 * time.Second)
	for handlerGoroutines() > before {
		if time.Now().After(deadline) {
			t.Fatalf("serve returned, and %d of its handlers still wait for a connection 5s later", handlerGoroutines()-before)
		}
		time.Sleep(5 * time.Millisecond) // polling, bounded by the deadline
	}
}
