package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/docker/docker/client"
	"github.com/peterbourgon/ff/v3"
)

// envPrefix names the environment variables that can set every flag:
// -grace_period is DOCKER_PROXY_GRACE_PERIOD. A flag on the command line
// wins over its variable.
const envPrefix = "DOCKER_PROXY"

// config is everything the flags say.
type config struct {
	address       string
	docker        string // "": DOCKER_HOST and friends, else the default socket
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

	dockerTLS     tlsFiles
	statusPort    uint16 // TCP readiness
	network       string
	labels        []label
	metricsAddr   string
	proxyProtocol int    // 0 (off), 1 or 2
	control       string // the control socket's path; "": none
	version       bool
}

// tlsFiles are the -docker_tls_* files.
type tlsFiles struct{ ca, cert, key string }

func (t tlsFiles) set() bool { return t.ca != "" || t.cert != "" || t.key != "" }

const defaultDocker = "unix:///var/run/docker.sock"

// userlandArgs are flags of Docker's own userland proxy, which dockerd
// looks up as "docker-proxy" beside itself.
var userlandArgs = []string{"proto", "host-ip", "host-port", "container-ip", "container-port"}

// parseFlags reads the command line and DOCKER_PROXY_* variables. Bad input
// yields one error naming the bad value; -h prints the flags to out and
// yields flag.ErrHelp.
func parseFlags(args []string, out io.Writer) (config, error) {
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && slices.Contains(userlandArgs, name) {
			return config{}, fmt.Errorf("called with %s: this is not Docker's userland proxy (also named docker-proxy); "+
				"install this one outside dockerd's folders, e.g. in /usr/local/bin", a)
		}
	}
	cfg := config{
		statusTimeout: 10 * time.Second,
		grace:         10 * time.Second,
		hold:          5 * time.Second,
		retire:        retireRemove,
		shutdown:      10 * time.Second,
		replayBytes:   defaultReplayBytes,
		logFormat:     "text",
		control:       controlAuto,
	}
	fs := flag.NewFlagSet("docker-proxy", flag.ContinueOnError)
	fs.StringVar(&cfg.address, "address", "0.0.0.0", "the `address` the proxy listens on")
	fs.StringVar(&cfg.docker, "docker", defaultDocker, "`URL` of the Docker API, unix:///path or tcp://host:port (when not set: $DOCKER_HOST, $DOCKER_TLS_VERIFY and $DOCKER_CERT_PATH as the docker CLI reads them)")
	fs.Var(portsFlag{&cfg.ports}, "ports", "`ports` to forward, comma-delimited: P (host P to container P) or H=C (host H to container C), e.g. 80,443=3000")
	fs.Var(statusFlag{&cfg.statusURL}, "status_url", "`:PORT/URI` on the container's IP that answers 200 once it is ready, e.g. :80/server-status (none: see -status_port, else a HEALTHCHECK, else ready once the first mapping's container port accepts a connection)")
	fs.Var(durationFlag{&cfg.statusTimeout}, "status_timeout", "how long a new container may take to become ready before it is ignored")
	fs.StringVar(&cfg.tag, "tag", "", "the image `reference` the containers are started from, e.g. myapp:latest")
	fs.Var(durationFlag{&cfg.grace}, "grace_period", "how long an old container keeps its connections after a new one serves, before it is removed (docker rm -f)")
	fs.Var(durationFlag{&cfg.hold}, "hold_timeout", "how long a new connection waits for a ready container when there is none, or the dial fails (0: close it at once)")
	fs.BoolVar(&cfg.drain, "drain", false, "remove an old container as soon as its last connection closes (-grace_period stays the upper bound)")
	fs.Var(durationFlag{&cfg.stopTimeout}, "stop_timeout", "stop an old container (SIGTERM, then SIGKILL after this long) before removing it (0: docker rm -f)")
	fs.Var(retireFlag{&cfg.retire}, "retire", "what happens to an old container: `rm` (removed), stop (stopped only), none (left running)")
	fs.Var(durationFlag{&cfg.shutdown}, "shutdown_timeout", "on SIGTERM, how long open connections may take to finish before they are closed")
	fs.IntVar(&cfg.maxConns, "max_conns", 0, "the most connections served at once; more wait in the kernel's backlog (0: no limit)")
	fs.IntVar(&cfg.replayBytes, "replay_bytes", cfg.replayBytes, "a client's first bytes kept until the container answers, and sent to another container only if the first one resets the connection before answering (0: never; at most 1 MiB)")
	fs.Func("log_format", "log line `format`: text or json (default text)", func(s string) error {
		if s != "text" && s != "json" {
			return errors.New("want text or json")
		}
		cfg.logFormat = s
		return nil
	})
	fs.TextVar(&cfg.logLevel, "log_level", cfg.logLevel, "the least important `level` of log line shown: debug, info, warn or error")
	fs.StringVar(&cfg.dockerTLS.ca, "docker_tls_ca", "", "CA certificate `file` that the Docker API's certificate must be signed by (turns TLS on)")
	fs.StringVar(&cfg.dockerTLS.cert, "docker_tls_cert", "", "client certificate `file` for the Docker API")
	fs.StringVar(&cfg.dockerTLS.key, "docker_tls_key", "", "client key `file` for the Docker API")
	fs.Func("status_port", "TCP `port` on the container's IP: ready once a connection to it succeeds (for services that do not speak HTTP)", func(s string) error {
		p, err := parsePort(s)
		cfg.statusPort = p
		return err
	})
	fs.StringVar(&cfg.network, "network", "", "the Docker `network` whose address of the container to use (default: the bridge, else the only one)")
	fs.Func("label", "select containers by `KEY=VALUE` label, instead of or as well as -tag; repeat it, or give a comma-delimited list, to require several", func(s string) error {
		ls, err := parseLabels(s)
		cfg.labels = append(cfg.labels, ls...)
		return err
	})
	fs.StringVar(&cfg.metricsAddr, "metrics_address", "", "`host:port` serving Prometheus /metrics, /healthz and /status (default: off)")
	fs.Func("proxy_protocol", "send a PROXY protocol header (`v1` or v2) with the client's address on each backend connection (default: off)", func(s string) error {
		switch s {
		case "v1", "1":
			cfg.proxyProtocol = 1
		case "v2", "2":
			cfg.proxyProtocol = 2
		default:
			return errors.New("want v1 or v2")
		}
		return nil
	})
	fs.StringVar(&cfg.control, "control", cfg.control, "`path` of the control socket that docker-proxy wait, deploy and status use (auto: "+controlDir+"/ADDRESS-PORTS.sock; \"\": off)")
	fs.BoolVar(&cfg.version, "version", false, "print the version and exit")
	fs.VisitAll(func(f *flag.Flag) {
		f.Usage += " [$" + envVar(f.Name) + "]"
	})

	fs.SetOutput(io.Discard) // errors are reported once, by the caller
	fs.Usage = func() {}
	if err := unknownEnv(fs, os.Environ()); err != nil {
		return cfg, err
	}
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix(envPrefix)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(out)
			fmt.Fprintf(out, "Usage: docker-proxy -ports SPEC -tag IMAGE [flags]\n"+
				"       docker-proxy wait|deploy|status [flags] (see docker-proxy COMMAND -h)\n\n"+
				"Every flag can also be set by the environment variable in brackets;\n"+
				"a flag on the command line wins.\n\n")
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if cfg.version {
		return cfg, nil
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if !given["docker"] {
		cfg.docker = "" // DOCKER_HOST, or the default socket
	}
	return cfg, cfg.check(fs.Args())
}

