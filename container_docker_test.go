package main

// The proxy as people run it: its own FROM scratch image, with docker.sock
// mounted, started by hand or by the start script rendered from
// config/deploy/start.sh.erb.

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
)

var (
	proxyImageOnce sync.Once
	proxyImageRef  string
	proxyImageErr  error
)

// proxyImage builds the project's own image, from the repository's
// Dockerfile and a static binary, as `make image` does.
func proxyImage(t testing.TB) string {
	t.Helper()
	needDocker(t)
	proxyImageOnce.Do(func() {
		dir := t.TempDir()
		bin := filepath.Join(dir, "docker-proxy")
		if proxyImageErr = goBuild(bin, "."); proxyImageErr != nil {
			return
		}
		var df []byte
		if df, proxyImageErr = os.ReadFile("Dockerfile"); proxyImageErr != nil {
			return
		}
		proxyImageRef = prefix + "-proxy:latest"
		proxyImageErr = buildImage(proxyImageRef, map[string]string{"Dockerfile": string(df)},
			map[string]string{"bin/docker-proxy": bin})
	})
	if proxyImageErr != nil {
		t.Fatalf("build the docker-proxy image: %v", proxyImageErr)
	}
	return proxyImageRef
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestDockerProxyInItsOwnContainer(t *testing.T) {
	img := proxyImage(t)
	tag := newTag(t, "v1")
	svc := startCtr(t, tag)
	port := freePort(t)
	portKey := nat.Port("80/tcp")
	startCtrWith(t, &container.Config{
		Image:        img,
		Cmd:          []string{"-ports", "80", "-tag", tag, "-grace_period", "1s"},
		ExposedPorts: nat.PortSet{portKey: {}},
	}, &container.HostConfig{
		Binds:        []string{"/var/run/docker.sock:/var/run/docker.sock"},
		PortBindings: nat.PortMap{portKey: {{HostIP: "127.0.0.1", HostPort: strconv.Itoa(port)}}},
	})
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitServed(t, addr, svc, 20*time.Second)

	nu := startCtr(t, tag)
	waitServed(t, addr, nu, 20*time.Second)
	eventually(t, 20*time.Second, "old container removed", func() bool { return !ctrExists(t, svc.id) })
}

func TestDockerStartScriptFromERB(t *testing.T) {
	erb, err := exec.LookPath("erb")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("erb is needed in CI (Debian package ruby)")
		}
		t.Skip("erb not installed (Debian package ruby)")
	}
	img := proxyImage(t)
	tag := newTag(t, "v1")
	svc := startCtr(t, tag)
	port := freePort(t)
	name := prefix + "-erb-proxy"
	t.Cleanup(func() { removeCtr(name) })

	script := filepath.Join(t.TempDir(), "start.sh")
	render := exec.Command(erb, "-T", "-",
		"name="+name, "image="+img, "address=127.0.0.1",
		"ports="+strconv.Itoa(port)+"=80", "tag="+tag,
		"status_url=:80/status", "status_timeout=5s", "grace_period=1s",
		"config/deploy/start.sh.erb")
	out, err := render.Output()
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	if err := os.WriteFile(script, out, 0o755); err != nil {
		t.Fatal(err)
	}
	// Settings reach the container as DOCKER_PROXY_* variables, not flags.
	for _, want := range []string{"-e DOCKER_PROXY_PORTS=", "-e DOCKER_PROXY_TAG=", "-e DOCKER_PROXY_GRACE_PERIOD="} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the rendered script lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), " -ports ") || strings.Contains(string(out), " -tag ") {
		t.Errorf("the rendered script still passes flags:\n%s", out)
	}
	if b, err := exec.Command("bash", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s\n%s", err, b, out)
	}
	// Run it twice: the second run replaces the first proxy container.
	for range 2 {
		if b, err := exec.Command("bash", script).CombinedOutput(); err != nil {
			t.Fatalf("start script: %v\n%s\n%s", err, b, out)
		}
	}
	info, err := dockerCli.ContainerInspect(context.Background(), name)
	if err != nil {
		t.Fatalf("the script did not start %s: %v", name, err)
	}
	if !info.State.Running {
		t.Fatalf("%s is not running", name)
	}
	if len(info.Args) != 0 || !slices.Contains(info.Config.Env, "DOCKER_PROXY_PORTS="+strconv.Itoa(port)+"=80") {
		t.Errorf("%s: args %q, env %q; want no args and DOCKER_PROXY_PORTS set", name, info.Args, info.Config.Env)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitServed(t, addr, svc, 20*time.Second)
	nu := startCtr(t, tag)
	waitServed(t, addr, nu, 20*time.Second)
}
