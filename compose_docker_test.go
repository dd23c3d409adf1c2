package main

// examples/compose end to end, with the real docker-compose: the proxy
// runs as a compose service from the project's own image, selects the web
// service by label, and deploy.sh swaps web containers under load.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
)

const composeDir = "examples/compose"

// needCompose returns the path of docker-compose, skipping the test when
// it is not installed, except in CI (CI set), where that is a failure.
func needCompose(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("docker-compose")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("docker-compose is needed in CI (Debian package docker-compose)")
		}
		t.Skip("docker-compose not installed (Debian package docker-compose): skipping the compose example")
	}
	return path
}

// composeProject is one run of examples/compose under its own project
// name.
type composeProject struct {
	bin, name string
	env       []string
}

// run runs docker-compose with args in the example's folder.
func (p composeProject) run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := p.command(append([]string{"-p", p.name}, args...)...)
	if err != nil {
		t.Fatalf("docker-compose %v: %v\n%s", args, err, out)
	}
	return out
}

func (p composeProject) command(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.bin, args...)
	return p.exec(cmd)
}

func (p composeProject) exec(cmd *exec.Cmd) (string, error) {
	cmd.Dir = composeDir
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// ctrs lists the project's containers of service, running or not.
func (p composeProject) ctrs(t testing.TB, service string) []container.Summary {
	t.Helper()
	list, err := dockerCli.ContainerList(context.Background(), container.ListOptions{
		All: true,
		Filters: filters.NewArgs(
			filters.Arg("label", "com.docker.compose.project="+p.name),
			filters.Arg("label", "com.docker.compose.service="+service),
		),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// onlyWeb returns the project's one web container, as a testCtr whose host
// is the hostname it answers with (compose leaves it the short id).
func (p composeProject) onlyWeb(t testing.TB) testCtr {
	t.Helper()
	list := p.ctrs(t, "web")
	if len(list) != 1 {
		var ids []string
		for _, c := range list {
			ids = append(ids, shortID(c.ID)+" "+c.State)
		}
		t.Fatalf("web containers %v; want exactly one", ids)
	}
	info, err := dockerCli.ContainerInspect(context.Background(), list[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	return testCtr{id: info.ID, host: info.Config.Hostname}
}

// cleanup takes the project down, then removes by force whatever still
// carries its label: containers, then networks.
func (p composeProject) cleanup(t testing.TB) {
	if t.Failed() {
		out, _ := p.command("-p", p.name, "logs", "--no-color", "--tail", "200")
		t.Logf("docker-compose logs:\n%s", out)
	}
	if out, err := p.command("-p", p.name, "down", "--remove-orphans", "--timeout", "1"); err != nil {
		t.Logf("docker-compose down: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	project := filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+p.name))
	if list, err := dockerCli.ContainerList(ctx, container.ListOptions{All: true, Filters: project}); err == nil {
		for _, c := range list {
			_ = dockerCli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
	}
	if nets, err := dockerCli.NetworkList(ctx, network.ListOptions{Filters: project}); err == nil {
		for _, n := range nets {
			_ = dockerCli.NetworkRemove(ctx, n.ID)
		}
	}
}

// TestDockerComposeExample: docker-compose up -d starts web and the proxy;
// deploy.sh starts a second web container, the proxy swaps to it and
// removes the first, and no request fails meanwhile.
func TestDockerComposeExample(t *testing.T) {
	bin := needCompose(t)
	webImage := newTag(t, "web")
	proxyImg := proxyImage(t)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	name := prefix + "-compose"
	p := composeProject{bin: bin, name: name, env: append(os.Environ(),
		"COMPOSE_PROJECT_NAME="+name,
		"WEB_IMAGE="+webImage,
		"PROXY_IMAGE="+proxyImg,
		"PROXY_ADDRESS=127.0.0.1",
		"PROXY_PORT="+strconv.Itoa(port),
		"WEB_STATUS_URL=:80/status",
		"GRACE_PERIOD=2s",
	)}
	t.Cleanup(func() { p.cleanup(t) })

	p.run(t, "up", "-d")
	proxies := p.ctrs(t, "proxy")
	if len(proxies) != 1 || proxies[0].Image != proxyImg {
		t.Fatalf("proxy containers %+v; want one of %s", proxies, proxyImg)
	}
	old := p.onlyWeb(t)
	waitServed(t, addr, old, 60*time.Second)

	l := startLoad(t, addr, 4, 1)
	eventually(t, 10*time.Second, "load flowing", func() bool { return l.ok.Load() > 20 })
	deploy, err := filepath.Abs(filepath.Join(composeDir, "deploy.sh"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := p.exec(exec.CommandContext(ctx, "sh", deploy)); err != nil {
		t.Fatalf("deploy.sh: %v\n%s", err, out)
	} else {
		t.Logf("deploy.sh:\n%s", out)
	}

	nu := p.onlyWeb(t)
	if nu.id == old.id {
		t.Fatalf("after deploy.sh the old web container %s is the only one", old.short())
	}
	if ctrExists(t, old.id) {
		t.Errorf("the old web container %s still exists", old.short())
	}
	if host := whoAnswers(t, addr); host != nu.host {
		t.Errorf("answered by %s; want the new web container %s", host, nu.host)
	}
	ok := l.expectNoFailure(t)
	if proxies := p.ctrs(t, "proxy"); len(proxies) != 1 || proxies[0].State != "running" {
		t.Errorf("after the deploy, proxy containers %+v; want the one, running", proxies)
	}
	t.Logf("%d requests through the deploy, 0 failed", ok)

	// A deploy of an image that never becomes ready fails: deploy.sh
	// exits 1 with wait's reason, removes the new container, and the one
	// that served goes on serving.
	bad := prefix + "-compose-bad:v1"
	if err := buildImage(bad, map[string]string{"Dockerfile": "FROM " + serverImage + "\nCMD [\"-fail_status\"]\n"}, nil); err != nil {
		t.Fatal(err)
	}
	p.env = append(p.env, "WEB_IMAGE="+bad)
	out, err := p.exec(exec.CommandContext(ctx, "sh", deploy))
	t.Logf("deploy.sh of %s:\n%s", bad, out)
	if code := processExit(err); code != 1 {
		t.Fatalf("deploy.sh of an image never ready: %v; want exit status 1", err)
	}
	if !strings.Contains(out, "was ignored: not ready within -status_timeout") || !strings.Contains(out, "500 Internal Server Error") {
		t.Errorf("deploy.sh's output does not give wait's reason")
	}
	if still := p.onlyWeb(t); still.id != nu.id {
		t.Errorf("after the failed deploy, web container %s; want %s still the only one", still.short(), nu.short())
	}
	if host := whoAnswers(t, addr); host != nu.host {
		t.Errorf("after the failed deploy, answered by %s; want %s", host, nu.host)
	}
}
