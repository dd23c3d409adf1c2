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
	"syscall"
	"time"

	"github.com/docker/docker/client"
)

func main() {
	if code, ok := runCommand(os.Args[1:]); ok {
		os.Exit(code)
	}
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
	ctx, abort := signals(log, controlPath(cfg) != "")
	if err := run(ctx, abort, cfg, log); err != nil {
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

// signals turns the process's signals into its lifetime: the first SIGTERM
// or SIGINT ends ctx (no new connections; open ones get
// -shutdown_timeout), a second one closes abort (every connection is
// closed now). SIGHUP, which a closed terminal or session sends, is logged
// and ignored: the proxy has nothing to reload, and a restart is the way
// to change its flags. SIGUSR2 restarts it in place without a gap: a new
// process of the binary takes over (see restartInPlace).
func signals(log *slog.Logger, canRestart bool) (context.Context, <-chan struct{}) {
	ctx, stop := context.WithCancel(context.Background())
	abort := make(chan struct{})
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR2)
	go func() {
		for n := 0; ; {
			sig := <-ch
			switch sig {
			case syscall.SIGHUP:
				log.Info("SIGHUP ignored: restart docker-proxy to change its settings (SIGUSR2 restarts it without a gap)")
				continue
			case syscall.SIGUSR2:
				switch {
				case !canRestart:
					log.Warn("SIGUSR2 ignored: with -control \"\" there is no control socket for a new process to take over through")
				case n == 0:
					restartInPlace(log)
				}
				continue
			}
			if n++; n == 1 {
				log.Info("stopping", "signal", sig.String())
				stop()
				continue
			}
			log.Warn("second signal: closing every connection now", "signal", sig.String())
			close(abort)
			return
		}
	}()
	return ctx, abort
}

// run connects to Docker, opens the listeners and serves until ctx ends.
func run(ctx context.Context, abort <-chan struct{}, cfg config, log *slog.Logger) error {
	if os.Getenv("DOCKER_CERT_PATH") != "" && os.Getenv("DOCKER_TLS_VERIFY") == "" && cfg.docker == "" {
		log.Warn("DOCKER_CERT_PATH is set but DOCKER_TLS_VERIFY is not: the Docker API's certificate is not verified (set DOCKER_TLS_VERIFY=1)")
	}
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
	// A proxy already running for these ports hands its sockets over;
	// else this is a cold start.
	var t *takeover
	var takeErr error
	if path := controlPath(cfg); path != "" {
		t, takeErr = takeOver(path, cfg)
		logTakeover(log, path, t, takeErr)
	}
	handed := sockets{}
	if t != nil {
		handed = t.socks
	}
	lns := make([]*net.TCPListener, 0, len(cfg.ports))
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	network := listenNetwork(cfg.address)
	for _, p := range cfg.ports {
		if ln := handed.ports[p.host]; ln != nil {
			lns = append(lns, ln)
			continue
		}
		addr := net.JoinHostPort(cfg.address, strconv.Itoa(int(p.host)))
		ln, err := listenTCP(network, addr)
		if err != nil {
			handed.close()
			switch {
			case errors.Is(err, syscall.EADDRINUSE) && takeErr != nil && !errors.Is(takeErr, errNoPredecessor):
				return fmt.Errorf("listen on %s: %w (the proxy that holds it did not hand over: %v)", addr, err, takeErr)
			case errors.Is(err, syscall.EADDRINUSE) && t == nil:
				return fmt.Errorf("listen on %s: %w (a docker-proxy without a control socket, or an older one, holds it? stop it first)", addr, err)
			}
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		lns = append(lns, ln)
	}
	return serveFrom(ctx, abort, cfg, docker, lns, log, t)
}

// listenNetwork is the network the listeners open for -address: an IPv4
// address listens on IPv4 only, as Docker's own -p 0.0.0.0:... does; "::"
// on every IPv6 address and, unless the host sets
// net.ipv6.bindv6only=1, every IPv4 one too; any other IPv6 address on
// IPv6 only.
func listenNetwork(address string) string {
	ip := net.ParseIP(address)
	switch {
	case ip.To4() != nil:
		return "tcp4"
	case ip.IsUnspecified():
		return "tcp"
	}
	return "tcp6"
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
