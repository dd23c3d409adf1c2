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
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/docker/docker/client"
)

// config is everything the flags say.
type config struct {
	address       string
	docker        string
	ports         []portMap
	statusURL     statusURL
	statusTimeout time.Duration
	tag           string
	grace         time.Duration

	hold        time.Duration // how long a new connection may wait for a backend
	drain       bool
	stopTimeout time.Duration
	retire      retireMode
	shutdown    time.Duration
	maxConns    int
	replayBytes int
	logFormat   string
	logLevel    slog.Level
}

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "docker-proxy: %v\n", err)
		os.Exit(2)
	}
	log := newLogger(os.Stderr, cfg.logFormat, cfg.logLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("docker-proxy failed", "err", err)
		os.Exit(1)
	}
}

// parseFlags reads the command line. Bad input yields one error naming the
// bad value; -h prints the flags to out and yields flag.ErrHelp.
func parseFlags(args []string, out io.Writer) (config, error) {
	cfg := config{
		address:       "0.0.0.0",
		docker:        "unix:///var/run/docker.sock",
		statusTimeout: 10 * time.Second,
		grace:         10 * time.Second,
		hold:          5 * time.Second,
		retire:        retireRemove,
		shutdown:      10 * time.Second,
		replayBytes:   defaultReplayBytes,
	}
	fs := flag.NewFlagSet("docker-proxy", flag.ContinueOnError)
	fs.StringVar(&cfg.address, "address", cfg.address, "the `address` the proxy listens on")
	fs.StringVar(&cfg.docker, "docker", cfg.docker, "`URL` of the Docker API (unix:///path or tcp://host:port)")
	fs.Var(portsFlag{&cfg.ports}, "ports", "`ports` to forward, comma-delimited: P (host P to container P) or H=C (host H to container C), e.g. 80,443=3000")
	fs.Var(statusFlag{&cfg.statusURL}, "status_url", "`:PORT/URI` on the container's IP that answers 200 once it is ready, e.g. :80/server-status (none: ready at once)")
	fs.Var(durationFlag{&cfg.statusTimeout}, "status_timeout", "how long a new container may take to answer the status URL before it is ignored")
	fs.StringVar(&cfg.tag, "tag", "", "the image `reference` the containers are started from, e.g. myapp:latest")
	fs.Var(durationFlag{&cfg.grace}, "grace_period", "how long an old container keeps its connections after a new one serves, before it is removed (docker rm -f)")
	fs.Var(durationFlag{&cfg.hold}, "hold_timeout", "how long a new connection waits for a ready container when there is none, or the dial fails (0: close it at once)")
	fs.BoolVar(&cfg.drain, "drain", false, "remove an old container as soon as its last connection closes (-grace_period stays the upper bound)")
	fs.Var(durationFlag{&cfg.stopTimeout}, "stop_timeout", "stop an old container (SIGTERM, then SIGKILL after this long) before removing it (0: docker rm -f)")
	fs.Var(retireFlag{&cfg.retire}, "retire", "what happens to an old container: `rm` (removed), stop (stopped only), none (left running)")
	fs.Var(durationFlag{&cfg.shutdown}, "shutdown_timeout", "on SIGTERM, how long open connections may take to finish before they are closed")
	fs.IntVar(&cfg.maxConns, "max_conns", 0, "the most connections served at once; more wait in the kernel's backlog (0: no limit)")
	fs.Func("log_format", "log line format: `text` or json (default text)", func(s string) error {
		if s != "text" && s != "json" {
			return errors.New("want text or json")
		}
		cfg.logFormat = s
		return nil
	})
	fs.TextVar(&cfg.logLevel, "log_level", cfg.logLevel, "the least important `level` of log line shown: debug, info, warn or error")
	fs.IntVar(&cfg.replayBytes, "replay_bytes", cfg.replayBytes, "a client's first bytes kept until the container answers, and sent again to the current container if it closes the connection unanswered (0: never)")

	fs.SetOutput(io.Discard) // errors are reported once, by the caller
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fmt.Fprintf(out, "Usage: docker-proxy -tag IMAGE -ports SPEC [flags]\n\n")
			fs.PrintDefaults()
		}
		return cfg, err
	}
	switch {
	case fs.NArg() > 0:
		return cfg, fmt.Errorf("unexpected argument %q: every setting is a flag, see -h", fs.Arg(0))
	case cfg.tag == "":
		return cfg, errors.New("missing -tag: want the image reference the containers are started from, e.g. -tag myapp:latest")
	case len(cfg.ports) == 0:
		return cfg, errors.New("missing -ports: want the ports to forward, e.g. -ports 80,443=3000")
	case cfg.maxConns < 0:
		return cfg, fmt.Errorf("-max_conns %d: want 0 (no limit) or more", cfg.maxConns)
	case cfg.replayBytes < 0:
		return cfg, fmt.Errorf("-replay_bytes %d: want 0 (never) or more", cfg.replayBytes)
	}
	if _, err := newTagMatcher(cfg.tag); err != nil {
		return cfg, fmt.Errorf("invalid value for flag -tag: %w", err)
	}
	if net.ParseIP(cfg.address) == nil {
		return cfg, fmt.Errorf("invalid value %q for flag -address: want an IP address, like 0.0.0.0", cfg.address)
	}
	if u, err := client.ParseHostURL(cfg.docker); err != nil || (u.Scheme != "unix" && u.Scheme != "tcp") {
		return cfg, fmt.Errorf("invalid value %q for flag -docker: want unix:///path or tcp://host:port", cfg.docker)
	}
	return cfg, nil
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

