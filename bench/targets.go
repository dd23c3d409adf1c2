package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"
)

// Target names, in the table's column order.
const (
	tDirect  = "direct"
	tDP      = "docker-proxy"
	tAlt     = "dp-alt" // -alt_bin, for comparing a change in the same run
	tHA      = "haproxy"
	tHASplic = "haproxy+splice"
	tNginx   = "nginx" // nginx's stream module
	tBare    = "bare-go"
)

var targetOrder = []string{tDirect, tDP, tAlt, tHA, tHASplic, tNginx, tBare}

// target is one way to reach the backend: its addresses for each backend
// port, and the proxy process in between (nil for direct).
type target struct {
	name                     string
	source, sink, echo, http string
	proc                     *proc
}

func (t *target) pid() int {
	if t.proc == nil {
		return 0
	}
	return t.proc.pid()
}

// freePorts picks n free loopback ports. They are free when picked; the
// proxy that gets them binds them a moment later.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// loopbackTarget is a proxy target listening on the given loopback ports
// (source, sink, echo, and http when given).
func loopbackTarget(name string, p *proc, ports []int) *target {
	t := &target{name: name, proc: p,
		source: addr("127.0.0.1", ports[0]), sink: addr("127.0.0.1", ports[1]), echo: addr("127.0.0.1", ports[2])}
	if len(ports) > 3 {
		t.http = addr("127.0.0.1", ports[3])
	}
	return t
}

// startDockerProxy runs the docker-proxy under test for the run's tag on
// loopback, with a short grace period so that old containers go away
// during the swap measurement. The alternative build (-alt_bin) runs
// beside it with -retire none, so that it never removes a container.
func (b *bench) startDockerProxy(ctx context.Context, name, bin string, env []string) (*target, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	spec := fmt.Sprintf("%d=%d,%d=%d,%d=%d,%d=%d",
		ports[0], portSource, ports[1], portSink, ports[2], portEcho, ports[3], portHTTP)
	args := []string{"-address", "127.0.0.1", "-ports", spec, "-tag", b.tag,
		"-status_url", fmt.Sprintf(":%d/status", portHTTP), "-grace_period", "1s", "-shutdown_timeout", "1s"}
	if name == tAlt {
		args = append(args, "-retire", "none")
	}
	p, err := b.startEnv(name, env, bin, args...)
	if err != nil {
		return nil, err
	}
	t := loopbackTarget(name, p, ports)
	return t, waitTarget(ctx, t)
}

// startBare runs the bare Go proxy: this same binary, re-executed with
// -bare, so that its /proc figures are its own.
func (b *bench) startBare(ctx context.Context) (*target, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	var spec []string
	for i, cp := range []int{portSource, portSink, portEcho, portHTTP} {
		spec = append(spec, addr("127.0.0.1", ports[i])+"="+addr(b.ip, cp))
	}
	self, err := executable()
	if err != nil {
		return nil, err
	}
	p, err := b.start("bare-go", self, "-bare", strings.Join(spec, ","))
	if err != nil {
		return nil, err
	}
	t := loopbackTarget(tBare, p, ports)
	return t, waitTarget(ctx, t)
}

// waitTarget waits up to 10s for one request/response through t.
func waitTarget(ctx context.Context, t *target) error {
	if err := waitEcho(ctx, t.echo); err != nil {
		msg := ""
		if t.proc != nil {
			msg = "\n" + t.proc.logTail()
		}
		return fmt.Errorf("%s does not forward: %w%s", t.name, err, msg)
	}
	return nil
}

func waitEcho(ctx context.Context, a string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var err error
	for ctx.Err() == nil {
		if err = echoOnce(a); err == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// echoOnce makes one connection and one request/response, and lets the
// server close first.
func echoOnce(a string) error {
	c, err := net.DialTimeout("tcp", a, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	return quit(c)
}

// quit sends the message that makes the backend answer and close, and
// waits for the close: the server side closes first.
func quit(c net.Conn) error {
	var msg [msgSize]byte
	msg[0] = 'q'
	if _, err := c.Write(msg[:]); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, msg[:]); err != nil {
		return err
	}
	if n, err := c.Read(msg[:1]); err != io.EOF {
		return fmt.Errorf("want EOF after the answer, got %d bytes, %v", n, err)
	}
	return nil
}

func executable() (string, error) {
	self, err := filepath.EvalSymlinks("/proc/self/exe")
	if err != nil {
		return "", fmt.Errorf("find this binary: %w", err)
	}
	return self, nil
}
