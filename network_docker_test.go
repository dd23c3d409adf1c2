package main

// Which address of a container the proxy dials: -network, else the
// default bridge, else the only network, else the first by name with a
// warning. Real user-defined bridge networks, made in the test.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
)

var netSeq struct {
	sync.Mutex
	n int
}

// newNetwork creates a user-defined bridge network, named with the run's
// prefix, and removes it when the test ends (after its containers, which
// are started later and so removed first).
func newNetwork(t testing.TB, suffix string) string {
	t.Helper()
	cli := needDocker(t)
	netSeq.Lock()
	netSeq.n++
	name := fmt.Sprintf("%s-net%d-%s", prefix, netSeq.n, suffix)
	netSeq.Unlock()
	if _, err := cli.NetworkCreate(context.Background(), name, network.CreateOptions{
		Driver: "bridge", Labels: map[string]string{testLabel: runID},
	}); err != nil {
		t.Fatalf("create network %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := cli.NetworkRemove(ctx, name); err != nil {
			t.Logf("remove network %s: %v", name, err)
		}
	})
	return name
}

// connect attaches a running container to a network, as docker network
// connect does.
func connect(t testing.TB, netName string, c testCtr) {
	t.Helper()
	if err := dockerCli.NetworkConnect(context.Background(), netName, c.id, nil); err != nil {
		t.Fatalf("connect %s to %s: %v", c.short(), netName, err)
	}
}

// ipOn is c's address on a network.
func ipOn(t testing.TB, c testCtr, netName string) string {
	t.Helper()
	info, err := dockerCli.ContainerInspect(context.Background(), c.id)
	if err != nil {
		t.Fatalf("inspect %s: %v", c.short(), err)
	}
	ep := info.NetworkSettings.Networks[netName]
	if ep == nil || ep.IPAddress == "" {
		t.Fatalf("%s has no address on %s", c.short(), netName)
	}
	return ep.IPAddress
}

// startOnNetwork starts a container of tag on netName only.
func startOnNetwork(t testing.TB, tag, netName string) testCtr {
	t.Helper()
	return startCtrWith(t, &container.Config{Image: tag},
		&container.HostConfig{NetworkMode: container.NetworkMode(netName)})
}

// TestDockerNetworkFlag: with -network NAME the proxy dials a container's
// address on that network, even when it is on the default bridge too.
func TestDockerNetworkFlag(t *testing.T) {
	tag := newTag(t, "v1")
	netName := newNetwork(t, "app")
	old := startCtr(t, tag)
	connect(t, netName, old)
	oldIP := ipOn(t, old, netName)
	if bridgeIP := ipOn(t, old, "bridge"); bridgeIP == oldIP {
		t.Fatalf("the same address %s on both networks", oldIP)
	}
	cfg := testConfig(tag, portMap{80, 80})
	cfg.network = netName
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	line := p.logs.waitLog(t, time.Second, "inspected", "container", old.short())
	if line["network"] != netName || line["addr"] != oldIP || line["level"] != "DEBUG" {
		t.Errorf("inspected: network %v, addr %v, level %v; want %s, %s, DEBUG",
			line["network"], line["addr"], line["level"], netName, oldIP)
	}
	p.logs.waitLog(t, time.Second, "serving", "container", old.short(), "addr", oldIP)

	// A deploy: the new container starts on the network, then joins the
	// bridge as well.
	nu := startOnNetwork(t, tag, netName)
	connect(t, "bridge", nu)
	nuIP := ipOn(t, nu, netName)
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	p.logs.waitLog(t, time.Second, "swap", "container", nu.short(), "addr", nuIP)
	p.logs.waitLog(t, time.Second, "inspected", "container", nu.short(), "network", netName, "addr", nuIP)
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
	if ls := p.logs.lines("several networks"); len(ls) > 0 {
		t.Errorf("warned of several networks with -network set: %v", ls)
	}
}

// TestDockerNetworkFlagMissing: a container with no address on the
// -network network is not served, and the log says why.
func TestDockerNetworkFlagMissing(t *testing.T) {
	tag := newTag(t, "v1")
	netName := newNetwork(t, "app")
	cfg := testConfig(tag, portMap{80, 80})
	cfg.network = netName
	p := startProxy(t, cfg)
	p.logs.waitLog(t, 10*time.Second, "no container of the tag is running yet")
	c := startCtr(t, tag) // on the bridge only
	line := p.logs.waitLog(t, 10*time.Second, "inspect failed", "container", c.short())
	if msg, _ := line["err"].(string); !strings.Contains(msg, netName) {
		t.Errorf("inspect failed: err %q; want it to name %s", msg, netName)
	}
	if ls := p.logs.lines("serving"); len(ls) > 0 {
		t.Errorf("served a container that is not on %s: %v", netName, ls)
	}
}

// TestDockerNetworkOnlyUserNetwork: with no -network, a container on one
// user-defined network (and not the bridge) is served there, with no
// warning.
func TestDockerNetworkOnlyUserNetwork(t *testing.T) {
	tag := newTag(t, "v1")
	netName := newNetwork(t, "only")
	c := startOnNetwork(t, tag, netName)
	p := startProxy(t, testConfig(tag, portMap{80, 80}))
	waitServed(t, p.addrs[0], c, 10*time.Second)
	p.logs.waitLog(t, time.Second, "inspected", "container", c.short(), "network", netName, "addr", ipOn(t, c, netName))
	if ls := p.logs.lines("several networks"); len(ls) > 0 {
		t.Errorf("warned of several networks for a container on one: %v", ls)
	}
}

// TestDockerNetworkSeveralWarns: with no -network, a container on two user
// networks and not the bridge is dialled on the first by name, with a
// warning that names both.
func TestDockerNetworkSeveralWarns(t *testing.T) {
	tag := newTag(t, "v1")
	netA := newNetwork(t, "a")
	netB := newNetwork(t, "b")
	c := startOnNetwork(t, tag, netA)
	connect(t, netB, c)
	p := startProxy(t, testConfig(tag, portMap{80, 80}))
	waitServed(t, p.addrs[0], c, 10*time.Second)
	line := p.logs.waitLog(t, time.Second, "several networks", "container", c.short())
	msg, _ := line["networks"].(string)
	if !strings.Contains(msg, netA) || !strings.Contains(msg, netB) || !strings.Contains(msg, "using "+netA) {
		t.Errorf("warning %q; want it to name %s and %s, and the one used (%s)", msg, netA, netB, netA)
	}
	if line["level"] != "WARN" {
		t.Errorf("several networks logged at %v; want WARN", line["level"])
	}
	p.logs.waitLog(t, time.Second, "inspected", "container", c.short(), "network", netA, "addr", ipOn(t, c, netA))
}
