package main

import (
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// gathered returns the value of the unlabelled gauge name in reg, and
// whether reg has it.
func gathered(t *testing.T, reg prometheus.Gatherer, name string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// TestMetricsServing: docker_proxy_serving is 0 until a container serves,
// 1 while one does, and 0 again, not absent, when none does, so that the
// alert on it can fire.
func TestMetricsServing(t *testing.T) {
	m := newMetrics(nil)
	want := func(when string, v float64) {
		t.Helper()
		if got, ok := gathered(t, m.reg, "docker_proxy_serving"); !ok || got != v {
			t.Errorf("%s: docker_proxy_serving %v (present %v); want %v", when, got, ok, v)
		}
	}
	want("at start", 0)
	m.setServing(&ctrInfo{id: "0123456789abcdef", ip: netip.MustParseAddr("172.17.0.2")})
	want("serving", 1)
	m.setServing(nil)
	want("after the container went", 0)
}

// TestMetricsEventStreamConnected: the gauge reads the watcher's flag at
// every scrape.
func TestMetricsEventStreamConnected(t *testing.T) {
	m := newMetrics(nil)
	var connected atomic.Bool
	m.followEvents(&connected)
	for _, up := range []bool{false, true, false} {
		connected.Store(up)
		want := 0.0
		if up {
			want = 1
		}
		if got, ok := gathered(t, m.reg, "docker_proxy_event_stream_connected"); !ok || got != want {
			t.Errorf("stream up %v: docker_proxy_event_stream_connected %v (present %v); want %v", up, got, ok, want)
		}
	}
}

// TestMetricsSeriesExistAtStart: the series the alert rules take
// increase() or rate() of exist, at 0, before anything happens:
// Prometheus cannot see a series' first sample as an increase.
func TestMetricsSeriesExistAtStart(t *testing.T) {
	m := newMetrics([]portMap{{host: 80, container: 80}})
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]int{}
	for _, mf := range mfs {
		have[mf.GetName()] = len(mf.GetMetric())
	}
	for name, n := range map[string]int{
		"docker_proxy_readiness_checks_total":        3, // ready, ignored, superseded
		"docker_proxy_rollbacks_total":               1,
		"docker_proxy_event_stream_reconnects_total": 1,
		"docker_proxy_connections_limited_total":     1, // one port
	} {
		if have[name] != n {
			t.Errorf("%s has %d series at start; want %d", name, have[name], n)
		}
	}
}
