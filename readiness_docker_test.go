package main

// Readiness beyond HTTP against the real daemon: -status_port (a TCP
// connect) and the image's own HEALTHCHECK.

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
)

// portOpen tells whether c accepts a TCP connection on port now.
func portOpen(c testCtr, port uint16) bool {
	conn, err := net.DialTimeout("tcp", netip.AddrPortFrom(c.ip, port).String(), time.Second)
	if err != nil {
		return false
	}
	_ = conn.Close()
	return true
}

// TestDockerStatusPortOpensLate: with -status_port, a new container is not
// served while its port refuses connections, and is served once it accepts.
func TestDockerStatusPortOpensLate(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag, "-http", ":80", "-echo", ":7000")
	cfg := testConfig(tag, portMap{80, 80})
	cfg.statusPort = 7000
	cfg.statusTimeout = 30 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	// HTTP answers at once; the status port opens 3s after start.
	nu := startCtr(t, tag, "-http", ":80", "-echo", ":7000", "-echo_after", "3s")
	p.logs.waitLog(t, 10*time.Second, "checking readiness", "container", nu.short())
	closedSamples := 0
	eventually(t, 15*time.Second, "the new container's status port open", func() bool {
		host := whoAnswers(t, p.addrs[0])
		// Ports do not close once open: if it refuses now, it refused
		// when the request was forwarded, so the old one must have answered.
		if portOpen(nu, 7000) {
			return true
		}
		closedSamples++
		if host != old.host {
			t.Fatalf("answered by %s while the new container's status port refused; want %s", host, old.host)
		}
		return false
	})
	if closedSamples == 0 {
		t.Fatal("the status port was open at once; the test proves nothing")
	}
	waitServed(t, p.addrs[0], nu, 5*time.Second)
	p.logs.waitLog(t, time.Second, "swap", "container", nu.short(), "previous", old.short())
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
}

// TestDockerStatusPortNeverOpens: a new container whose status port never
// opens within -status_timeout is ignored, left running, and the old one
// keeps serving.
func TestDockerStatusPortNeverOpens(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag, "-http", ":80", "-echo", ":7000")
	cfg := testConfig(tag, portMap{80, 80})
	cfg.statusPort = 7000
	cfg.statusTimeout = 2 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	nu := startCtr(t, tag, "-http", ":80") // HTTP is up; port 7000 never opens
	p.logs.waitLog(t, 10*time.Second, "ignored: not ready in time", "container", nu.short())
	for range 5 {
		if host := whoAnswers(t, p.addrs[0]); host != old.host {
			t.Fatalf("answered by %s; want the old container %s", host, old.host)
		}
	}
	if !ctrRunning(t, old.id) || !ctrRunning(t, nu.id) {
		t.Error("a container was stopped or removed; want both left running")
	}
	if len(p.logs.lines("swap")) > 0 {
		t.Error("the proxy swapped to a container whose status port never opened")
	}
}

// healthImage builds, for this test alone, an image FROM the test server
// image whose HEALTHCHECK asks the server's own /status every 500ms. With
// startPeriod, failures before it ends do not count (Docker's
// --start-period); without, the first failure makes it unhealthy.
func healthImage(t testing.TB, startPeriod string) string {
	t.Helper()
	cli := needDocker(t)
	name := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 60 {
		name = name[:60]
	}
	ref := prefix + "-" + name + ":hc"
	opts := "--interval=500ms --timeout=1s --retries=1"
	if startPeriod != "" {
		opts += " --start-period=" + startPeriod
	}
	df := "FROM " + serverImage + "\n" +
		"HEALTHCHECK " + opts + ` CMD ["/testserver","-check","http://127.0.0.1:80/status"]` + "\n"
	if err := buildImage(ref, map[string]string{"Dockerfile": df}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	return ref
}

// healthStatus is the container's HEALTHCHECK status now.
func healthStatus(t testing.TB, id string) string {
	t.Helper()
	c, err := dockerCli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatalf("inspect %s: %v", shortID(id), err)
	}
	if c.State == nil || c.State.Health == nil {
		return ""
	}
	return c.State.Health.Status
}

