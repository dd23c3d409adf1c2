// Docker-proxy gives a Docker service zero-downtime deploys. It listens on
// host ports and forwards each new TCP connection to the newest ready
// container started from one image tag. When a new container of the tag
// starts and answers its status URL, new connections go to it, open ones
// stay where they are, and the old container is removed after a grace
// period.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/client"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "docker-proxy: %v\n", err)
		os.Exit(2)
	}
	if cfg.version {
		fmt.Println(versionString())
		return
	}
	log := newLogger(os.Stderr, cfg.logFormat, cfg.logLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("docker-proxy failed", "err", err)
		os.Exit(1)
	}
}

// newLogger makes the process's logger: one line per event, as text or
// JSON.
func newLogger(w io.Writer, format string, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// run connects to Docker, opens the listeners and serves until ctx ends.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	docker, err := dockerClient(cfg)
	if err != nil {
		return err
	}
	defer docker.Close()
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := docker.Ping(pingCtx); err != nil {
		return fmt.Errorf("cannot reach the Docker daemon at %s: %w", dockerName(cfg, docker), err)
	}
	lns := make([]*net.TCPListener, 0, len(cfg.ports))
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	for _, p := range cfg.ports {
		addr := net.JoinHostPort(cfg.address, strconv.Itoa(int(p.host)))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		lns = append(lns, ln.(*net.TCPListener))
	}
	return serve(ctx, cfg, docker, lns, log)
}

// dockerClient makes the Docker API client: -docker (with -docker_tls_*
// files for TLS) or, when it is not set, the docker CLI's DOCKER_HOST,
// DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, else the default socket. The API
// version is negotiated, so older daemons work.
func dockerClient(cfg config) (*client.Client, error) {
	opts := []client.Opt{client.WithAPIVersionNegotiation()}
	if cfg.docker == "" {
		opts = append(opts, client.FromEnv)
	} else {
		opts = append(opts, client.WithHost(cfg.docker))
	}
	if cfg.dockerTLS.set() {
		opts = append(opts, client.WithTLSClientConfig(cfg.dockerTLS.ca, cfg.dockerTLS.cert, cfg.dockerTLS.key))
	}
	cli, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", dockerName(cfg, nil), err)
	}
	return cli, nil
}

// dockerName says where the Docker API is, and from which setting.
func dockerName(cfg config, cli *client.Client) string {
	switch {
	case cfg.docker != "":
		return "-docker " + cfg.docker
	case cli != nil && os.Getenv("DOCKER_HOST") != "":
		return "DOCKER_HOST " + cli.DaemonHost()
	case cli != nil:
		return cli.DaemonHost()
	}
	return "DOCKER_HOST " + os.Getenv("DOCKER_HOST")
}

// serve runs the proxy on lns, one listener per cfg.ports entry, until ctx
// ends; then it lets open connections finish for up to cfg.shutdown.
func serve(ctx context.Context, cfg config, docker dockerAPI, lns []*net.TCPListener, log *slog.Logger) error {
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
	d := newDeployRunner(cfg, route, docker, p.m, log)
	d.name = sel.String()

	var wg sync.WaitGroup
	if cfg.metricsAddr != "" {
		wg.Go(func() {
			if err := serveMetrics(ctx, cfg.metricsAddr, p.m, &d.snap, &w.connected, log); err != nil {
				log.Error("metrics server failed", "addr", cfg.metricsAddr, "err", err)
			}
		})
	}
	wg.Go(func() { _ = w.run(ctx) })
	wg.Go(func() { d.run(ctx, events) })
	for i, ln := range lns {
		log.Info("listening", "addr", ln.Addr().String(), "port", cfg.ports[i].String())
		wg.Go(func() { _ = p.serve(ctx, ln, i) })
	}
	<-ctx.Done()
	wg.Wait()

	done := make(chan struct{})
	go func() { p.open.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(cfg.shutdown):
		n := 0
		for _, b := range d.backendList() {
			n += b.closeAll()
		}
		log.Info("shutdown: closed open connections", "closed", n)
		<-done
	}
	log.Info("stopped")
	return nil
}

// commit is the source revision, set at build time by the Makefile
// (-ldflags "-X main.commit=...") where the build has no VCS stamp.
var commit string

// versionString tells the module version and source revision of this
// binary.
func versionString() string {
	version, rev := "(devel)", commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		version = bi.Main.Version
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && rev == "":
				rev = s.Value
			case s.Key == "vcs.modified" && s.Value == "true":
				rev += "+dirty"
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return "docker-proxy " + version + " (commit " + rev + ", " + runtime.Version() + ")"
}
