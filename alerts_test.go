package main

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
)

// The example alert rules and their promtool unit tests.
const (
	alertRules     = "examples/prometheus/alerts.yml"
	alertRuleTests = "examples/prometheus/alerts_test.yml"
)

// needTool returns the path of the program name (from Debian's prometheus
// package). It skips the test when there is none, except in CI (CI set),
// where .ci/run installs it and a missing one fails the test.
func needTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is needed in CI (Debian package prometheus): %v", name, err)
		}
		t.Skipf("no %s (Debian package prometheus): %v", name, err)
	}
	return path
}

// TestAlertRules checks the example rules with promtool and runs their
// unit tests: each alert fires when it should and not before.
func TestAlertRules(t *testing.T) {
	promtool := needTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", alertRules},
		{"test", "rules", alertRuleTests},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestAlertRulesNameRealMetrics: every docker_proxy_ metric the rules use
// is one the proxy exports, so a renamed metric cannot leave an alert
// that never fires. (promtool checks the syntax, not the names.)
func TestAlertRulesNameRealMetrics(t *testing.T) {
	rules, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics([]portMap{{host: 80, container: 80}})
	m.followEvents(new(atomic.Bool))
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	used := regexp.MustCompile(`\bdocker_proxy_[a-z_]+`).FindAllString(string(rules), -1)
	if len(used) == 0 {
		t.Fatalf("%s names no docker_proxy_ metric", alertRules)
	}
	for _, name := range used {
		if !have[name] {
			t.Errorf("%s uses %s, which the proxy does not export", alertRules, name)
		}
	}
}
