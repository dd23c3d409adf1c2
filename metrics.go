package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
)

// metrics are the proxy's Prometheus metrics. They always exist (an atomic
// add costs next to nothing) and are served only with -metrics_address.
// The per-port ones are resolved once per listener, so a connection never
// looks a label up.
type metrics struct {
	reg *prometheus.Registry

	accepted, failed   []prometheus.Counter // by listener index
	limited            []prometheus.Counter
	active             []prometheus.Gauge
	bytesUp, bytesDown []prometheus.Counter // client to container, and back

	swaps, removals, rollbacks, reconnects prometheus.Counter
	removalFailures                        prometheus.Counter
	readiness                              *prometheus.CounterVec
	readyTime                              prometheus.Histogram
	serving                                *prometheus.GaugeVec
	servingNow                             prometheus.Gauge
}

func newMetrics(ports []portMap) *metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	portVec := func(name, help string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "docker_proxy_" + name, Help: help}, []string{"port"})
		f(v)
		return v
	}
	accepted := portVec("connections_accepted_total", "Connections accepted, by host port.")
	failed := portVec("connections_failed_total", "Connections closed unforwarded: no container ready and reachable within the hold timeout.")
	limited := portVec("connections_limited_total", "Connections accepted that had to wait for a slot at -max_conns.")
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "docker_proxy_bytes_total", Help: "Bytes forwarded, by host port and direction (up: client to container).",
	}, []string{"port", "direction"})
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "docker_proxy_connections_active", Help: "Connections open now, by host port.",
	}, []string{"port"})
	f(bytes)
	f(active)
	m := &metrics{
		reg:        reg,
		swaps:      prometheus.NewCounter(prometheus.CounterOpts{Name: "docker_proxy_swaps_total", Help: "Times a newer container began serving."}),
		removals:   prometheus.NewCounter(prometheus.CounterOpts{Name: "docker_proxy_removals_total", Help: "Containers retired (removed, stopped or left, as -retire says)."}),
		rollbacks:  prometheus.NewCounter(prometheus.CounterOpts{Name: "docker_proxy_rollbacks_total", Help: "Times the previous container served again because the new one failed."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "docker_proxy_event_stream_reconnects_total", Help: "Times the Docker event stream was lost."}),
		readiness: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "docker_proxy_readiness_checks_total", Help: "Readiness checks by outcome: ready, ignored (not ready in time) or superseded.",
		}, []string{"outcome"}),
		readyTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "docker_proxy_readiness_seconds", Help: "Time from a container's start to its readiness.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
		}),
		serving: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "docker_proxy_serving_info", Help: "The container new connections go to (value 1).",
		}, []string{"container", "addr"}),
		// serving_info vanishes when none serves, and an absent series
		// fires no alert: this one is there, at 0.
		servingNow: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "docker_proxy_serving", Help: "1 while a ready container takes new connections, 0 while they wait for one.",
		}),
	}
	// Every outcome exists from the start: increase() cannot see a
	// series' first sample, so an ignored deploy that created the series
	// would fire no alert.
	for _, o := range []string{"ready", "ignored", "superseded"} {
		m.readiness.WithLabelValues(o)
	}
	m.removalFailures = prometheus.NewCounter(prometheus.CounterOpts{Name: "docker_proxy_removal_failures_total", Help: "Failed attempts to retire a container; each is retried with backoff."})
	f(m.removalFailures)
	f(m.swaps)
	f(m.removals)
	f(m.rollbacks)
	f(m.reconnects)
	f(m.readiness)
	f(m.readyTime)
	f(m.serving)
	f(m.servingNow)
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, p := range ports {
		port := strconv.Itoa(int(p.host))
		m.accepted = append(m.accepted, accepted.WithLabelValues(port))
		m.failed = append(m.failed, failed.WithLabelValues(port))
		m.limited = append(m.limited, limited.WithLabelValues(port))
		m.active = append(m.active, active.WithLabelValues(port))
		m.bytesUp = append(m.bytesUp, bytes.WithLabelValues(port, "up"))
		m.bytesDown = append(m.bytesDown, bytes.WithLabelValues(port, "down"))
	}
	return m
}

// setServing records the serving container; nil for none.
func (m *metrics) setServing(c *ctrInfo) {
	m.serving.Reset()
	if c == nil {
		m.servingNow.Set(0)
		return
	}
	m.servingNow.Set(1)
	m.serving.WithLabelValues(c.short(), c.ip.String()).Set(1)
}

// followEvents exports whether the Docker event stream is up: while it is
// down, the proxy sees no deploy. Call it once, with the watcher's flag.
func (m *metrics) followEvents(connected *atomic.Bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "docker_proxy_event_stream_connected", Help: "1 while the Docker event stream is up, 0 while the proxy reconnects.",
	}, func() float64 {
		if connected.Load() {
			return 1
		}
		return 0
	}))
}

// The metrics server is for a scraper and a person with curl, never for
// the load the data ports take: it holds few connections, each for one
// request and a bounded time, so that idle or slow clients cannot use up
// the file descriptors the data ports need, nor keep the scraper out.
const (
	metricsMaxConns = 32
	metricsIdle     = 30 * time.Second
	metricsRead     = 10 * time.Second
	metricsWrite    = 30 * time.Second
)

// listenMetrics opens the -metrics_address listener. It is called at
// start-up, so an address that cannot be bound stops the proxy like a
// data port would.
func listenMetrics(addr string) (net.Listener, error) {
	host, _, _ := net.SplitHostPort(addr)
	network := "tcp" // a name: whatever it resolves to
	if net.ParseIP(host) != nil {
		network = listenNetwork(host) // 0.0.0.0 is IPv4 only, as for the data ports
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	return ln, nil
}

// serveMetrics serves /metrics, /healthz and /status on ln until ctx
// ends.
func serveMetrics(ctx context.Context, ln net.Listener, m *metrics, snap *atomic.Pointer[status], connected *atomic.Bool, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		s := status{}
		if p := snap.Load(); p != nil {
			s = *p
		}
		_ = enc.Encode(s.current(connected.Load(), time.Now()))
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       metricsRead,
		WriteTimeout:      metricsWrite,
		IdleTimeout:       metricsIdle,
		MaxHeaderBytes:    16 << 10,
		// net/http's own complaints (a bad TLS hello, a panic in a
		// handler) go to the same log, in the same format.
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	// One request per connection: a scraper reconnects every interval
	// anyway, and idle keep-alive clients would otherwise hold the few
	// connections there are and lock everyone else out.
	srv.SetKeepAlivesEnabled(false)
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	log.Info("serving metrics", "addr", ln.Addr().String())
	if err := srv.Serve(netutil.LimitListener(ln, metricsMaxConns)); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
