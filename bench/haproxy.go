package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// startHAProxy runs Debian's haproxy in TCP mode in front of the first
// container (a listener for each of the four ports docker-proxy forwards),
// in the foreground (-db) as one process with its default threads, with or
// without splice. maxconn is set high enough for the idle measurement and
// low enough that HAProxy's own fd need (2 per connection, plus pipes for
// splice) fits under the inherited limit.
func (b *bench) startHAProxy(ctx context.Context, splice bool) (*target, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	name := tHA
	if splice {
		name = tHASplic
	}
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global\n    maxconn %d\n\n", b.haproxyMaxConn())
	fmt.Fprintf(&cfg, "defaults\n    mode tcp\n    maxconn %d\n", b.haproxyMaxConn())
	cfg.WriteString("    timeout connect 5s\n    timeout client 10m\n    timeout server 10m\n")
	if splice {
		cfg.WriteString("    option splice-request\n    option splice-response\n")
	}
	for i, cp := range []int{portSource, portSink, portEcho, portHTTP} {
		fmt.Fprintf(&cfg, "\nlisten p%d\n    bind 127.0.0.1:%d\n    server s1 %s\n", cp, ports[i], addr(b.ip, cp))
	}
	path := filepath.Join(b.tmp, name+".cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		return nil, err
	}
	p, err := b.start(name, "haproxy", "-db", "-f", path)
	if err != nil {
		return nil, err
	}
	t := loopbackTarget(name, p, ports)
	return t, waitTarget(ctx, t)
}

// haproxyMaxConn leaves room under the fd limit for HAProxy's 2 fds per
// connection and its splice pipes (maxconn/4 of them, 2 fds each).
func (b *bench) haproxyMaxConn() int {
	return int(float64(b.fdLimit-100) / 2.5)
}
