// Demo runs a live zero-downtime deploy on the local Docker daemon: it
// builds a small service image FROM scratch, starts version 1, starts
// docker-proxy on 127.0.0.1:8080, keeps a bounded stream of requests going,
// deploys version 2, and reports who answered and how many requests failed.
// It cleans up after itself and ends by itself.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	tag     = "docker-proxy-demo:latest"
	label   = "docker-proxy-demo"
	listen  = "127.0.0.1:8080"
	workers = 8
	maxReqs = 200_000 // the load stops by itself, at the latest here
	maxLoad = 40 * time.Second
)

func main() {
	proxyBin := flag.String("proxy", "bin/docker-proxy", "docker-proxy binary")
	serverBin := flag.String("server", "bin/testserver", "test server binary (static)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	err := demo(ctx, *proxyBin, *serverBin)
	cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context, proxyBin, serverBin string) error {
	cleanup() // leftovers of an interrupted run
	step("build the service image %s (version 1) FROM scratch", tag)
	if err := buildImage(ctx, serverBin, "1"); err != nil {
		return err
	}
	step("start version 1")
	v1, err := docker(ctx, "run", "-d", "--label", label, tag, "-ready_after", "500ms")
	if err != nil {
		return err
	}

	step("start docker-proxy on %s for %s", listen, tag)
	proxy := exec.CommandContext(ctx, proxyBin, "-address", "127.0.0.1", "-ports", "8080=80",
		"-tag", tag, "-status_url", ":80/status", "-grace_period", "3s")
	proxy.Stdout = &lineWriter{prefix: "  proxy| "}
	proxy.Stderr = proxy.Stdout
	if err := proxy.Start(); err != nil {
		return err
	}
	defer func() {
		_ = proxy.Process.Signal(syscall.SIGTERM)
		_ = proxy.Wait()
	}()
	before, err := waitAnswer(ctx, func(s string) bool { return strings.HasPrefix(s, "version 1 ") })
	if err != nil {
		return fmt.Errorf("version 1 never answered through the proxy: %w", err)
	}

	step("keep %d clients sending requests, each on a new connection", workers)
	l := startLoad(ctx)
	time.Sleep(time.Second) // let the load run before the deploy: a demo pause, not synchronisation

	step("build version 2 under the same tag and start it (ready after 1s)")
	if err := buildImage(ctx, serverBin, "2"); err != nil {
		return err
	}
	if _, err := docker(ctx, "run", "-d", "--label", label, tag, "-ready_after", "1s"); err != nil {
		return err
	}
	after, err := waitAnswer(ctx, func(s string) bool { return strings.HasPrefix(s, "version 2 ") })
	if err != nil {
		return fmt.Errorf("version 2 never answered through the proxy: %w", err)
	}
	step("wait for the grace period to end and version 1 to be removed")
	for running(ctx, v1) {
		if ctx.Err() != nil {
			return errors.New("version 1 was not removed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ok, failed, firstErr := l.stop()

	fmt.Println()
	fmt.Println("before the deploy:", before)
	fmt.Println("after the deploy: ", after)
	fmt.Printf("requests: %d, failed: %d\n", ok+failed, failed)
	if failed > 0 {
		return fmt.Errorf("%d requests failed, first: %v", failed, firstErr)
	}
	fmt.Println("zero-downtime deploy: no request failed")
	return nil
}

func step(format string, args ...any) {
	fmt.Printf("==> "+format+"\n", args...)
}

func buildImage(ctx context.Context, serverBin, version string) error {
	dir, err := os.MkdirTemp("", "docker-proxy-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile(serverBin)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "server"), data, 0o755); err != nil {
		return err
	}
	df := fmt.Sprintf("FROM scratch\nCOPY server /server\nENV VERSION=%s\nLABEL %s=1\nENTRYPOINT [\"/server\"]\n", version, label)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return err
	}
	_, err = docker(ctx, "build", "-q", "-t", tag, dir)
	return err
}

func docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("docker %s: %v: %s", args[0], err, ee.Stderr)
		}
		return "", fmt.Errorf("docker %s: %v", args[0], err)
	}
	return strings.TrimSpace(string(out)), nil
}

func running(ctx context.Context, id string) bool {
	out, err := docker(ctx, "inspect", "-f", "{{.State.Running}}", id)
	return err == nil && out == "true"
}

// cleanup removes every container and image the demo made.
func cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids, _ := docker(ctx, "ps", "-aq", "--filter", "label="+label)
	if ids != "" {
		_, _ = docker(ctx, append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	// By label: version 1 loses its tag to version 2 but is still ours.
	imgs, _ := docker(ctx, "images", "-q", "--filter", "label="+label)
	if imgs != "" {
		_, _ = docker(ctx, append([]string{"rmi", "-f"}, strings.Fields(imgs)...)...)
	}
}

var client = &http.Client{
	Timeout:   5 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
}

func get() (string, error) {
	resp, err := client.Get("http://" + listen + "/version")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return strings.TrimSpace(string(b)), nil
}

func waitAnswer(ctx context.Context, want func(string) bool) (string, error) {
	for {
		s, err := get()
		if err == nil && want(s) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// load is the bounded request stream.
type load struct {
	ok, failed atomic.Int64
	firstErr   atomic.Value
	done       chan struct{}
	wg         sync.WaitGroup
}

func startLoad(ctx context.Context) *load {
	l := &load{done: make(chan struct{})}
	deadline := time.Now().Add(maxLoad)
	for range workers {
		l.wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) && l.ok.Load()+l.failed.Load() < maxReqs {
				select {
				case <-l.done:
					return
				default:
				}
				if _, err := get(); err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err)
				} else {
					l.ok.Add(1)
				}
			}
		})
	}
	return l
}

func (l *load) stop() (ok, failed int64, first any) {
	close(l.done)
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load(), l.firstErr.Load()
}

// lineWriter prints a child's output line by line, each with a prefix.
type lineWriter struct {
	prefix string
	buf    []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		fmt.Print(w.prefix, string(w.buf[:i+1]))
		w.buf = w.buf[i+1:]
	}
}