// check validates what each flag alone cannot.
func (cfg config) check(rest []string) error {
	switch {
	case len(rest) > 0:
		return fmt.Errorf("unexpected argument %q: every setting is a flag, see -h", rest[0])
	case cfg.tag == "" && len(cfg.labels) == 0:
		return errors.New("missing -tag: want the image reference the containers are started from, e.g. -tag myapp:latest (or -label KEY=VALUE)")
	case len(cfg.ports) == 0:
		return errors.New("missing -ports: want the ports to forward, e.g. -ports 80,443=3000")
	case cfg.maxConns < 0:
		return fmt.Errorf("-max_conns %d: want 0 (no limit) or more", cfg.maxConns)
	case cfg.replayBytes < 0 || cfg.replayBytes > maxReplayBytes:
		return fmt.Errorf("-replay_bytes %d: want 0 (never) to %d (1 MiB)", cfg.replayBytes, maxReplayBytes)
	case cfg.statusURL.port != 0 && cfg.statusPort != 0:
		return errors.New("-status_url and -status_port both set: want one way to tell readiness")
	case (cfg.dockerTLS.cert == "") != (cfg.dockerTLS.key == ""):
		return errors.New("-docker_tls_cert and -docker_tls_key go together: want both or neither")
	}
	if cfg.tag != "" {
		if _, err := newTagMatcher(cfg.tag); err != nil {
			return fmt.Errorf("invalid value for flag -tag: %w", err)
		}
	}
	if net.ParseIP(cfg.address) == nil {
		return fmt.Errorf("invalid value %q for flag -address: want an IP address, like 0.0.0.0", cfg.address)
	}
	if cfg.docker != "" {
		if u, err := client.ParseHostURL(cfg.docker); err != nil || (u.Scheme != "unix" && u.Scheme != "tcp") {
			return fmt.Errorf("invalid value %q for flag -docker: want unix:///path or tcp://host:port", cfg.docker)
		}
	}
	if cfg.metricsAddr != "" {
		if _, _, err := net.SplitHostPort(cfg.metricsAddr); err != nil {
			return fmt.Errorf("invalid value %q for flag -metrics_address: want host:port, like 127.0.0.1:9100", cfg.metricsAddr)
		}
	}
	return nil
}

// unknownEnv refuses a DOCKER_PROXY_ variable that sets no flag: a typo
// (DOCKER_PROXY_STATUSURL) would otherwise run the proxy without the
// setting, silently.
func unknownEnv(fs *flag.FlagSet, environ []string) error {
	known := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { known[envVar(f.Name)] = true })
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, envPrefix+"_") || known[name] {
			continue
		}
		squash := func(s string) string { return strings.ReplaceAll(s, "_", "") }
		for k := range known {
			if squash(k) == squash(name) {
				return fmt.Errorf("unknown environment variable %s: did you mean %s?", name, k)
			}
		}
		return fmt.Errorf("unknown environment variable %s: no flag is set by it (see -h for the %s_* variables)", name, envPrefix)
	}
	return nil
}

// envVar is the environment variable of a flag.
func envVar(name string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
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
