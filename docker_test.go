package main

// Helpers for the tests that run against the real Docker daemon: a test
// image built FROM scratch in this run, containers and tags named with a
// unique prefix and removed when the test ends, and the proxy run in
// process on 127.0.0.1 listeners.

import (
	"archive/tar"
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// testLabel marks every container and image the tests make, with the
// run's id; pidLabel with the test process, so that a later run can reap
// what a run killed before its clean-up (a panic, a timeout) left behind.
const (
	testLabel = "docker-proxy-test"
	pidLabel  = "docker-proxy-test.pid" // "HOSTNAME/PID" of the test process
)

var ownPID = func() string {
	host, _ := os.Hostname()
	return host + "/" + strconv.Itoa(os.Getpid())
}()

var (
	runID = func() string {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		return hex.EncodeToString(b)
	}()
	prefix = "dockerproxy-test-" + runID

	dockerOnce   sync.Once
	dockerCli    *client.Client
	dockerErr    error
	serverImage  string // the test server image, tagged prefix:base
	imagesMu     sync.Mutex
	imagesToDrop []string
)

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupImages()
	os.Exit(code)
}

// needDocker returns a client of the local daemon, with the test server
// image built. It skips the test when no daemon answers, except in CI
// (CI set), where a missing daemon fails the test.
func needDocker(t testing.TB) *client.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test against the Docker daemon")
	}
	dockerOnce.Do(func() { dockerErr = setupDocker() })
	if dockerErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("Docker is needed in CI: %v", dockerErr)
		}
		t.Skipf("no Docker daemon: %v", dockerErr)
	}
	return dockerCli
}

func setupDocker() error {
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		return err
	}
	dockerCli = cli
	reapStale(ctx)
	dir, err := os.MkdirTemp("", "dockerproxy-test")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "testserver")
	if err := goBuild(bin, "./internal/testserver"); err != nil {
		return err
	}
	serverImage = prefix + ":base"
	return buildImage(serverImage, map[string]string{
		"Dockerfile": "FROM scratch\nCOPY testserver /testserver\nENTRYPOINT [\"/testserver\"]\n",
	}, map[string]string{"testserver": bin})
}

// reapStale removes the containers and images of earlier test runs whose
// process is gone: they were killed before their clean-up ran.
func reapStale(ctx context.Context) {
	// Only this host's (this PID namespace's) runs: a process of another
	// one is not in our /proc, and may well be alive.
	host, _ := os.Hostname()
	gone := func(labels map[string]string) bool {
		h, pid, ok := strings.Cut(labels[pidLabel], "/")
		if !ok || h != host || labels[pidLabel] == ownPID {
			return false
		}
		if _, err := strconv.Atoi(pid); err != nil {
			return false
		}
		_, err := os.Stat("/proc/" + pid)
		return os.IsNotExist(err)
	}
	f := filters.NewArgs(filters.Arg("label", pidLabel))
	ctrs, _ := dockerCli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	for _, c := range ctrs {
		if gone(c.Labels) {
			_ = dockerCli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
	// Intermediate images too, newest (the children) first.
	imgs, _ := dockerCli.ImageList(ctx, image.ListOptions{All: true, Filters: f})
	slices.SortFunc(imgs, func(a, b image.Summary) int { return cmp.Compare(b.Created, a.Created) })
	for _, img := range imgs {
		if gone(img.Labels) {
			_, _ = dockerCli.ImageRemove(ctx, img.ID, image.RemoveOptions{Force: true, PruneChildren: true})
		}
	}
}

// goBuild builds a static binary of pkg.
func goBuild(out, pkg string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// buildImage builds an image named ref from a context of inline files and
// files copied from disk, with the classic builder (no registry, no
// BuildKit needed).
func buildImage(ref string, inline, files map[string]string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(name string, data []byte, mode int64) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data))}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for name, text := range inline {
		if err := add(name, []byte(text), 0o644); err != nil {
			return err
		}
	}
	for name, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := add(name, data, 0o755); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	trackImage(ref)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := dockerCli.ImageBuild(ctx, &buf, build.ImageBuildOptions{
		Tags: []string{ref}, Remove: true, ForceRemove: true, Version: build.BuilderV1,
		Labels: map[string]string{testLabel: runID, pidLabel: ownPID},
	})
	if err != nil {
		return fmt.Errorf("build %s: %w", ref, err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var msg struct{ Error string }
		if err := dec.Decode(&msg); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("build %s: %w", ref, err)
		}
		if msg.Error != "" {
			return fmt.Errorf("build %s: %s", ref, msg.Error)
		}
	}
}

func trackImage(ref string) {
	imagesMu.Lock()
	defer imagesMu.Unlock()
	imagesToDrop = append(imagesToDrop, ref)
}

func cleanupImages() {
	if dockerCli == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	imagesMu.Lock()
	defer imagesMu.Unlock()
	// Newest first: per-test tags before the base image they share.
	for i := len(imagesToDrop) - 1; i >= 0; i-- {
		_, _ = dockerCli.ImageRemove(ctx, imagesToDrop[i], image.RemoveOptions{Force: true, PruneChildren: true})
	}
}

var nonName = regexp.MustCompile(`[^a-z0-9]+`)