// TestDockerHealthcheckBecomesReady: with no -status_url, a new container
// with a HEALTHCHECK serves only after its health_status: healthy event;
// until then the old one answers.
func TestDockerHealthcheckBecomesReady(t *testing.T) {
	img := healthImage(t, "30s")
	old := startCtr(t, img)
	cfg := testConfig(img, portMap{80, 80})
	cfg.statusTimeout = 20 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 15*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msgs, errs := dockerCli.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("image", img),
		filters.Arg("event", "health_status"))})

	nu := startCtr(t, img, "-ready_after", "2s")
	p.logs.waitLog(t, 10*time.Second, "waiting for its HEALTHCHECK", "container", nu.short())
	startingSamples := 0
	eventually(t, 20*time.Second, "the new container healthy", func() bool {
		host := whoAnswers(t, p.addrs[0])
		// Not healthy now means not healthy when the request was forwarded.
		if healthStatus(t, nu.id) == container.Healthy {
			return true
		}
		startingSamples++
		if host != old.host {
			t.Fatalf("answered by %s before the new container was healthy; want %s", host, old.host)
		}
		return false
	})
	if startingSamples == 0 {
		t.Fatal("the new container was healthy at once; the test proves nothing")
	}
	var healthyAt time.Time
	for healthyAt.IsZero() {
		select {
		case m := <-msgs:
			if m.Actor.ID == nu.id && m.Action == "health_status: healthy" {
				healthyAt = time.Unix(0, m.TimeNano)
			}
		case err := <-errs:
			t.Fatalf("events: %v", err)
		case <-ctx.Done():
			t.Fatal("no health_status: healthy event for the new container")
		}
	}
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	swap := p.logs.waitLog(t, time.Second, "swap", "container", nu.short(), "previous", old.short())
	swapAt, err := time.Parse(time.RFC3339Nano, swap["time"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if swapAt.Before(healthyAt) {
		t.Errorf("swapped at %v, before the healthy event at %v", swapAt, healthyAt)
	}
	if len(p.logs.lines("checking readiness", "container", nu.short())) > 0 {
		t.Error("the new container was probed; want its HEALTHCHECK alone to decide")
	}
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
}

// TestDockerHealthcheckNeverHealthy: a container whose HEALTHCHECK never
// passes within -status_timeout is ignored and left running; the old one
// keeps serving.
func TestDockerHealthcheckNeverHealthy(t *testing.T) {
	img := healthImage(t, "60s") // never unhealthy within the test: only the timeout decides
	old := startCtr(t, img)
	cfg := testConfig(img, portMap{80, 80})
	cfg.statusTimeout = 3 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 15*time.Second)

	nu := startCtr(t, img, "-fail_status")
	p.logs.waitLog(t, 10*time.Second, "waiting for its HEALTHCHECK", "container", nu.short())
	line := p.logs.waitLog(t, 15*time.Second, "ignored: not ready in time", "container", nu.short())
	if msg, _ := line["err"].(string); !strings.Contains(msg, "HEALTHCHECK") {
		t.Errorf("ignored with err %q; want it to name the HEALTHCHECK", msg)
	}
	for range 5 {
		if host := whoAnswers(t, p.addrs[0]); host != old.host {
			t.Fatalf("answered by %s; want the old container %s", host, old.host)
		}
	}
	if !ctrRunning(t, old.id) || !ctrRunning(t, nu.id) {
		t.Error("a container was stopped or removed; want both left running")
	}
}

// TestDockerHealthcheckUnhealthyWhileStarting (outage 12): a HEALTHCHECK
// without a start period reports unhealthy while the service starts; that
// is "not ready yet" within -status_timeout, and the container serves once
// healthy. (Before, the first unhealthy report ignored it for good.)
func TestDockerHealthcheckUnhealthyWhileStarting(t *testing.T) {
	img := healthImage(t, "") // the first failed check makes it unhealthy
	old := startCtr(t, img)
	cfg := testConfig(img, portMap{80, 80})
	cfg.statusTimeout = time.Minute
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 15*time.Second)

	nu := startCtr(t, img, "-ready_after", "3s")
	eventually(t, 10*time.Second, "the new container reported unhealthy", func() bool {
		return healthStatus(t, nu.id) == container.Unhealthy
	})
	if host := whoAnswers(t, p.addrs[0]); host != old.host {
		t.Fatalf("answered by %s while the new container is unhealthy; want the old container %s", host, old.host)
	}
	waitServed(t, p.addrs[0], nu, 20*time.Second)
	if ls := p.logs.lines("ignored: not ready in time", "container", nu.short()); len(ls) > 0 {
		t.Errorf("the new container was ignored: %v", ls)
	}
}

// TestDockerHealthcheckUnhealthyIgnored: a new container that stays
// unhealthy is ignored at the end of -status_timeout, and left running.
func TestDockerHealthcheckUnhealthyIgnored(t *testing.T) {
	img := healthImage(t, "") // the first failed check makes it unhealthy
	old := startCtr(t, img)
	cfg := testConfig(img, portMap{80, 80})
	cfg.statusTimeout = 3 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 15*time.Second)

	nu := startCtr(t, img, "-fail_status")
	line := p.logs.waitLog(t, 20*time.Second, "ignored: not ready in time", "container", nu.short())
	if msg, _ := line["err"].(string); !strings.Contains(msg, "unhealthy") {
		t.Errorf("ignored with err %q; want the unhealthy report", msg)
	}
	if got := healthStatus(t, nu.id); got != container.Unhealthy {
		t.Errorf("health status %q; want unhealthy", got)
	}
	for range 5 {
		if host := whoAnswers(t, p.addrs[0]); host != old.host {
			t.Fatalf("answered by %s; want the old container %s", host, old.host)
		}
	}
	if !ctrRunning(t, old.id) || !ctrRunning(t, nu.id) {
		t.Error("a container was stopped or removed; want both left running")
	}
}
