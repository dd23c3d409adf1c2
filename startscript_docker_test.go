package main

// The start script rendered from config/deploy/start.sh.erb, run against
// a fake docker command that records its arguments: the settings reach the
// container as docker run -e DOCKER_PROXY_* variables, exactly, whatever
// characters they hold. (TestDockerStartScriptFromERB runs it for real.)

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// needERB returns the erb command, skipping the test without it except in CI.
func needERB(t *testing.T) string {
	t.Helper()
	erb, err := exec.LookPath("erb")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("erb is needed in CI (Debian package ruby)")
		}
		t.Skip("erb not installed (Debian package ruby)")
	}
	return erb
}

// renderAndRun renders the template with vars and env, runs the script
// with a fake docker first on PATH, and returns the arguments of each
// docker invocation.
func renderAndRun(t *testing.T, env []string, vars ...string) [][]string {
	t.Helper()
	erb := needERB(t)
	dir := t.TempDir()
	render := exec.Command(erb, append(append([]string{"-T", "-"}, vars...), "config/deploy/start.sh.erb")...)
	render.Env = append(cleanEnv(), env...)
	out, err := render.Output()
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	script := filepath.Join(dir, "start.sh")
	if err := os.WriteFile(script, out, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	calls := filepath.Join(dir, "calls")
	for _, d := range []string{bin, calls} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fake := "#!/usr/bin/env bash\nn=$(ls \"$CALLS\" | wc -l)\nprintf '%s\\0' \"$@\" > \"$CALLS/$n\"\n"
	if err := os.WriteFile(filepath.Join(bin, "docker"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	run := exec.Command("bash", script)
	run.Env = append(cleanEnv(), "PATH="+bin+":"+os.Getenv("PATH"), "CALLS="+calls)
	if b, err := run.CombinedOutput(); err != nil {
		t.Fatalf("start script: %v\n%s\n%s", err, b, out)
	}
	entries, err := os.ReadDir(calls)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]string
	for i := range entries {
		b, err := os.ReadFile(filepath.Join(calls, strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"))
	}
	return got
}

// runEnv returns the -e values of a docker run invocation.
func runEnv(args []string) []string {
	var env []string
	for i, a := range args {
		if a == "-e" && i+1 < len(args) {
			env = append(env, args[i+1])
		}
	}
	return env
}

func TestDockerStartScriptArgs(t *testing.T) {
	tricky := `:80/status?a=1&b='q' "x" $HOME;echo`
	calls := renderAndRun(t, []string{"DOCKER_PROXY_GRACE_PERIOD=45s"},
		"name=web proxy", "image=registry.local/docker-proxy:v2", "address=127.0.0.1",
		"ports=80,443=3000", "tag=my/app:v1", "status_url="+tricky)
	if len(calls) != 2 || calls[0][0] != "rm" || calls[1][0] != "run" {
		t.Fatalf("docker calls %q; want rm, then run", calls)
	}
	if !slices.Contains(calls[0], "web proxy") {
		t.Errorf("rm %q; want the name %q as one argument", calls[0], "web proxy")
	}
	run := calls[1]
	if last := run[len(run)-1]; last != "registry.local/docker-proxy:v2" {
		t.Errorf("docker run ends with %q; want the image, with no flag after it", last)
	}
	wantEnv := []string{
		"DOCKER_PROXY_DOCKER=unix:///var/run/docker.sock",
		"DOCKER_PROXY_PORTS=80,443=3000",
		"DOCKER_PROXY_TAG=my/app:v1",
		"DOCKER_PROXY_STATUS_URL=" + tricky,
		"DOCKER_PROXY_STATUS_TIMEOUT=10s", // the default
		"DOCKER_PROXY_GRACE_PERIOD=45s",   // from the environment at render time
	}
	if got := runEnv(run); !slices.Equal(got, wantEnv) {
		t.Errorf("docker run -e: got %q; want %q", got, wantEnv)
	}
	for _, want := range [][2]string{
		{"-p", "127.0.0.1:80:80"}, {"-p", "127.0.0.1:443:443"},
		{"-v", "/var/run/docker.sock:/var/run/docker.sock"}, {"--name", "web proxy"},
	} {
		if !pairIn(run, want[0], want[1]) {
			t.Errorf("docker run %q lacks %s %q", run, want[0], want[1])
		}
	}
	for _, a := range run {
		if a == "-ports" || a == "-tag" || a == "-status_url" || a == "-grace_period" {
			t.Errorf("docker run %q still passes the flag %s", run, a)
		}
	}
}

// pairIn tells whether opt is followed by value somewhere in args.
func pairIn(args []string, opt, value string) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt && args[i+1] == value {
			return true
		}
	}
	return false
}

// TestDockerStartScriptOptional: without status_url no variable is
// passed for it; without ports the template refuses to render.
func TestDockerStartScriptOptional(t *testing.T) {
	calls := renderAndRun(t, nil, "ports=8080", "tag=web")
	run := calls[len(calls)-1]
	for _, kv := range runEnv(run) {
		if strings.HasPrefix(kv, "DOCKER_PROXY_STATUS_URL=") {
			t.Errorf("docker run passes %q with no status_url given", kv)
		}
	}
	if !slices.Contains(runEnv(run), "DOCKER_PROXY_PORTS=8080") || run[len(run)-1] != "docker-proxy:latest" {
		t.Errorf("docker run %q; want DOCKER_PROXY_PORTS=8080 and the default image last", run)
	}

	erb := needERB(t)
	render := exec.Command(erb, "-T", "-", "tag=web", "config/deploy/start.sh.erb")
	render.Env = cleanEnv()
	out, err := render.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ports is required") {
		t.Errorf("rendered with no ports: %v\n%s", err, out)
	}
}
