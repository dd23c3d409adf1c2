package main

// Deploy behaviour against the real Docker daemon: real containers, real
// events, real container addresses, real removals.

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// echoOnce writes msg on c and reads the same number of bytes back.
func echoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo: got %q; want %q", got, msg)
	}
}

func TestDockerForwardBothPortForms(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag, "-http", ":80", "-echo", ":7000")
	p := startProxy(t, testConfig(tag, portMap{80, 80}, portMap{7000, 7000}))

	waitServed(t, p.addrs[0], c, 10*time.Second)
	conn, err := net.Dial("tcp", p.addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echoOnce(t, conn, "hello through the proxy")
	// Half-close: the echo server answers, then sees EOF and closes too.
	echoOnceHalfClose(t, conn.(*net.TCPConn), "last words")
}

// echoOnceHalfClose writes msg, closes the write side, and expects msg
// back followed by EOF.
func echoOnceHalfClose(t testing.TB, c *net.TCPConn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("after half-close: got %q; want %q", got, msg)
	}
}

func TestDockerMappedPort(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag, "-http", ":3000")
	p := startProxy(t, testConfig(tag, portMap{443, 3000}))
	waitServed(t, p.addrs[0], c, 10*time.Second)
}

func TestDockerSwapKeepsOpenConnectionsUntilGraceEnds(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag, "-echo", ":7")
	cfg := testConfig(tag, portMap{80, 80}, portMap{7, 7})
	cfg.grace = 3 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	conn, err := net.Dial("tcp", p.addrs[1])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echoOnce(t, conn, "before the deploy")

	nu := startCtr(t, tag, "-echo", ":7")
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	swap := p.logs.waitLog(t, time.Second, "swap", "container", nu.short(), "previous", old.short())
	if swap["tag"] != tag || swap["addr"] != nu.ip.String() {
		t.Errorf("swap log: got tag %v addr %v; want %s %s", swap["tag"], swap["addr"], tag, nu.ip)
	}

	// The open connection still reaches the old container within grace.
	echoOnce(t, conn, "during the grace period")
	if !ctrRunning(t, old.id) {
		t.Fatalf("old container %s stopped before its grace period ended", old.short())
	}

	// At the end of the grace period the proxy closes it and removes the
	// old container.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(make([]byte, 1))
	if n != 0 || err == nil || isTimeout(err) {
		t.Fatalf("read on the old connection after grace: n=%d err=%v; want it closed", n, err)
	}
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
	p.logs.waitLog(t, 5*time.Second, "removed", "container", old.short(), "closed", "1")
	if !ctrRunning(t, nu.id) {
		t.Fatalf("new container %s is not running", nu.short())
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestDockerStatusDelayKeepsOldServingUntilReady(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	cfg := testConfig(tag, portMap{80, 80})
	cfg.statusURL = statusURL{port: 80, uri: "/status"}
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	nu := startCtr(t, tag, "-ready_after", "2s")
	sawNotReady := false
	eventually(t, 15*time.Second, "served by the new container", func() bool {
		host := whoAnswers(t, p.addrs[0])
		// Readiness never goes back, so a status read after the answer
		// that is still 503 means the container was not ready when the
		// proxy chose where to send the connection.
		_, statusErr := httpGet(nu.ip.String()+":80", "/status")
		if statusErr != nil {
			sawNotReady = true
			if host != old.host {
				t.Fatalf("answered by %s while the new container was not ready", host)
			}
		}
		return host == nu.host
	})
	if !sawNotReady {
		t.Fatalf("never saw the new container not ready; the test proves nothing")
	}
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
}

func TestDockerStatusTimeoutIgnoresNewContainer(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	cfg := testConfig(tag, portMap{80, 80})
	cfg.statusURL = statusURL{port: 80, uri: "/status"}
	cfg.statusTimeout = time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	bad := startCtr(t, tag, "-fail_status")
	p.logs.waitLog(t, 10*time.Second, "ignored: not ready in time", "container", bad.short())
	for range 5 {
		if host := whoAnswers(t, p.addrs[0]); host != old.host {
			t.Fatalf("answered by %s; want the old container %s", host, old.host)
		}
	}
	// Neither container is removed: not the ignored one, and not the old
	// one, even well after a grace period.
	time.Sleep(cfg.grace + 500*time.Millisecond) // no event to wait for: proving an absence
	if !ctrRunning(t, old.id) || !ctrRunning(t, bad.id) {
		t.Fatalf("running: old %v, ignored %v; want both", ctrRunning(t, old.id), ctrRunning(t, bad.id))
	}
}

func TestDockerStartupCleanup(t *testing.T) {
	tag := newTag(t, "v1")
	var ctrs []testCtr
	for range 3 {
		ctrs = append(ctrs, startCtr(t, tag))
	}
	p := startProxy(t, testConfig(tag, portMap{80, 80}))
	newest := ctrs[2]
	waitServed(t, p.addrs[0], newest, 10*time.Second)
	for _, c := range ctrs[:2] {
		eventually(t, 10*time.Second, "container "+c.short()+" removed", func() bool { return !ctrExists(t, c.id) })
		p.logs.waitLog(t, time.Second, "removed", "container", c.short(), "reason", "start-up clean-up")
	}
	if !ctrRunning(t, newest.id) {
		t.Fatal("the newest container is not running")
	}
}

func TestDockerOtherTagNeverTakesOver(t *testing.T) {
	tag := newTag(t, "v1")
	other := newTag(t, "other")
	mine := startCtr(t, tag)
	before := startCtr(t, other)
	p := startProxy(t, testConfig(tag, portMap{80, 80}))
	waitServed(t, p.addrs[0], mine, 10*time.Second)
	after := startCtr(t, other)

	// Deploy one of ours so that a swap and a removal happen, then check
	// that the other tag's containers were neither served nor touched.
	nu := startCtr(t, tag)
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, mine.id) })
	for _, c := range []testCtr{before, after} {
		if !ctrRunning(t, c.id) {
			t.Errorf("container %s of another tag was stopped", c.short())
		}
		if strings.Contains(p.logs.String(), c.short()) {
			t.Errorf("the proxy logged container %s of another tag", c.short())
		}
	}
}