// newTag gives the test an image tag of its own for the test server
// image, so that no proxy under test can touch another test's containers.
func newTag(t testing.TB, suffix string) string {
	t.Helper()
	cli := needDocker(t)
	name := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 60 {
		name = name[:60]
	}
	ref := prefix + "-" + name + ":" + suffix
	if err := cli.ImageTag(context.Background(), serverImage, ref); err != nil {
		t.Fatalf("tag %s: %v", ref, err)
	}
	t.Cleanup(func() {
		_, _ = cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	return ref
}

// testCtr is a container a test started.
type testCtr struct {
	id   string
	ip   netip.Addr
	host string // its hostname, which the test server answers with
}

func (c testCtr) short() string { return shortID(c.id) }

var ctrSeq struct {
	sync.Mutex
	n int
}

// startCtr runs the test server from ref with args and removes it when the
// test ends, whatever the outcome.
func startCtr(t testing.TB, ref string, args ...string) testCtr {
	t.Helper()
	return startCtrWith(t, &container.Config{Image: ref, Cmd: args}, &container.HostConfig{})
}

func startCtrWith(t testing.TB, cfg *container.Config, host *container.HostConfig) testCtr {
	t.Helper()
	cli := needDocker(t)
	ctx := context.Background()
	ctrSeq.Lock()
	ctrSeq.n++
	name := fmt.Sprintf("%s-%d", prefix, ctrSeq.n)
	ctrSeq.Unlock()
	if cfg.Labels == nil {
		cfg.Labels = map[string]string{}
	}
	cfg.Labels[testLabel] = runID
	cfg.Labels[pidLabel] = ownPID
	created, err := cli.ContainerCreate(ctx, cfg, host, nil, nil, name)
	if err != nil {
		t.Fatalf("create %s: %v", cfg.Image, err)
	}
	t.Cleanup(func() { removeCtr(created.ID) })
	if err := cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	c := testCtr{id: created.ID}
	info, err := cli.ContainerInspect(ctx, created.ID)
	if err != nil {
		t.Fatalf("inspect %s: %v", name, err)
	}
	c.host = info.Config.Hostname
	if ip, _, _, err := containerIP(info.NetworkSettings, ""); err == nil {
		c.ip = ip
	}
	return c
}

func removeCtr(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = dockerCli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true})
}

// ctrExists reports whether the container is still there (running or not).
func ctrExists(t testing.TB, id string) bool {
	t.Helper()
	_, err := dockerCli.ContainerInspect(context.Background(), id)
	if cerrdefs.IsNotFound(err) {
		return false
	}
	if err != nil {
		t.Fatalf("inspect %s: %v", shortID(id), err)
	}
	return true
}

func ctrRunning(t testing.TB, id string) bool {
	t.Helper()
	c, err := dockerCli.ContainerInspect(context.Background(), id)
	return err == nil && c.State != nil && c.State.Running
}

// eventually polls cond every 20ms until it holds, failing the test after
// timeout.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: still not %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testProxy is the proxy running in process for one test.
type testProxy struct {
	addrs []string // 127.0.0.1:port per cfg.ports entry
	logs  *logBuffer
	stop  func()
}

// testConfig is a config with short test timings.
func testConfig(tag string, ports ...portMap) config {
	return config{
		tag:           tag,
		ports:         ports,
		statusTimeout: 10 * time.Second,
		grace:         time.Second,
		retire:        retireRemove,
		shutdown:      time.Second,
		replayBytes:   defaultReplayBytes,
	}
}

// startProxy runs serve on fresh 127.0.0.1 listeners until the test ends.
func startProxy(t testing.TB, cfg config) *testProxy {
	t.Helper()
	return startProxyWith(t, cfg, needDocker(t))
}

func startProxyWith(t testing.TB, cfg config, docker dockerAPI) *testProxy {
	t.Helper()
	p := &testProxy{logs: &logBuffer{}}
	var lns []*net.TCPListener
	for range cfg.ports {
		ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		p.addrs = append(p.addrs, ln.Addr().String())
	}
	log := slog.New(slog.NewJSONHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, nil, cfg, docker, lns, log) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("serve: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("serve did not return 30s after its context ended")
			}
		})
	}
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("proxy log:\n%s", p.logs.String())
		}
	})
	return p
}

// logBuffer collects the proxy's JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// lines returns the decoded log lines with the message msg whose
// attributes include every key/value pair of attrs.
func (l *logBuffer) lines(msg string, attrs ...string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
next:
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) != nil || m["msg"] != msg {
			continue
		}
		for i := 0; i+1 < len(attrs); i += 2 {
			if fmt.Sprint(m[attrs[i]]) != attrs[i+1] {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// waitLog waits until a line with msg and attrs has been logged.
func (l *logBuffer) waitLog(t testing.TB, timeout time.Duration, msg string, attrs ...string) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, timeout, fmt.Sprintf("logged %q %v", msg, attrs), func() bool {
		if ls := l.lines(msg, attrs...); len(ls) > 0 {
			found = ls[0]
			return true
		}
		return false
	})
	return found
}

// httpGet fetches path through addr on a new connection and returns the
// body with surrounding space trimmed.
func httpGet(addr, path string) (string, error) {
	c := http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return strings.TrimSpace(string(b)), nil
}

// whoAnswers returns the hostname of the container that serves addr now.
func whoAnswers(t testing.TB, addr string) string {
	t.Helper()
	host, err := httpGet(addr, "/")
	if err != nil {
		t.Fatalf("GET through %s: %v", addr, err)
	}
	return host
}

// waitServed waits until the proxy at addr forwards new connections to c.
func waitServed(t testing.TB, addr string, c testCtr, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "served by "+c.host, func() bool {
		host, err := httpGet(addr, "/")
		return err == nil && host == c.host
	})
}
