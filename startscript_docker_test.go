package main

// The start script rendered from config/deploy/start.sh.erb, run against
// a fake docker command that records its arguments: the settings reach the
// container as docker create -e DOCKER_PROXY_* variables, exactly, whatever
// characters they hold; a restart runs its steps in the order that keeps
// the gap shortest (published ports) or away (host network). The tests of
// startscript_restart_docker_test.go and TestDockerStartScriptFromERB run
// it for real.

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
// docker invocation. The fake answers as for a host where no proxy
// container runs yet.
func renderAndRun(t *testing.T, env []string, vars ...string) [][]string {
	t.Helper()
	calls, _ := renderAndRunFake(t, env, fakeDocker{}, vars...)
	return calls
}

// fakeDocker is how the fake docker command answers the script.
type fakeDocker struct {
	running bool   // docker inspect NAME: a proxy container runs
	status  string // docker inspect NAME-next: the new one's State.Status
	logs    string // docker logs: the new one's log
}

// renderAndRunFake is renderAndRun with the fake's answers given; it
// returns the script's output too.
func renderAndRunFake(t *testing.T, env []string, fd fakeDocker, vars ...string) ([][]string, string) {
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
	fake := `#!/usr/bin/env bash
n=$(ls "$CALLS" | wc -l)
printf '%s\0' "$@" > "$CALLS/$n"
case "$1 ${3:-}" in
"inspect {{.State.Running}}") echo "$FAKE_RUNNING" ;;
"inspect {{.State.Status}}") echo "$FAKE_STATUS" ;;
esac
if [ "$1" = logs ]; then echo "$FAKE_LOGS" >&2; fi
`
	if err := os.WriteFile(filepath.Join(bin, "docker"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	run := exec.Command("bash", script)
	run.Env = append(cleanEnv(), "PATH="+bin+":"+os.Getenv("PATH"), "CALLS="+calls,
		"FAKE_RUNNING="+strconv.FormatBool(fd.running), "FAKE_STATUS="+fd.status, "FAKE_LOGS="+fd.logs)
	b, err := run.CombinedOutput()
	if err != nil {
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
	return got, string(b)
}

// verbs are the docker subcommands of calls, each with the container it
// names last (create: its --name), e.g. "rm web", "create web-next".
func verbs(calls [][]string) []string {
	var vs []string
	for _, c := range calls {
		v := c[0] + " " + c[len(c)-1]
		if c[0] == "create" {
			v = "create " + valueOf(c, "--name")
		}
		if c[0] == "rename" {
			v = strings.Join(c, " ")
		}
		vs = append(vs, v)
	}
	return vs
}

// valueOf is the value that follows opt in args ("" if none).
func valueOf(args []string, opt string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == opt {
			return args[i+1]
		}
	}
	return ""
}

// call is the first call of the docker subcommand verb.
func call(t *testing.T, calls [][]string, verb string) []string {
	t.Helper()
	for _, c := range calls {
		if c[0] == verb {
			return c
		}
	}
	t.Fatalf("no docker %s among %q", verb, calls)
	return nil
}

// runEnv returns the -e values of a docker create invocation.
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
	// No proxy runs: a plain start.
	want := []string{"inspect web proxy", "rm web proxy", "rm web proxy-next", "create web proxy", "start web proxy"}
	if got := verbs(calls); !slices.Equal(got, want) {
		t.Fatalf("docker calls %q; want %q", got, want)
	}
	run := calls[3]
	if last := run[len(run)-1]; last != "registry.local/docker-proxy:v2" {
		t.Errorf("docker create ends with %q; want the image, with no flag after it", last)
	}
	if got := valueOf(run, "--restart"); got != "unless-stopped" {
		t.Errorf("docker create --restart %q; want unless-stopped", got)
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
		t.Errorf("docker create -e: got %q; want %q", got, wantEnv)
	}
	for _, want := range [][2]string{
		{"-p", "127.0.0.1:80:80"}, {"-p", "127.0.0.1:443:443"},
		{"-v", "/var/run/docker.sock:/var/run/docker.sock"}, {"--name", "web proxy"},
	} {
		if !pairIn(run, want[0], want[1]) {
			t.Errorf("docker create %q lacks %s %q", run, want[0], want[1])
		}
	}
	for _, a := range run {
		if a == "-ports" || a == "-tag" || a == "-status_url" || a == "-grace_period" {
			t.Errorf("docker create %q still passes the flag %s", run, a)
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
	run := call(t, calls, "create")
	for _, kv := range runEnv(run) {
		if strings.HasPrefix(kv, "DOCKER_PROXY_STATUS_URL=") {
			t.Errorf("docker create passes %q with no status_url given", kv)
		}
	}
	if !slices.Contains(runEnv(run), "DOCKER_PROXY_PORTS=8080") || run[len(run)-1] != "docker-proxy:latest" {
		t.Errorf("docker create %q; want DOCKER_PROXY_PORTS=8080 and the default image last", run)
	}
	if slices.Contains(run, "--network") || slices.Contains(runEnv(run), "DOCKER_PROXY_ADDRESS=0.0.0.0") {
		t.Errorf("docker create %q: the default network mode publishes the ports, on the container's own network", run)
	}

	erb := needERB(t)
	render := exec.Command(erb, "-T", "-", "tag=web", "config/deploy/start.sh.erb")
	render.Env = cleanEnv()
	out, err := render.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ports is required") {
		t.Errorf("rendered with no ports: %v\n%s", err, out)
	}
}

// TestDockerStartScriptRestartHost: with network_mode=host and a proxy
// running, the new proxy container starts first, under NAME-next and with
// no restart policy, beside the old one; once it has taken over, the
// script waits for the old one to exit by itself, removes it, and gives
// the new one the name and the restart policy.
func TestDockerStartScriptRestartHost(t *testing.T) {
	calls, out := renderAndRunFake(t, nil,
		fakeDocker{running: true, status: "running", logs: `time=... level=INFO msg="took over from the running proxy"`},
		"name=web", "network_mode=host", "address=127.0.0.1", "ports=80,443=3000", "tag=my/app:v1")
	want := []string{
		"inspect web", "rm web-next", "create web-next", "update web", "start web-next",
		"logs web-next", "inspect web-next", // took over at the first look
		"wait web", "rm web", "rename web-next web", "update web",
	}
	if got := verbs(calls); !slices.Equal(got, want) {
		t.Fatalf("docker calls %q; want %q", got, want)
	}
	create := calls[2]
	if got := valueOf(create, "--restart"); got != "no" {
		t.Errorf("the new container's --restart %q; want no until it has taken over", got)
	}
	if !pairIn(calls[3], "--restart", "no") || !pairIn(calls[10], "--restart", "unless-stopped") {
		t.Errorf("docker update %q, %q: want the old one's policy off before the hand-over, the new one's on after", calls[3], calls[10])
	}
	for _, want := range [][2]string{
		{"--network", "host"}, {"-v", "/run/docker-proxy:/run/docker-proxy"},
		{"-v", "/var/run/docker.sock:/var/run/docker.sock"}, {"-e", "DOCKER_PROXY_ADDRESS=127.0.0.1"},
	} {
		if !pairIn(create, want[0], want[1]) {
			t.Errorf("docker create %q lacks %s %q", create, want[0], want[1])
		}
	}
	if slices.Contains(create, "-p") {
		t.Errorf("docker create %q publishes ports on the host network", create)
	}
	if !strings.Contains(out, "without a gap") {
		t.Errorf("the script says %q; want it to say the restart had no gap", out)
	}
}

// TestDockerStartScriptRestartFallback: a new proxy container that exits
// instead of taking over (an older image that does not hand over, say)
// makes the script say so and replace the old one plainly.
func TestDockerStartScriptRestartFallback(t *testing.T) {
	calls, out := renderAndRunFake(t, nil,
		fakeDocker{running: true, status: "exited", logs: `msg="listen on 127.0.0.1:80: address already in use"`},
		"name=web", "network_mode=host", "ports=80", "tag=app")
	want := []string{
		"inspect web", "rm web-next", "create web-next", "update web", "start web-next",
		"logs web-next", "inspect web-next", "logs web-next",
		"rm web", "rm web-next", "create web", "start web",
	}
	if got := verbs(calls); !slices.Equal(got, want) {
		t.Fatalf("docker calls %q; want %q", got, want)
	}
	if got := valueOf(calls[10], "--restart"); got != "unless-stopped" {
		t.Errorf("the plain start's --restart %q; want unless-stopped", got)
	}
	if !strings.Contains(out, "could not take over") || !strings.Contains(out, "it is exited") {
		t.Errorf("the script says %q; want why it fell back to a plain start", out)
	}
}

// TestDockerStartScriptRestartPublished: with published ports the new
// container is created before the old one is removed, and started right
// after, so that the gap is one removal and one start.
func TestDockerStartScriptRestartPublished(t *testing.T) {
	calls, out := renderAndRunFake(t, nil, fakeDocker{running: true},
		"name=web", "address=127.0.0.1", "ports=80", "tag=app")
	want := []string{"inspect web", "rm web-next", "create web-next", "rm web", "start web-next", "rename web-next web"}
	if got := verbs(calls); !slices.Equal(got, want) {
		t.Fatalf("docker calls %q; want %q", got, want)
	}
	if create := calls[2]; !pairIn(create, "-p", "127.0.0.1:80:80") || valueOf(create, "--restart") != "unless-stopped" {
		t.Errorf("docker create %q; want -p 127.0.0.1:80:80 and --restart unless-stopped", create)
	}
	if !strings.Contains(out, "gap") {
		t.Errorf("the script says %q; want it to say the restart had a gap", out)
	}
}

// TestDockerStartScriptNetworkMode: an unknown network_mode is refused at
// render time.
func TestDockerStartScriptNetworkMode(t *testing.T) {
	erb := needERB(t)
	render := exec.Command(erb, "-T", "-", "ports=80", "tag=web", "network_mode=hots", "config/deploy/start.sh.erb")
	render.Env = cleanEnv()
	out, err := render.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "network_mode") {
		t.Errorf("rendered with network_mode=hots: %v\n%s", err, out)
	}
}
