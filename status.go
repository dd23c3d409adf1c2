package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// Readiness polling. A poll interval of 200ms keeps a swap prompt without
// loading the container; each attempt has its own timeout so that one hung
// request cannot eat the whole -status_timeout.
const (
	statusInterval = 200 * time.Millisecond
	statusAttempt  = time.Second
	statusMaxBody  = 64 << 10
)

// statusURL is a -status_url value: a port and a request URI on the
// container's own address, like ":80/server-status".
type statusURL struct {
	port uint16
	uri  string
}

func (s statusURL) String() string {
	if s.port == 0 {
		return ""
	}
	return ":" + strconv.Itoa(int(s.port)) + s.uri
}

// parseStatusURL reads ":PORT/URI". The URI may be left out (":80" means
// ":80/"); a scheme or host may not, since the host is always the container.
func parseStatusURL(s string) (statusURL, error) {
	rest, ok := strings.CutPrefix(s, ":")
	if !ok {
		return statusURL{}, fmt.Errorf("%q: want a port and a URI on the container, like :80/server-status", s)
	}
	port, uri := rest, "/"
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		port, uri = rest[:i], rest[i:]
	}
	p, err := parsePort(port)
	if err != nil {
		return statusURL{}, fmt.Errorf("%q: %w", s, err)
	}
	if _, err := url.ParseRequestURI(uri); err != nil || strings.ContainsAny(uri, " \t\r\n#") {
		return statusURL{}, fmt.Errorf("%q: URI %q is not a valid request path", s, uri)
	}
	return statusURL{port: p, uri: uri}, nil
}

// statusFlag lets the flag package parse and check -status_url.
type statusFlag struct{ url *statusURL }

func (f statusFlag) String() string {
	if f.url == nil {
		return ""
	}
	return f.url.String()
}

func (f statusFlag) Set(s string) error {
	u, err := parseStatusURL(s)
	if err != nil {
		return err
	}
	*f.url = u
	return nil
}

// checker decides whether a container is ready for traffic: it answers
// 200 at its status URL, or accepts a connection on its status port. With
// neither, every container is ready at once.
type checker struct {
	url     statusURL
	tcpPort uint16
	client  *http.Client
}

func newChecker(u statusURL, tcpPort uint16) *checker {
	return &checker{
		url:     u,
		tcpPort: tcpPort,
		client: &http.Client{
			Timeout: statusAttempt,
			Transport: &http.Transport{
				Proxy:             nil, // the container is local; never ask HTTP_PROXY
				DisableKeepAlives: true,
				DialContext:       (&net.Dialer{Timeout: statusAttempt}).DialContext,
			},
			CheckRedirect: sameHostOnly,
		},
	}
}

// sameHostOnly follows a redirect only to the container that sent it.
func sameHostOnly(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("too many redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		return fmt.Errorf("redirect to another host %q", req.URL.Host)
	}
	return nil
}

// probe makes one attempt: only a 200 answer, or an accepted connection,
// means ready.
func (c *checker) probe(ctx context.Context, ip netip.Addr) error {
	if c.tcpPort != 0 {
		d := net.Dialer{Timeout: statusAttempt}
		conn, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(ip, c.tcpPort).String())
		if err != nil {
			return err
		}
		return conn.Close()
	}
	if c.url.port == 0 {
		return nil
	}
	target := "http://" + netip.AddrPortFrom(ip, c.url.port).String() + c.url.uri
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, statusMaxBody))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return nil
}

// waitReady polls until the container answers 200, the deadline passes or
// ctx ends. It returns the last failure when the deadline passes.
func (c *checker) waitReady(ctx context.Context, ip netip.Addr, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	tick := time.NewTicker(statusInterval)
	defer tick.Stop()
	for {
		err := c.probe(ctx, ip)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("not ready in time: %w", err)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// retireMode says what happens to a container once it is superseded.
type retireMode string

const (
	retireRemove retireMode = "rm"   // docker rm -f (the documented behaviour)
	retireStop   retireMode = "stop" // docker stop; needs no remove permission
	retireNone   retireMode = "none" // left running; needs no write permission
)

// dockerRetirer retires containers through the Docker API.
type dockerRetirer struct {
	docker      dockerAPI
	mode        retireMode
	stopTimeout time.Duration // rm: stop first, with this timeout (0: rm -f at once)
}

// retirer retires one container: the deployer's only write to Docker.
type retirer interface {
	retire(ctx context.Context, id string) error
	String() string // what was done, for the log line
}

func (r dockerRetirer) String() string {
	switch r.mode {
	case retireStop:
		return "stopped"
	case retireNone:
		return "left running"
	}
	return "removed"
}

func (r dockerRetirer) retire(ctx context.Context, id string) error {
	var err error
	switch r.mode {
	case retireNone:
		return nil
	case retireStop:
		err = r.stop(ctx, id)
	default:
		if r.stopTimeout > 0 {
			err = r.stop(ctx, id)
		}
		if err == nil {
			err = r.docker.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
		}
	}
	if cerrdefs.IsNotFound(err) {
		return nil // gone already, as wanted
	}
	return err
}

// stop sends SIGTERM, then SIGKILL after the stop timeout (the daemon's
// default for the container when none is set).
func (r dockerRetirer) stop(ctx context.Context, id string) error {
	var opts container.StopOptions
	if r.stopTimeout > 0 {
		secs := int((r.stopTimeout + time.Second - 1) / time.Second)
		opts.Timeout = &secs
	}
	if err := r.docker.ContainerStop(ctx, id, opts); err != nil {
		return fmt.Errorf("stop %s: %w", shortID(id), err)
	}
	return nil
}
