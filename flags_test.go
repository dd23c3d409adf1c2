package main

// Configuration from DOCKER_PROXY_* variables, the new flags' checks, the
// userland proxy's arguments and -version.

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
)

// envCases sets each flag from its variable alone and tells what the
// config must then hold. DOCKER_PROXY_PORTS and DOCKER_PROXY_TAG are set
// from the environment in every case, so no flag is on the command line.
var envCases = []struct {
	flag  string
	env   map[string]string // besides the variable of flag itself
	value string
	check func(cfg config) bool
}{
	{flag: "address", value: "127.0.0.1", check: func(c config) bool { return c.address == "127.0.0.1" }},
	{flag: "docker", value: "tcp://127.0.0.1:2375", check: func(c config) bool { return c.docker == "tcp://127.0.0.1:2375" }},
	{flag: "ports", value: "8080=80,443", check: func(c config) bool {
		return reflect.DeepEqual(c.ports, []portMap{{8080, 80}, {443, 443}})
	}},
	{flag: "status_url", value: ":8080/health", check: func(c config) bool {
		return c.statusURL == statusURL{port: 8080, uri: "/health"}
	}},
	{flag: "status_timeout", value: "3s", check: func(c config) bool { return c.statusTimeout == 3*time.Second }},
	{flag: "tag", value: "docker.io/library/web:v2", check: func(c config) bool { return c.tag == "docker.io/library/web:v2" }},
	{flag: "grace_period", value: "45s", check: func(c config) bool { return c.grace == 45*time.Second }},
	{flag: "hold_timeout", value: "0", check: func(c config) bool { return c.hold == 0 }},
	{flag: "drain", value: "true", check: func(c config) bool { return c.drain }},
	{flag: "stop_timeout", value: "7s", check: func(c config) bool { return c.stopTimeout == 7*time.Second }},
	{flag: "retire", value: "stop", check: func(c config) bool { return c.retire == retireStop }},
	{flag: "shutdown_timeout", value: "2s", check: func(c config) bool { return c.shutdown == 2*time.Second }},
	{flag: "max_conns", value: "123", check: func(c config) bool { return c.maxConns == 123 }},
	{flag: "replay_bytes", value: "0", check: func(c config) bool { return c.replayBytes == 0 }},
	{flag: "log_format", value: "json", check: func(c config) bool { return c.logFormat == "json" }},
	{flag: "log_level", value: "debug", check: func(c config) bool { return c.logLevel == slog.LevelDebug }},
	{flag: "docker_tls_ca", value: "/certs/ca.pem", check: func(c config) bool {
		return c.dockerTLS == tlsFiles{ca: "/certs/ca.pem"}
	}},
	{flag: "docker_tls_cert", value: "/certs/cert.pem", env: map[string]string{"DOCKER_PROXY_DOCKER_TLS_KEY": "/certs/key.pem"},
		check: func(c config) bool { return c.dockerTLS == tlsFiles{cert: "/certs/cert.pem", key: "/certs/key.pem"} }},
	{flag: "docker_tls_key", value: "/certs/key.pem", env: map[string]string{"DOCKER_PROXY_DOCKER_TLS_CERT": "/certs/cert.pem"},
		check: func(c config) bool { return c.dockerTLS == tlsFiles{cert: "/certs/cert.pem", key: "/certs/key.pem"} }},
	{flag: "status_port", value: "5432", check: func(c config) bool { return c.statusPort == 5432 }},
	{flag: "network", value: "app_default", check: func(c config) bool { return c.network == "app_default" }},
	{flag: "label", value: "com.docker.compose.service=web,tier=front", check: func(c config) bool {
		return reflect.DeepEqual(c.labels, []label{{"com.docker.compose.service", "web"}, {"tier", "front"}})
	}},
	{flag: "metrics_address", value: "127.0.0.1:9100", check: func(c config) bool { return c.metricsAddr == "127.0.0.1:9100" }},
	{flag: "control", value: "/run/x.sock", check: func(c config) bool { return c.control == "/run/x.sock" }},
	{flag: "proxy_protocol", value: "v2", check: func(c config) bool { return c.proxyProtocol == 2 }},
	{flag: "version", value: "true", check: func(c config) bool { return c.version }},
}

