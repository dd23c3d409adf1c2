package main

// -metrics_address against the real daemon: /metrics, /healthz and /status
// scraped during a deploy under load.

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsClient fetches the proxy's metrics endpoints, never through an
// HTTP proxy from the environment.
var metricsClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// metricsGet GETs path on addr and returns the status code and body.
func metricsGet(addr, path string) (int, []byte, error) {
	resp, err := metricsClient.Get("http://" + addr + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// metricsScrape is one parsed read of /metrics.
type metricsScrape map[string]*dto.MetricFamily

// scrapeMetrics reads and parses /metrics on addr, failing the test on any
// error.
func scrapeMetrics(t testing.TB, addr string) metricsScrape {
	t.Helper()
	resp, err := metricsClient.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// value returns the value of the series of name whose labels include the
// pairs in labels (key, value, key, value...), and whether there is one.
func (s metricsScrape) value(name string, labels ...string) (float64, bool) {
	mf, ok := s[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// must is value, failing the test when the series does not exist.
func (s metricsScrape) must(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	v, ok := s.value(name, labels...)
	if !ok {
		t.Fatalf("/metrics has no %s%v", name, labels)
	}
	return v
}

// statusDoc is the /status document as a client reads it.
type statusDoc struct {
	Selector string      `json:"selector"`
	Serving  *statusCtr  `json:"serving"`
	Pending  []statusCtr `json:"pending"`
	Draining []statusCtr `json:"draining"`
	Ignored  []statusCtr `json:"ignored"`
	Events   string      `json:"events"`
}

type statusCtr struct {
	Container   string    `json:"container"`
	Addr        string    `json:"addr"`
	Created     time.Time `json:"created"`
	Connections int       `json:"connections"`
}

func readStatusDoc(t testing.TB, addr string) statusDoc {
	t.Helper()
	code, body, err := metricsGet(addr, "/status")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /status: %d, %v", code, err)
	}
	var s statusDoc
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("/status is not JSON: %v\n%s", err, body)
	}
	return s
}

func (s statusDoc) serving() string {
	if s.Serving == nil {
		return ""
	}
	return s.Serving.Container
}

func statusHas(list []statusCtr, short string) bool {
	for _, c := range list {
		if c.Container == short {
			return true
		}
	}
	return false
}

// TestDockerMetricsAndStatus scrapes /metrics, /healthz and /status while
// a deploy happens under load: every documented metric moves as the deploy
// goes, and /status names the pending, serving and draining containers.
func TestDockerMetricsAndStatus(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	cfg := zeroDowntimeConfig(tag)
	cfg.grace = 4 * time.Second
	cfg.metricsAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	m := cfg.metricsAddr
	port := strconv.Itoa(int(cfg.ports[0].host)) // the port label
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	eventually(t, 10*time.Second, "/healthz answering 200", func() bool {
		code, body, err := metricsGet(m, "/healthz")
		return err == nil && code == http.StatusOK && string(body) == "ok\n"
	})
	eventually(t, 10*time.Second, "/status serving the first container, events connected", func() bool {
		s := readStatusDoc(t, m)
		return s.serving() == old.short() && s.Events == "connected"
	})
	if s := readStatusDoc(t, m); s.Selector != tag || s.Serving.Addr != old.ip.String() {
		t.Errorf("/status: selector %q, serving addr %q; want %q, %q", s.Selector, s.Serving.Addr, tag, old.ip)
	}
	first := scrapeMetrics(t, m)
	if v := first.must(t, "docker_proxy_serving_info", "container", old.short()); v != 1 {
		t.Errorf("serving_info for %s = %v; want 1", old.short(), v)
	}
	first.must(t, "docker_proxy_event_stream_reconnects_total")
	for _, name := range []string{"docker_proxy_serving", "docker_proxy_event_stream_connected"} {
		if v := first.must(t, name); v != 1 {
			t.Errorf("%s = %v while a container serves and the stream is up; want 1", name, v)
		}
	}
	for _, name := range []string{"docker_proxy_swaps_total", "docker_proxy_removals_total"} {
		if v := first.must(t, name); v != 0 {
			t.Errorf("%s = %v before any deploy; want 0", name, v)
		}
	}

	l := startLoad(t, p.addrs[0], 4, 0)
	eventually(t, 10*time.Second, "load flowing", func() bool { return l.ok.Load() > 20 })
	before := scrapeMetrics(t, m)
	accepted0 := before.must(t, "docker_proxy_connections_accepted_total", "port", port)
	up0 := before.must(t, "docker_proxy_bytes_total", "port", port, "direction", "up")
	down0 := before.must(t, "docker_proxy_bytes_total", "port", port, "direction", "down")
	if accepted0 == 0 || up0 == 0 || down0 == 0 {
		t.Errorf("under load: accepted %v, bytes up %v, down %v; want all > 0", accepted0, up0, down0)
	}

	// The deploy: pending while its status check fails, then serving,
	// with the old one draining for its grace period, then removed.
	nu := startCtr(t, tag, "-ready_after", "2s")
	eventually(t, 5*time.Second, "/status listing the new container as pending", func() bool {
		s := readStatusDoc(t, m)
		return statusHas(s.Pending, nu.short()) && s.serving() == old.short()
	})
	waitServed(t, p.addrs[0], nu, 15*time.Second)
	eventually(t, cfg.grace, "/status serving the new container and draining the old one", func() bool {
		s := readStatusDoc(t, m)
		return s.serving() == nu.short() && statusHas(s.Draining, old.short()) && len(s.Pending) == 0
	})
	after := scrapeMetrics(t, m)
	if v := after.must(t, "docker_proxy_swaps_total"); v != 1 {
		t.Errorf("swaps_total = %v after one deploy; want 1", v)
	}
	if v := after.must(t, "docker_proxy_readiness_checks_total", "outcome", "ready"); v < 1 {
		t.Errorf(`readiness_checks_total{outcome="ready"} = %v; want >= 1`, v)
	}
	if v := after.must(t, "docker_proxy_readiness_seconds"); v < 1 {
		t.Errorf("readiness_seconds has %v samples; want >= 1", v)
	}
	if v := after.must(t, "docker_proxy_serving_info", "container", nu.short(), "addr", nu.ip.String()); v != 1 {
		t.Errorf("serving_info for %s = %v; want 1", nu.short(), v)
	}
	if _, ok := after.value("docker_proxy_serving_info", "container", old.short()); ok {
		t.Errorf("serving_info still names the old container %s", old.short())
	}

	eventually(t, cfg.grace+10*time.Second, "removals_total reaching 1", func() bool {
		v, _ := scrapeMetrics(t, m).value("docker_proxy_removals_total")
		return v == 1
	})
	if ctrExists(t, old.id) {
		t.Error("removals_total is 1 but the old container is still there")
	}
	if s := readStatusDoc(t, m); len(s.Draining) != 0 || s.serving() != nu.short() {
		t.Errorf("/status after the removal: serving %q, draining %v; want %s and none", s.serving(), s.Draining, nu.short())
	}

	l.expectNoFailure(t)
	end := scrapeMetrics(t, m)
	if v := end.must(t, "docker_proxy_connections_accepted_total", "port", port); v <= accepted0 {
		t.Errorf("connections_accepted_total %v; want more than %v", v, accepted0)
	}
	for dir, v0 := range map[string]float64{"up": up0, "down": down0} {
		if v := end.must(t, "docker_proxy_bytes_total", "port", port, "direction", dir); v <= v0 {
			t.Errorf(`bytes_total{direction=%q} %v; want more than %v`, dir, v, v0)
		}
	}
	if v := end.must(t, "docker_proxy_connections_failed_total", "port", port); v != 0 {
		t.Errorf("connections_failed_total = %v; want 0", v)
	}
	eventually(t, 10*time.Second, "connections_active back to 0", func() bool {
		v, ok := scrapeMetrics(t, m).value("docker_proxy_connections_active", "port", port)
		return ok && v == 0
	})
	if v := end.must(t, "docker_proxy_event_stream_reconnects_total"); v != 0 {
		t.Errorf("event_stream_reconnects_total = %v with the daemon up all along; want 0", v)
	}
	if s := readStatusDoc(t, m); s.Events != "connected" {
		t.Errorf(`/status events %q; want "connected"`, s.Events)
	}
	t.Logf("%d requests through one deploy", l.ok.Load())
}
