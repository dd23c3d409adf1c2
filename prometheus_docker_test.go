package main

// Debian's prometheus against a live proxy: it scrapes -metrics_address
// with examples/prometheus/alerts.yml loaded, stays quiet while the proxy
// is healthy, and fires DockerProxyDeployIgnored for a real ignored deploy.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// promServer is a prometheus process that lives as long as one test.
type promServer struct {
	addr   string
	log    *logBuffer
	exited chan struct{} // closed when the process has ended
}

// startPrometheus runs prometheus scraping target every second as job
// docker-proxy, with the example rules evaluated every second. The process
// is killed and its data removed when the test ends.
func startPrometheus(t *testing.T, target string) *promServer {
	t.Helper()
	bin := needTool(t, "prometheus")
	rules, err := filepath.Abs(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: docker-proxy
    static_configs:
      - targets: [%q]
`, rules, target)
	file := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(file, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &promServer{addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), log: &logBuffer{}, exited: make(chan struct{})}
	cmd := exec.Command(bin, "--config.file="+file, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+s.addr)
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	// Registered after TempDir's cleanup, so it runs first: the process
	// is gone before its data directory is removed.
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("prometheus (pid %d) still running 10s after it was killed", cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", s.log.String())
		}
	})
	return s
}

// api GETs a Prometheus HTTP API path and decodes its data into v; false
// while it does not answer. A prometheus that has exited fails the test.
func (s *promServer) api(t *testing.T, path string, v any) bool {
	t.Helper()
	select {
	case <-s.exited:
		t.Fatalf("prometheus exited")
	default:
	}
	code, body, err := metricsGet(s.addr, path)
	if err != nil || code != http.StatusOK {
		return false
	}
	var resp struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil || resp.Status != "success" {
		t.Fatalf("GET %s: %v, %s", path, err, body)
	}
	if err := json.Unmarshal(resp.Data, v); err != nil {
		t.Fatalf("GET %s: %v, %s", path, err, resp.Data)
	}
	return true
}

// query returns the samples of an instant query, by their labels.
func (s *promServer) query(t *testing.T, q string) []promSample {
	t.Helper()
	var data struct {
		Result []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	if !s.api(t, "/api/v1/query?query="+url.QueryEscape(q), &data) {
		return nil
	}
	var out []promSample
	for _, r := range data.Result {
		v, _ := r.Value[1].(string)
		out = append(out, promSample{r.Metric, v})
	}
	return out
}

type promSample struct {
	labels map[string]string
	value  string
}

type promAlert struct {
	Labels map[string]string `json:"labels"`
	State  string            `json:"state"`
}

// alerts returns the pending and firing alerts. Prometheus has answered
// before it is called, so not answering now fails the test.
func (s *promServer) alerts(t *testing.T) []promAlert {
	t.Helper()
	var data struct {
		Alerts []promAlert `json:"alerts"`
	}
	if !s.api(t, "/api/v1/alerts", &data) {
		t.Fatal("GET /api/v1/alerts: prometheus does not answer")
	}
	return data.Alerts
}

// ruleNames are the alerts alerts.yml defines.
func ruleNames(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\w+)$`).FindAllStringSubmatch(string(b), -1) {
		names[m[1]] = true
	}
	if len(names) == 0 {
		t.Fatalf("no alerts in %s", alertRules)
	}
	return names
}

// TestDockerPrometheusScrapesAndAlerts: a real Prometheus scrapes the
// proxy and loads the example rules; every rule evaluates without error
// on the proxy's real metrics and none fires while a container serves;
// a container that is never ready fires DockerProxyDeployIgnored.
func TestDockerPrometheusScrapesAndAlerts(t *testing.T) {
	needDocker(t)             // skips first under -short
	needTool(t, "prometheus") // before any container starts
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	cfg := zeroDowntimeConfig(tag)
	cfg.statusTimeout = 3 * time.Second
	cfg.metricsAddr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)
	eventually(t, 10*time.Second, "the event stream connected", func() bool {
		return readStatusDoc(t, cfg.metricsAddr).Events == "connected"
	})

	prom := startPrometheus(t, cfg.metricsAddr)
	eventually(t, 30*time.Second, "the proxy's target up", func() bool {
		var data struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		}
		if !prom.api(t, "/api/v1/targets", &data) {
			return false
		}
		for _, tg := range data.ActiveTargets {
			if tg.Labels["instance"] == cfg.metricsAddr && tg.Labels["job"] == "docker-proxy" {
				return tg.Health == "up"
			}
		}
		return false
	})
	eventually(t, 10*time.Second, "docker_proxy_serving 1 and serving_info naming the container", func() bool {
		serving := prom.query(t, "docker_proxy_serving")
		info := prom.query(t, fmt.Sprintf("docker_proxy_serving_info{container=%q}", old.short()))
		return len(serving) == 1 && serving[0].value == "1" && serving[0].labels["instance"] == cfg.metricsAddr &&
			len(info) == 1 && info[0].value == "1"
	})

	// Every rule of alerts.yml is loaded and has been evaluated, without
	// error, on the scraped metrics.
	scraped := time.Now()
	want := ruleNames(t)
	eventually(t, 15*time.Second, "every alert rule loaded and evaluated after the scrape", func() bool {
		var data struct {
			Groups []struct {
				Rules []struct {
					Name           string    `json:"name"`
					Type           string    `json:"type"`
					Health         string    `json:"health"`
					LastError      string    `json:"lastError"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if !prom.api(t, "/api/v1/rules", &data) {
			return false
		}
		ok := map[string]bool{}
		for _, g := range data.Groups {
			for _, r := range g.Rules {
				if r.LastError != "" {
					t.Fatalf("rule %s: %s", r.Name, r.LastError)
				}
				if r.Type == "alerting" && r.Health == "ok" && r.LastEvaluation.After(scraped) {
					ok[r.Name] = true
				}
			}
		}
		for name := range want {
			if !ok[name] {
				return false
			}
		}
		return len(ok) == len(want)
	})
	if a := prom.alerts(t); len(a) != 0 {
		t.Fatalf("alerts pending or firing for a healthy proxy: %v", a)
	}

	// A deploy whose container never becomes ready is ignored, and the
	// alert fires at once (it has no "for").
	startCtr(t, tag, "-fail_status")
	p.logs.waitLog(t, cfg.statusTimeout+10*time.Second, "ignored: not ready in time")
	eventually(t, 15*time.Second, "DockerProxyDeployIgnored firing", func() bool {
		for _, a := range prom.alerts(t) {
			if a.Labels["alertname"] == "DockerProxyDeployIgnored" && a.State == "firing" &&
				a.Labels["instance"] == cfg.metricsAddr && a.Labels["severity"] == "warning" {
				return true
			}
		}
		return false
	})
	for _, a := range prom.alerts(t) {
		if a.Labels["alertname"] != "DockerProxyDeployIgnored" {
			t.Errorf("alert %s (%s) with the old container still serving", a.Labels["alertname"], a.State)
		}
	}
}