// helpFlags returns the flags that -h lists, each with its usage text.
func helpFlags(t *testing.T) map[string]string {
	t.Helper()
	var out bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: got %v; want flag.ErrHelp", err)
	}
	flags := map[string]string{}
	name := ""
	for line := range strings.Lines(out.String()) {
		if m := regexp.MustCompile(`^  -([a-z_-]+)`).FindStringSubmatch(line); m != nil {
			name = m[1]
		}
		if name != "" {
			flags[name] += line
		}
	}
	if len(flags) == 0 {
		t.Fatalf("-h lists no flags:\n%s", out.String())
	}
	return flags
}

// TestEnvEveryFlag: every flag can come from DOCKER_PROXY_<FLAG> alone.
func TestEnvEveryFlag(t *testing.T) {
	covered := map[string]bool{}
	for _, tc := range envCases {
		covered[tc.flag] = true
		t.Run(tc.flag, func(t *testing.T) {
			t.Setenv("DOCKER_PROXY_PORTS", "80")
			t.Setenv("DOCKER_PROXY_TAG", "myapp")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			t.Setenv(envVar(tc.flag), tc.value)
			cfg, err := parseFlags(nil, io.Discard)
			if err != nil {
				t.Fatalf("%s=%s: %v", envVar(tc.flag), tc.value, err)
			}
			if !tc.check(cfg) {
				t.Errorf("%s=%s: got %+v", envVar(tc.flag), tc.value, cfg)
			}
		})
	}
	for name := range helpFlags(t) {
		if !covered[name] {
			t.Errorf("flag -%s has no case in envCases: add one", name)
		}
	}
}

// TestEnvWholeConfig: a configuration given entirely by the environment,
// as `docker run -e` gives it, equals the same one given by flags.
func TestEnvWholeConfig(t *testing.T) {
	args := map[string]string{
		"address": "127.0.0.1", "docker": "tcp://127.0.0.1:2375", "ports": "8080=80,443",
		"status_url": ":80/status", "status_timeout": "3s", "tag": "web:v2", "grace_period": "1m",
		"hold_timeout": "1s", "drain": "true", "stop_timeout": "2s", "retire": "none",
		"shutdown_timeout": "4s", "max_conns": "9", "replay_bytes": "100", "log_format": "json",
		"log_level": "warn", "docker_tls_ca": "ca.pem", "docker_tls_cert": "cert.pem",
		"docker_tls_key": "key.pem", "network": "net1", "label": "a=1,b=2",
		"metrics_address": ":9100", "proxy_protocol": "v1", "control": "/run/x.sock",
	}
	var cmdline []string
	for name, value := range args {
		cmdline = append(cmdline, "-"+name+"="+value)
	}
	fromFlags, err := parseFlags(cmdline, io.Discard)
	if err != nil {
		t.Fatalf("flags: %v", err)
	}
	for name, value := range args {
		t.Setenv(envVar(name), value)
	}
	fromEnv, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatalf("environment: %v", err)
	}
	if !reflect.DeepEqual(fromEnv, fromFlags) {
		t.Errorf("from the environment: %+v; from flags: %+v", fromEnv, fromFlags)
	}
	if fromEnv.grace != time.Minute || fromEnv.retire != retireNone || len(fromEnv.labels) != 2 {
		t.Errorf("got %+v; want the values set", fromEnv)
	}
}

