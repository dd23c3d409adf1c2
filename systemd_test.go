package main

// examples/systemd: the sample unit is well formed and runs the installed
// binary, and its sample environment file is a valid configuration.

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	systemdUnit = "examples/systemd/docker-proxy@.service"
	systemdEnv  = "examples/systemd/web.env"
)

// readUnit parses a systemd unit file: [Section] headers and Key=Value
// lines; blank lines and # or ; comments are skipped. A key given twice
// keeps every value, in order.
func readUnit(t *testing.T, path string) map[string]map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if unit[section] != nil {
				t.Errorf("%s:%d: section [%s] twice", path, n, section)
			}
			unit[section] = map[string][]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.TrimSpace(key) != key || key == "" {
				t.Errorf("%s:%d: %q is not Key=Value inside a [Section]", path, n, line)
				continue
			}
			unit[section][key] = append(unit[section][key], strings.TrimSpace(value))
		}
	}
	return unit
}

func TestSystemdUnit(t *testing.T) {
	unit := readUnit(t, systemdUnit)
	for _, s := range []string{"Unit", "Service", "Install"} {
		if unit[s] == nil {
			t.Fatalf("%s has no [%s] section", systemdUnit, s)
		}
	}
	one := func(section, key string) string {
		t.Helper()
		v := unit[section][key]
		if len(v) != 1 {
			t.Errorf("[%s] %s = %q; want one value", section, key, v)
			return ""
		}
		return v[0]
	}
	for _, key := range []string{"After", "Wants"} {
		if !slices.Contains(strings.Fields(strings.Join(unit["Unit"][key], " ")), "docker.service") {
			t.Errorf("[Unit] %s does not name docker.service", key)
		}
	}
	// Requires= (or BindsTo=) would stop the proxy with every
	// systemctl restart docker, and with it every connection that
	// live-restore keeps.
	for _, key := range []string{"Requires", "BindsTo", "PartOf"} {
		if slices.Contains(strings.Fields(strings.Join(unit["Unit"][key], " ")), "docker.service") {
			t.Errorf("[Unit] %s=docker.service: a restart of Docker would restart the proxy", key)
		}
	}
	if n, err := strconv.Atoi(one("Service", "LimitNOFILE")); err != nil || n < 1<<20 {
		t.Errorf("LimitNOFILE %q; want at least 1048576 (two per connection)", unit["Service"]["LimitNOFILE"])
	}
	exec := strings.Fields(one("Service", "ExecStart"))
	if len(exec) == 0 || exec[0] != "/usr/local/bin/docker-proxy" {
		t.Errorf("ExecStart %q; want /usr/local/bin/docker-proxy", exec)
	}
	if got := one("Service", "EnvironmentFile"); got != "/etc/docker-proxy/%i.env" {
		t.Errorf("EnvironmentFile %q; want /etc/docker-proxy/%%i.env", got)
	}
	if got := one("Service", "Type"); got != "notify" {
		t.Errorf("Type %q; want notify: a process that takes over tells systemd it is the main one", got)
	}
	if got := one("Service", "NotifyAccess"); got != "all" {
		t.Errorf("NotifyAccess %q; want all: the new process is not the one systemd started", got)
	}
	if got := one("Service", "ExecReload"); got != "/bin/kill -USR2 $MAINPID" {
		t.Errorf("ExecReload %q; want /bin/kill -USR2 $MAINPID (a restart in place, see TestDockerReloadInPlace)", got)
	}
	if got := one("Service", "Restart"); got != "always" {
		t.Errorf("Restart %q; want always", got)
	}
	if got := one("Install", "WantedBy"); got == "" {
		t.Error("[Install] has no WantedBy")
	}
	if !strings.HasSuffix(systemdUnit, "@.service") {
		t.Errorf("%s uses %%i: want a template unit, NAME@.service", systemdUnit)
	}
}

// flagVars returns the DOCKER_PROXY_* variable of every flag, as -h shows
// them.
func flagVars(t *testing.T) []string {
	t.Helper()
	var out bytes.Buffer
	_, _ = parseFlags([]string{"-h"}, &out)
	vars := regexp.MustCompile(`\[\$(DOCKER_PROXY_[A-Z0-9_]+)\]`).FindAllStringSubmatch(out.String(), -1)
	var names []string
	for _, m := range vars {
		names = append(names, m[1])
	}
	if len(names) < 10 {
		t.Fatalf("-h names %d DOCKER_PROXY_* variables; want one per flag:\n%s", len(names), out.String())
	}
	return names
}

// TestSystemdEnvFile: every variable of the sample environment file (and
// of its commented-out lines) is a flag's, and together they make a
// configuration that parseFlags accepts.
func TestSystemdEnvFile(t *testing.T) {
	known := flagVars(t)
	data, err := os.ReadFile(systemdEnv)
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		commented := strings.HasPrefix(line, "#")
		kv := strings.TrimPrefix(line, "#")
		key, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(key, "DOCKER_PROXY_") {
			if !commented && line != "" {
				t.Errorf("%s:%d: %q is not DOCKER_PROXY_<FLAG>=VALUE", systemdEnv, n, line)
			}
			continue
		}
		if !slices.Contains(known, key) {
			t.Errorf("%s:%d: %s is no flag's variable", systemdEnv, n, key)
		}
		if !commented {
			set[key] = value
		}
	}
	for _, v := range known {
		t.Setenv(v, "") // only the file's settings count
		_ = os.Unsetenv(v)
	}
	for k, v := range set {
		t.Setenv(k, v)
	}
	cfg, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatalf("the settings of %s: %v", systemdEnv, err)
	}
	if cfg.tag != set["DOCKER_PROXY_TAG"] || len(cfg.ports) == 0 {
		t.Errorf("parsed -tag %q, -ports %v; want them from %s", cfg.tag, cfg.ports, systemdEnv)
	}
}
