package main

// -label against the real daemon: containers are selected by label,
// whatever their image, or by label and tag together.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
)

// testSelectLabel is the label key the tests select by; each test uses its
// own value.
const testSelectLabel = "dockerproxy-test.select"

// labelValue is a value of testSelectLabel that belongs to t alone.
func labelValue(t testing.TB) string {
	return prefix + "-" + strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
}

// startLabelled runs the test server from ref with the selection label set
// to value ("" for no selection label).
func startLabelled(t testing.TB, ref, value string, args ...string) testCtr {
	t.Helper()
	cfg := &container.Config{Image: ref, Cmd: args, Labels: map[string]string{}}
	if value != "" {
		cfg.Labels[testSelectLabel] = value
	}
	return startCtrWith(t, cfg, &container.HostConfig{})
}

// neverTouched checks that the proxy logged nothing about c and that c
// still runs.
func neverTouched(t testing.TB, p *testProxy, c testCtr, what string) {
	t.Helper()
	if strings.Contains(p.logs.String(), c.short()) {
		t.Errorf("the proxy logged the %s container %s:\n%s", what, c.short(), p.logs.String())
	}
	if !ctrRunning(t, c.id) {
		t.Errorf("the %s container %s no longer runs", what, c.short())
	}
}

// TestDockerLabelOnly: with -label and no -tag, the labelled containers of
// two different images take turns, and an unlabelled container of the same
// image is never served, checked or removed.
func TestDockerLabelOnly(t *testing.T) {
	tagA, tagB := newTag(t, "a"), newTag(t, "b")
	value := labelValue(t)
	stranger := startLabelled(t, tagA, "") // running before the proxy starts
	first := startLabelled(t, tagA, value)

	cfg := testConfig("", portMap{80, 80})
	cfg.labels = []label{{testSelectLabel, value}}
	cfg.statusURL = statusURL{port: 80, uri: "/status"}
	cfg.hold = 5 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], first, 10*time.Second)

	// A deploy by label: another image entirely.
	second := startLabelled(t, tagB, value)
	waitServed(t, p.addrs[0], second, 15*time.Second)
	p.logs.waitLog(t, 5*time.Second, "swap", "container", second.short(), "previous", first.short())
	eventually(t, 15*time.Second, "the first labelled container removed", func() bool { return !ctrExists(t, first.id) })

	// An unlabelled container started now, of either image, changes nothing.
	late := startLabelled(t, tagB, "")
	// And a third labelled one, so that we know the proxy has seen
	// everything started before it.
	third := startLabelled(t, tagA, value)
	waitServed(t, p.addrs[0], third, 15*time.Second)
	eventually(t, 15*time.Second, "the second labelled container removed", func() bool { return !ctrExists(t, second.id) })

	neverTouched(t, p, stranger, "unlabelled")
	neverTouched(t, p, late, "unlabelled")
	if host := whoAnswers(t, p.addrs[0]); host != third.host {
		t.Errorf("answered by %s; want the newest labelled container %s", host, third.host)
	}
}

// TestDockerLabelAndTag: -tag and -label together select only containers
// that have both; one with only the label or only the tag is left alone.
func TestDockerLabelAndTag(t *testing.T) {
	tag, other := newTag(t, "v1"), newTag(t, "other")
	value := labelValue(t)
	first := startLabelled(t, tag, value)

	cfg := testConfig(tag, portMap{80, 80})
	cfg.labels = []label{{testSelectLabel, value}}
	cfg.statusURL = statusURL{port: 80, uri: "/status"}
	cfg.hold = 5 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], first, 10*time.Second)

	labelOnly := startLabelled(t, other, value) // the label, another image
	tagOnly := startLabelled(t, tag, "")        // the tag, no label
	wrongValue := startLabelled(t, tag, value+"-not")
	both := startLabelled(t, tag, value)
	waitServed(t, p.addrs[0], both, 15*time.Second)
	eventually(t, 15*time.Second, "the first container removed", func() bool { return !ctrExists(t, first.id) })

	neverTouched(t, p, labelOnly, "label-only")
	neverTouched(t, p, tagOnly, "tag-only")
	neverTouched(t, p, wrongValue, "other label value")
	list, err := dockerCli.ContainerList(context.Background(), container.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var selected []string
	for _, c := range list {
		if c.Labels[testSelectLabel] == value && c.Image == tag {
			selected = append(selected, shortID(c.ID))
		}
	}
	if len(selected) != 1 || selected[0] != both.short() {
		t.Errorf("running containers of the tag and label: %v; want only %s", selected, both.short())
	}
}
