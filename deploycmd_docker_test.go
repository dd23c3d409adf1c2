package main

// docker-proxy deploy and the CI example against a proxy binary and the
// real daemon: the copy serves with the user's settings, a deploy of a
// build that never becomes ready fails and leaves the serving container
// alone.

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

// ctrNamed returns the containers whose name starts with name, and removes
// them when the test ends.
func ctrsNamed(t testing.TB, name string) []container.Summary {
	t.Helper()
	list, err := dockerCli.ContainerList(context.Background(), container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("name", "^/"+name)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func removeNamedAtEnd(t testing.TB, name string) {
	t.Cleanup(func() {
		for _, c := range ctrsNamed(t, name) {
			removeCtr(c.ID)
		}
	})
}

// TestDockerDeployCommand: deploy copies the serving container (env, a
// named volume, a label, a user-defined network with an alias) from the
// tag's new build, waits, and exits 0 once the old one is gone; -dry-run
// creates nothing; a build that never becomes ready exits 1, its container
// is removed and the copy that served goes on serving.
func TestDockerDeployCommand(t *testing.T) {
	s := newCloneSetup(t)
	removeNamedAtEnd(t, s.base+"-web-")
	p := startCtlProxy(t, s.tag, "-network", s.net, "-grace_period", "1s", "-status_timeout", "4s")
	eventually(t, 10*time.Second, "the old container serves", func() bool {
		st := p.status(t)
		return st.Serving != nil && st.Serving.ID == s.old.id
	})

	dry := runCmd(t, time.Minute, "deploy", "-control", p.control, "-dry-run", "-env", "EXTRA=1")
	wantCode(t, dry, exitOK, "deploy -dry-run")
	for _, want := range []string{s.vol, s.net, "FOO=bar", "EXTRA=1"} {
		if !strings.Contains(dry.stdout, want) {
			t.Errorf("deploy -dry-run does not name %s:\n%s", want, dry.stdout)
		}
	}
	if n := len(ctrsNamed(t, s.base+"-web-")); n != 0 {
		t.Fatalf("deploy -dry-run created %d containers", n)
	}

	r := runCmd(t, 2*time.Minute, "deploy", "-control", p.control, "-env", "EXTRA=1")
	t.Logf("deploy's stderr:\n%s", r.stderr)
	wantCode(t, r, exitOK, "deploy")
	if ctrExists(t, s.old.id) {
		t.Errorf("deploy exited 0 while the old container %s still exists", s.old.short())
	}
	news := ctrsNamed(t, s.base+"-web-")
	if len(news) != 1 {
		t.Fatalf("containers named %s-web-*: %d; want the one copy", s.base, len(news))
	}
	nu, err := dockerCli.ContainerInspect(context.Background(), news[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if nu.Image != s.v2ID {
		t.Errorf("the copy runs image %s; want the new build %s", nu.Image, s.v2ID)
	}
	for _, kv := range []string{"FOO=bar", "EXTRA=1", "MODE=new"} {
		if !slices.Contains(nu.Config.Env, kv) {
			t.Errorf("the copy's env %q lacks %s", nu.Config.Env, kv)
		}
	}
	if nu.Config.Labels["clone.role"] != "web" {
		t.Errorf("the copy's labels %v lack clone.role=web", nu.Config.Labels)
	}
	mounted := false
	for _, m := range nu.Mounts {
		mounted = mounted || (m.Name == s.vol && m.Destination == "/data")
	}
	if !mounted {
		t.Errorf("the copy's mounts %+v lack volume %s at /data", nu.Mounts, s.vol)
	}
	if ep := nu.NetworkSettings.Networks[s.net]; ep == nil || !slices.Contains(ep.Aliases, "web-alias") {
		t.Errorf("the copy is not on %s with alias web-alias: %+v", s.net, nu.NetworkSettings.Networks)
	}
	if st := p.status(t); st.Serving == nil || st.Serving.ID != nu.ID {
		t.Errorf("after deploy the proxy serves %+v; want the copy %s", st.Serving, shortID(nu.ID))
	}

	// A new build that never becomes ready.
	df := "FROM " + serverImage + "\nCMD [\"-fail_status\"]\n"
	if err := buildImage(s.tag, map[string]string{"Dockerfile": df}, nil); err != nil {
		t.Fatal(err)
	}
	r = runCmd(t, 2*time.Minute, "deploy", "-control", p.control)
	t.Logf("failed deploy's stderr:\n%s", r.stderr)
	wantCode(t, r, exitFailed, "deploy of a build never ready")
	if !strings.Contains(r.stderr, "was ignored: not ready within -status_timeout 4s") {
		t.Errorf("stderr does not say why the deploy failed")
	}
	if left := ctrsNamed(t, s.base+"-web-"); len(left) != 1 || left[0].ID != nu.ID {
		t.Errorf("after the failed deploy: %d containers; want only the copy that serves", len(left))
	}
	if st := p.status(t); st.Serving == nil || st.Serving.ID != nu.ID {
		t.Errorf("after the failed deploy the proxy serves %+v; want %s still", st.Serving, shortID(nu.ID))
	}

	// An image the proxy does not serve, and none at all: usage errors.
	wantCode(t, runCmd(t, time.Minute, "deploy", "-control", p.control, "-image", serverImage), exitUsage, "deploy -image of another tag")
	wantCode(t, runCmd(t, time.Minute, "deploy", "-control", p.control, "-image", s.tag+"-none"), exitUsage, "deploy -image that does not exist")
}

// TestDockerCIScript: examples/ci/deploy.sh builds with docker build and
// deploys with docker-proxy deploy; it exits 0 on a good build and 1, with
// the reason, on one that never becomes ready.
func TestDockerCIScript(t *testing.T) {
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("no docker CLI")
	}
	tag := newTag(t, "latest")
	name := prefix + "-ciweb"
	removeNamedAtEnd(t, name)
	old := startCtr(t, tag)
	if err := dockerCli.ContainerRename(context.Background(), old.id, name); err != nil {
		t.Fatal(err)
	}
	p := startCtlProxy(t, tag, "-grace_period", "1s", "-status_timeout", "4s")
	waitServed(t, p.addr, old, 10*time.Second)

	script, err := filepath.Abs("examples/ci/deploy.sh")
	if err != nil {
		t.Fatal(err)
	}
	run := func(dockerfile string) cmdResult {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile+"LABEL "+testLabel+"="+runID+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", script, dir)
		cmd.Env = append(os.Environ(), "IMAGE="+tag, "DOCKER_PROXY_CONTROL="+p.control,
			"PATH="+filepath.Dir(proxyBinary(t))+":"+os.Getenv("PATH"),
			"DOCKER_BUILDKIT=0") // the legacy builder: no buildx here
		out, err := cmd.CombinedOutput()
		if img, ierr := dockerCli.ImageInspect(context.Background(), tag); ierr == nil {
			trackImage(img.ID) // removed at the end, once untagged by the next build
		}
		return cmdResult{stderr: string(out), code: processExit(err)}
	}

	r := run("FROM " + serverImage + "\nENV MODE=ci\n")
	t.Logf("deploy.sh:\n%s", r.stderr)
	wantCode(t, r, exitOK, "examples/ci/deploy.sh of a good build")
	if ctrExists(t, old.id) {
		t.Errorf("the old container %s still exists", old.short())
	}
	news := ctrsNamed(t, name+"-")
	if len(news) != 1 || whoAnswers(t, p.addr) != news[0].ID[:12] {
		t.Fatalf("after deploy.sh: copies %+v; want one, answering", news)
	}

	r = run("FROM " + serverImage + "\nCMD [\"-fail_status\"]\n")
	t.Logf("deploy.sh of a build never ready:\n%s", r.stderr)
	wantCode(t, r, exitFailed, "examples/ci/deploy.sh of a build never ready")
	if !strings.Contains(r.stderr, "was ignored") || !strings.Contains(r.stderr, "the previous container still serves") {
		t.Errorf("deploy.sh's output does not say why, nor what serves")
	}
	if got := whoAnswers(t, p.addr); got != news[0].ID[:12] {
		t.Errorf("after the failed deploy %s answers; want %s", got, news[0].ID[:12])
	}
}
