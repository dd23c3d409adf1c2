package main

// Outages 7, 9 and 12 against the real daemon: the events the simulation
// fakes (network connect and disconnect, pause and unpause) are the ones
// the daemon sends.

import (
	"context"
	"testing"
	"time"
)

// TestDockerNetworkDisconnectAndConnect: a serving container disconnected
// from its network is no longer dialled; connected to one again, it serves
// at its new address. (A container connected after it started is followed,
// too: outage 12.)
func TestDockerNetworkDisconnectAndConnect(t *testing.T) {
	tag := newTag(t, "v1")
	netName := newNetwork(t, "app")
	c := startOnNetwork(t, tag, netName)
	cfg := testConfig(tag, portMap{80, 80})
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], c, 10*time.Second)

	if err := dockerCli.NetworkDisconnect(context.Background(), netName, c.id, false); err != nil {
		t.Fatal(err)
	}
	p.logs.waitLog(t, 10*time.Second, "serving container stopped", "container", c.short())
	if _, err := httpGet(p.addrs[0], "/"); err == nil {
		t.Fatal("a request was answered after the serving container lost its only network")
	}
	connect(t, netName, c)
	p.logs.waitLog(t, 10*time.Second, "serving", "container", c.short(), "addr", ipOn(t, c, netName))
	waitServed(t, p.addrs[0], c, 10*time.Second)
}

// TestDockerPauseHoldsThenServes: a paused serving container is not ready
// (new connections wait instead of hanging on it); unpaused, it is checked
// and serves again, and the held request is answered.
func TestDockerPauseHoldsThenServes(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	cfg := testConfig(tag, portMap{80, 80})
	cfg.hold = 10 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], c, 10*time.Second)

	ctx := context.Background()
	if err := dockerCli.ContainerPause(ctx, c.id); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dockerCli.ContainerUnpause(context.Background(), c.id) })
	p.logs.waitLog(t, 10*time.Second, "paused: not ready", "container", c.short())
	p.logs.waitLog(t, time.Second, "no ready container: new connections wait for one")
	got := make(chan error, 1)
	go func() {
		_, err := httpGet(p.addrs[0], "/")
		got <- err
	}()
	if err := dockerCli.ContainerUnpause(ctx, c.id); err != nil {
		t.Fatal(err)
	}
	p.logs.waitLog(t, 10*time.Second, "unpaused: checking readiness", "container", c.short())
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("the request held while paused: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the request held while paused got no answer")
	}
}