func TestDockerTagNormalisation(t *testing.T) {
	latest := newTag(t, "latest")
	repo := strings.TrimSuffix(latest, ":latest")
	// Started as "repo" (no tag); the proxy is told the full reference.
	c := startCtr(t, repo)
	p := startProxy(t, testConfig("docker.io/library/"+latest, portMap{80, 80}))
	waitServed(t, p.addrs[0], c, 10*time.Second)
	// A new one started as "repo:latest" arrives by event and swaps in.
	nu := startCtr(t, latest)
	waitServed(t, p.addrs[0], nu, 10*time.Second)
}

func TestDockerNoContainerAtStartThenOne(t *testing.T) {
	tag := newTag(t, "v1")
	cfg := testConfig(tag, portMap{80, 80})
	p := startProxy(t, cfg)
	p.logs.waitLog(t, 10*time.Second, "no container of the tag is running yet")
	if _, err := httpGet(p.addrs[0], "/"); err == nil {
		t.Fatal("a request succeeded with no container running")
	}
	c := startCtr(t, tag)
	waitServed(t, p.addrs[0], c, 10*time.Second)
}

func TestDockerServingContainerDiesThenNextServes(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	p := startProxy(t, testConfig(tag, portMap{80, 80}))
	waitServed(t, p.addrs[0], c, 10*time.Second)

	if err := dockerCli.ContainerKill(context.Background(), c.id, "KILL"); err != nil {
		t.Fatal(err)
	}
	p.logs.waitLog(t, 10*time.Second, "serving container stopped", "container", c.short())
	// With no ready container and no hold, a new connection is closed at
	// once: the client sees EOF, not a hang.
	conn, err := net.Dial("tcp", p.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
	if _, err := bufio.NewReader(conn).ReadByte(); err == nil || isTimeout(err) {
		t.Fatalf("read with no container: err=%v; want the connection closed", err)
	}
	conn.Close()

	nu := startCtr(t, tag)
	waitServed(t, p.addrs[0], nu, 10*time.Second)
}

// TestDockerRestartInPlace: a container stopped and started again keeps its
// id and may get another address (here another container takes the old
// one meanwhile); the proxy follows it, and the load through it sees no
// failure.
func TestDockerRestartInPlace(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	p := startProxy(t, zeroDowntimeConfig(tag))
	waitServed(t, p.addrs[0], c, 10*time.Second)
	l := startLoad(t, p.addrs[0], 8, 1)
	eventually(t, 5*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 })

	ctx := context.Background()
	if err := dockerCli.ContainerStop(ctx, c.id, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	startCtr(t, newTag(t, "filler")) // may take the stopped container's address
	if err := dockerCli.ContainerStart(ctx, c.id, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	info, err := dockerCli.ContainerInspect(ctx, c.id)
	if err != nil {
		t.Fatal(err)
	}
	ip, _, _, err := containerIP(info.NetworkSettings, "")
	if err != nil {
		t.Fatal(err)
	}
	if ip == c.ip {
		t.Logf("the restarted container kept its address %s", ip)
	}
	waitServed(t, p.addrs[0], c, 10*time.Second)
	p.logs.waitLog(t, 10*time.Second, "serving", "container", c.short(), "addr", ip.String())
	l.expectNoFailure(t)
}