// TestEnvFlagWins: a flag on the command line wins over its variable;
// the other variables still count.
func TestEnvFlagWins(t *testing.T) {
	t.Setenv("DOCKER_PROXY_PORTS", "80,443")
	t.Setenv("DOCKER_PROXY_TAG", "from-env")
	t.Setenv("DOCKER_PROXY_GRACE_PERIOD", "30s")
	t.Setenv("DOCKER_PROXY_LABEL", "env=1")
	t.Setenv("DOCKER_PROXY_STATUS_TIMEOUT", "4s")
	t.Setenv("DOCKER_PROXY_DOCKER", "tcp://10.0.0.1:2375")
	cfg, err := parseFlags([]string{"-ports", "8080=80", "-grace_period", "5s", "-label", "cli=1",
		"-docker", "unix:///run/other.sock"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := []portMap{{8080, 80}}; !reflect.DeepEqual(cfg.ports, want) {
		t.Errorf("ports: got %v; want %v (the flag)", cfg.ports, want)
	}
	if cfg.grace != 5*time.Second {
		t.Errorf("grace: got %v; want 5s (the flag)", cfg.grace)
	}
	if want := []label{{"cli", "1"}}; !reflect.DeepEqual(cfg.labels, want) {
		t.Errorf("labels: got %v; want %v (the flag alone)", cfg.labels, want)
	}
	if cfg.docker != "unix:///run/other.sock" {
		t.Errorf("docker: got %q; want the flag's", cfg.docker)
	}
	if cfg.tag != "from-env" || cfg.statusTimeout != 4*time.Second {
		t.Errorf("tag %q, status timeout %v; want the variables' from-env and 4s", cfg.tag, cfg.statusTimeout)
	}
}

// TestEnvDockerNotGiven: DOCKER_PROXY_DOCKER counts as giving -docker;
// with neither, cfg.docker is empty so that DOCKER_HOST is honoured.
func TestEnvDockerNotGiven(t *testing.T) {
	t.Setenv("DOCKER_PROXY_PORTS", "80")
	t.Setenv("DOCKER_PROXY_TAG", "myapp")
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.docker != "" {
		t.Errorf("docker: got %q; want empty (DOCKER_HOST decides)", cfg.docker)
	}
}

// TestEnvBadValues: a bad value in a variable is one error line naming
// the variable or the value.
func TestEnvBadValues(t *testing.T) {
	for _, tc := range []struct {
		env, value string
		want       []string // any one of them
	}{
		{"DOCKER_PROXY_GRACE_PERIOD", "soon", []string{"DOCKER_PROXY_GRACE_PERIOD", `"soon"`}},
		{"DOCKER_PROXY_GRACE_PERIOD", "-1s", []string{"DOCKER_PROXY_GRACE_PERIOD", `"-1s"`}},
		{"DOCKER_PROXY_PORTS", "abc", []string{"DOCKER_PROXY_PORTS", `"abc"`}},
		{"DOCKER_PROXY_RETIRE", "kill", []string{"DOCKER_PROXY_RETIRE", `"kill"`}},
		{"DOCKER_PROXY_LABEL", "a=1,novalue", []string{"DOCKER_PROXY_LABEL", `"novalue"`}},
		{"DOCKER_PROXY_DRAIN", "maybe", []string{"DOCKER_PROXY_DRAIN", `"maybe"`}},
		{"DOCKER_PROXY_MAX_CONNS", "lots", []string{"DOCKER_PROXY_MAX_CONNS", `"lots"`}},
		{"DOCKER_PROXY_PROXY_PROTOCOL", "v3", []string{"DOCKER_PROXY_PROXY_PROTOCOL", `"v3"`}},
		{"DOCKER_PROXY_STATUS_PORT", "http", []string{"DOCKER_PROXY_STATUS_PORT", `"http"`}},
		{"DOCKER_PROXY_TAG", "Not A Tag", []string{"DOCKER_PROXY_TAG", `"Not A Tag"`}},
		{"DOCKER_PROXY_ADDRESS", "nowhere", []string{"DOCKER_PROXY_ADDRESS", `"nowhere"`}},
		{"DOCKER_PROXY_DOCKER", "ftp://x", []string{"DOCKER_PROXY_DOCKER", `"ftp://x"`}},
		{"DOCKER_PROXY_METRICS_ADDRESS", "nowhere", []string{"DOCKER_PROXY_METRICS_ADDRESS", `"nowhere"`}},
	} {
		t.Run(tc.env+"="+tc.value, func(t *testing.T) {
			t.Setenv("DOCKER_PROXY_PORTS", "80")
			t.Setenv("DOCKER_PROXY_TAG", "myapp")
			t.Setenv(tc.env, tc.value)
			_, err := parseFlags(nil, io.Discard)
			if err == nil {
				t.Fatalf("no error; want one naming %s or its value", tc.env)
			}
			named := false
			for _, w := range tc.want {
				named = named || strings.Contains(err.Error(), w)
			}
			if !named {
				t.Errorf("got %q; want it to contain one of %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("got %q; want one line", err)
			}
		})
	}
}

// TestFlagsHelpNamesVariables: -h names each flag's variable.
func TestFlagsHelpNamesVariables(t *testing.T) {
	flags := helpFlags(t)
	for name, usage := range flags {
		if want := "$" + envVar(name); !strings.Contains(usage, want) {
			t.Errorf("-h: -%s does not name %s:\n%s", name, want, usage)
		}
	}
	for _, name := range []string{"grace_period", "ports", "tag", "label", "status_port", "network",
		"docker_tls_ca", "metrics_address", "proxy_protocol"} {
		if _, ok := flags[name]; !ok {
			t.Errorf("-h does not list -%s", name)
		}
	}
	if !strings.Contains(flags["grace_period"], "$DOCKER_PROXY_GRACE_PERIOD") {
		t.Errorf("-h: -grace_period lacks $DOCKER_PROXY_GRACE_PERIOD:\n%s", flags["grace_period"])
	}
}

// TestFlagsNewFlags: the values of the flags added for issue 4.
func TestFlagsNewFlags(t *testing.T) {
	cfg, err := parseFlags([]string{"-ports", "5432", "-label", "com.docker.compose.service=db",
		"-label", "tier=data,env=prod", "-status_port", "5432", "-network", "backend",
		"-docker", "tcp://127.0.0.1:2376", "-docker_tls_ca", "ca.pem", "-docker_tls_cert", "cert.pem",
		"-docker_tls_key", "key.pem", "-metrics_address", "127.0.0.1:9100", "-proxy_protocol", "v1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	wantLabels := []label{{"com.docker.compose.service", "db"}, {"tier", "data"}, {"env", "prod"}}
	switch {
	case cfg.tag != "":
		t.Errorf("tag: got %q; want none (labels alone select)", cfg.tag)
	case !reflect.DeepEqual(cfg.labels, wantLabels):
		t.Errorf("labels: got %v; want %v", cfg.labels, wantLabels)
	case cfg.statusPort != 5432, cfg.network != "backend", cfg.metricsAddr != "127.0.0.1:9100", cfg.proxyProtocol != 1:
		t.Errorf("got %+v", cfg)
	case cfg.dockerTLS != tlsFiles{"ca.pem", "cert.pem", "key.pem"}:
		t.Errorf("TLS files: got %+v", cfg.dockerTLS)
	}
	for _, v := range []string{"v2", "2"} {
		cfg, err := parseFlags([]string{"-ports", "80", "-tag", "x", "-proxy_protocol", v}, io.Discard)
		if err != nil || cfg.proxyProtocol != 2 {
			t.Errorf("-proxy_protocol %s: got %d, %v; want 2", v, cfg.proxyProtocol, err)
		}
	}
	// A CA alone turns TLS on with no client certificate.
	if _, err := parseFlags([]string{"-ports", "80", "-tag", "x", "-docker_tls_ca", "ca.pem"}, io.Discard); err != nil {
		t.Errorf("-docker_tls_ca alone: %v", err)
	}
}

// TestParseFlagsNewFlagErrors: the new flags' bad values and bad pairs.
func TestParseFlagsNewFlagErrors(t *testing.T) {
	base := []string{"-tag", "myapp", "-ports", "80"}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{append(base, "-status_url", ":80/status", "-status_port", "80"), "-status_url and -status_port"},
		{append(base, "-docker_tls_cert", "cert.pem"), "-docker_tls_cert and -docker_tls_key"},
		{append(base, "-docker_tls_key", "key.pem"), "-docker_tls_cert and -docker_tls_key"},
		{append(base, "-docker_tls_ca", "ca.pem", "-docker_tls_cert", "cert.pem"), "-docker_tls_key"},
		{append(base, "-label", "novalue"), `"novalue"`},
		{append(base, "-label", "=web"), `"=web"`},
		{append(base, "-label", "a=1,,b=2"), `label ""`},
		{append(base, "-proxy_protocol", "v3"), `"v3"`},
		{append(base, "-proxy_protocol", ""), "-proxy_protocol"},
		{append(base, "-metrics_address", "nowhere"), `"nowhere"`},
		{append(base, "-metrics_address", "9100"), `"9100"`},
		{append(base, "-status_port", "0"), `"0"`},
		{append(base, "-status_port", "abc"), `"abc"`},
		{append(base, "-status_port", "70000"), `"70000"`},
		{append(base, "-log_format", "xml"), `"xml"`},
		{append(base, "-log_level", "loud"), `"loud"`},
		{[]string{"-ports", "80"}, "missing -tag"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) { wantFlagError(t, tt.args, tt.want) })
	}
}

// userlandCmd is how dockerd starts its own userland proxy.
var userlandCmd = []string{"-proto", "tcp", "-host-ip", "0.0.0.0", "-host-port", "80",
	"-container-ip", "172.17.0.2", "-container-port", "80"}

const notUserland = "not Docker's userland proxy"

func TestParseFlagsUserlandProxyArgs(t *testing.T) {
	for _, args := range [][]string{
		userlandCmd,
		{"-container-ip=172.17.0.2"},
		{"--proto", "udp"},
		// Even with our own flags first, and variables set.
		append([]string{"-ports", "80", "-tag", "x"}, userlandCmd...),
	} {
		t.Setenv("DOCKER_PROXY_PORTS", "80")
		_, err := parseFlags(args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), notUserland) {
			t.Errorf("%v: got %v; want an error saying %q", args, err, notUserland)
		}
	}
}

// TestBinaryUserlandProxyArgs: started as dockerd starts its userland
// proxy, the binary exits non-zero at once and says it is not that proxy.
func TestBinaryUserlandProxyArgs(t *testing.T) {
	cmd := exec.Command(proxyBinary(t), userlandCmd...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := runWithin(t, cmd, 10*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Errorf("got %v; want a non-zero exit status", err)
	}
	if !strings.Contains(stderr.String(), notUserland) {
		t.Errorf("stderr does not say %q:\n%s", notUserland, stderr.String())
	}
}

// TestBinaryVersion: -version prints one line naming the program and exits 0.
func TestBinaryVersion(t *testing.T) {
	cmd := exec.Command(proxyBinary(t), "-version")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := runWithin(t, cmd, 10*time.Second); err != nil {
		t.Fatalf("-version: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	if !strings.HasPrefix(out, "docker-proxy") || strings.Count(out, "\n") != 1 {
		t.Errorf("-version printed %q; want one line starting with docker-proxy", out)
	}
	if !strings.Contains(out, "go1.") {
		t.Errorf("-version printed %q; want the Go version too", out)
	}
}

func TestParseFlagsVersionNeedsNothingElse(t *testing.T) {
	cfg, err := parseFlags([]string{"-version"}, io.Discard)
	if err != nil || !cfg.version {
		t.Errorf("-version alone: got %v, version=%v; want no error", err, cfg.version)
	}
}

// TestBinaryEnvConfig: the binary reads its settings from the environment;
// a bad variable exits 2 with one line naming it.
func TestBinaryEnvConfig(t *testing.T) {
	cmd := exec.Command(proxyBinary(t))
	cmd.Env = append(cleanEnv(), "DOCKER_PROXY_PORTS=80", "DOCKER_PROXY_TAG=myapp", "DOCKER_PROXY_GRACE_PERIOD=soon")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := runWithin(t, cmd, 10*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("got %v; want exit status 2", err)
	}
	if s := stderr.String(); !strings.Contains(s, "DOCKER_PROXY_GRACE_PERIOD") || strings.Count(s, "\n") != 1 {
		t.Errorf("stderr: got %q; want one line naming DOCKER_PROXY_GRACE_PERIOD", s)
	}

	// Good settings from the environment reach the daemon: an unreachable
	// one, named from DOCKER_PROXY_DOCKER, exits 1.
	cmd = exec.Command(proxyBinary(t))
	url := "unix://" + t.TempDir() + "/no-docker.sock"
	cmd.Env = append(cleanEnv(), "DOCKER_PROXY_PORTS=80", "DOCKER_PROXY_TAG=myapp", "DOCKER_PROXY_DOCKER="+url)
	out, err := outputWithin(t, cmd, 20*time.Second)
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("got %v; want exit status 1", err)
	}
	if !strings.Contains(out, url) {
		t.Errorf("output does not name %s:\n%s", url, out)
	}
}

// cleanEnv is this process's environment without the variables that
// configure the proxy or its Docker client, for a child process that
// sets its own.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, envPrefix+"_"), name == "DOCKER_HOST", name == "DOCKER_TLS_VERIFY",
			name == "DOCKER_CERT_PATH", name == "DOCKER_TLS", name == "DOCKER_CONTEXT", name == "DOCKER_API_VERSION":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// runWithin runs cmd and fails the test if it has not exited within
// timeout (it is killed then).
func runWithin(t testing.TB, cmd *exec.Cmd, timeout time.Duration) error {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v still running after %v", cmd.Args, timeout)
		return nil
	}
}

// outputWithin is runWithin that returns stdout and stderr together.
func outputWithin(t testing.TB, cmd *exec.Cmd, timeout time.Duration) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := runWithin(t, cmd, timeout)
	return out.String(), err
}