// durationFlag is a duration flag that refuses negative values.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

func (f durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return errors.New("want a duration of 0 or more, like 10s or 500ms")
	}
	*f.d = d
	return nil
}

// retireFlag accepts the -retire modes.
type retireFlag struct{ m *retireMode }

func (f retireFlag) String() string {
	if f.m == nil {
		return ""
	}
	return string(*f.m)
}

func (f retireFlag) Set(s string) error {
	switch m := retireMode(s); m {
	case retireRemove, retireStop, retireNone:
		*f.m = m
		return nil
	}
	return errors.New("want rm, stop or none")
}

// run connects to Docker, opens the listeners and serves until ctx ends.
func run(ctx context.Context, cfg config, log *slog.Logger) error {
	docker, err := client.NewClientWithOpts(client.WithHost(cfg.docker), client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker client for %s: %w", cfg.docker, err)
	}
	defer docker.Close()
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := docker.Ping(pingCtx); err != nil {
		return fmt.Errorf("cannot reach the Docker daemon at -docker %s: %w", cfg.docker, err)
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

// serve runs the proxy on lns, one listener per cfg.ports entry, until ctx
// ends; then it lets open connections finish for up to cfg.shutdown.
func serve(ctx context.Context, cfg config, docker dockerAPI, lns []*net.TCPListener, log *slog.Logger) error {
	tag, err := newTagMatcher(cfg.tag)
	if err != nil {
		return err
	}
	log = log.With("tag", tag.String())
	route := newRouter()
	changes := make(chan change)
	w := &watcher{docker: docker, tag: tag, log: log, out: changes}
	d := newDeployer(route, cfg.ports, newChecker(cfg.statusURL),
		dockerRetirer{docker: docker, mode: cfg.retire, stopTimeout: cfg.stopTimeout}, log)
	d.statusTimeout, d.grace, d.drain = cfg.statusTimeout, cfg.grace, cfg.drain
	d.watch = cfg.statusURL.port != 0
	p := newProxy(route, cfg.ports, cfg.hold, cfg.maxConns, log)
	p.replayMax = cfg.replayBytes

	var wg sync.WaitGroup
	wg.Go(func() { _ = w.run(ctx) })
	wg.Go(func() { d.run(ctx, changes) })
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
		for _, b := range d.backends() {
			n += b.closeAll()
		}
		log.Info("shutdown: closed open connections", "closed", n)
		<-done
	}
	log.Info("stopped")
	return nil
}
