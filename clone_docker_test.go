package main

// deploy's copy against the real daemon: a serving container with the
// settings a user gives (env, a named volume, a label, a user-defined
// network with an alias, a restart policy, a memory limit, a published
// port), a new build of its tag, and the copy planned and started from it.

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/volume"
	"github.com/docker/go-connections/nat"
)

// cloneSetup is a serving container of tag (built as v1, now naming v2).
type cloneSetup struct {
	tag        string
	base       string // the old container is base+"-web"
	vol, net   string
	old        testCtr
	oldMemory  int64
	v1ID, v2ID string
}

// newCloneSetup builds v1 of a tag (MODE=old), starts its container, then
// builds v2 (MODE=new) under the same tag, as a user's new build does.
// Everything is named with the run's prefix and removed when the test
// ends: the images last, after the containers, volume and network.
func newCloneSetup(t *testing.T) cloneSetup {
	t.Helper()
	cli := needDocker(t)
	ctx := context.Background()
	name := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	s := cloneSetup{tag: prefix + "-" + name + ":latest", base: prefix + "-" + name}

	build := func(mode, n string) string {
		df := "FROM " + serverImage + "\nENV MODE=" + mode + "\nLABEL clone.build=" + n + "\n"
		if err := buildImage(s.tag, map[string]string{"Dockerfile": df}, nil); err != nil {
			t.Fatal(err)
		}
		img, err := cli.ImageInspect(ctx, s.tag)
		if err != nil {
			t.Fatalf("inspect %s: %v", s.tag, err)
		}
		return img.ID
	}
	t.Cleanup(func() {
		for _, ref := range []string{s.tag, s.v1ID} {
			if ref != "" {
				_, _ = cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
			}
		}
	})
	s.v1ID = build("old", "1")

	s.vol = s.base + "-data"
	if _, err := cli.VolumeCreate(ctx, volume.CreateOptions{
		Name: s.vol, Labels: map[string]string{testLabel: runID, pidLabel: ownPID},
	}); err != nil {
		t.Fatalf("create volume %s: %v", s.vol, err)
	}
	t.Cleanup(func() {
		if err := cli.VolumeRemove(context.Background(), s.vol, true); err != nil {
			t.Logf("remove volume %s: %v", s.vol, err)
		}
	})
	s.net = newNetwork(t, "clone")

	s.old = startCtrWith(t, &container.Config{
		Image:  s.tag,
		Env:    []string{"FOO=bar"},
		Labels: map[string]string{"clone.role": "web"},
	}, &container.HostConfig{
		Binds:         []string{s.vol + ":/data"},
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
		Resources:     container.Resources{Memory: 64 << 20},
		PortBindings:  nat.PortMap{"80/tcp": {{HostIP: "127.0.0.1"}}},
	})
	if err := cli.ContainerRename(ctx, s.old.id, s.base+"-web"); err != nil {
		t.Fatalf("rename %s: %v", s.old.short(), err)
	}
	if err := cli.NetworkConnect(ctx, s.net, s.old.id, &network.EndpointSettings{Aliases: []string{"web-alias"}}); err != nil {
		t.Fatalf("connect %s to %s: %v", s.old.short(), s.net, err)
	}
	info, err := cli.ContainerInspect(ctx, s.old.id)
	if err != nil {
		t.Fatalf("inspect %s: %v", s.old.short(), err)
	}
	s.oldMemory = info.HostConfig.Memory
	if !slices.Contains(info.Config.Env, "MODE=old") {
		t.Fatalf("old container's env %q: no MODE=old from v1", info.Config.Env)
	}

	s.v2ID = build("new", "2")
	if s.v2ID == s.v1ID {
		t.Fatalf("v2 is v1 (%s): the new build did not move the tag", s.v1ID)
	}
	return s
}

// TestCloneDockerStart: the copy runs the new image with the user's
// settings and the new image's defaults, under a derived name that is
// free (when planned, and again when created), and publishes no port.
func TestCloneDockerStart(t *testing.T) {
	s := newCloneSetup(t)
	cli := dockerCli
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// base-web-2 is taken before the plan, base-web-3 between the plan and
	// the start: the copy is base-web-4.
	take := func(name string) {
		c, err := cli.ContainerCreate(ctx, &container.Config{
			Image: s.tag, Labels: map[string]string{testLabel: runID, pidLabel: ownPID},
		}, nil, nil, nil, name)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		t.Cleanup(func() { removeCtr(c.ID) })
	}
	take(s.base + "-web-2")
	spec, err := planNext(ctx, cli, s.old.id, s.tag, []string{"EXTRA=1"})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != s.base+"-web-3" {
		t.Fatalf("planned name %q; want %s-web-3", spec.Name, s.base)
	}
	take(spec.Name)
	id, err := spec.start(ctx, cli)
	if id != "" {
		t.Cleanup(func() { removeCtr(id) })
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := cli.ContainerInspect(ctx, id)
	if err != nil {
		t.Fatalf("inspect the copy %s: %v", shortID(id), err)
	}

	if info.Name != "/"+s.base+"-web-4" {
		t.Errorf("name %q; want /%s-web-4", info.Name, s.base)
	}
	if info.Image != s.v2ID || info.Config.Image != s.tag {
		t.Errorf("image %s (%s); want %s (%s)", info.Config.Image, info.Image, s.tag, s.v2ID)
	}
	for _, want := range []string{"FOO=bar", "EXTRA=1", "MODE=new"} {
		if !slices.Contains(info.Config.Env, want) {
			t.Errorf("env %q; want %s", info.Config.Env, want)
		}
	}
	if slices.Contains(info.Config.Env, "MODE=old") {
		t.Errorf("env %q: MODE=old, the old image's default, was copied", info.Config.Env)
	}
	if l := info.Config.Labels; l["clone.role"] != "web" || l["clone.build"] != "2" || l[testLabel] != runID {
		t.Errorf("labels %v; want clone.role=web, clone.build=2 and the test label", l)
	}
	if !slices.ContainsFunc(info.Mounts, func(m container.MountPoint) bool {
		return m.Type == "volume" && m.Name == s.vol && m.Destination == "/data"
	}) {
		t.Errorf("mounts %+v; want volume %s at /data", info.Mounts, s.vol)
	}
	ep := info.NetworkSettings.Networks[s.net]
	if ep == nil || !slices.Contains(ep.Aliases, "web-alias") || ep.IPAddress == "" {
		t.Errorf("on %s: %+v; want an address and the alias web-alias", s.net, ep)
	}
	if info.NetworkSettings.Networks["bridge"] == nil {
		t.Errorf("networks %v; want the bridge too, as the old container", info.NetworkSettings.Networks)
	}
	if ip := ipOn(t, s.old, s.net); ep != nil && ep.IPAddress == ip {
		t.Errorf("the copy has the old container's address %s", ip)
	}
	h := info.HostConfig
	if h.RestartPolicy.Name != container.RestartPolicyUnlessStopped || h.Memory != s.oldMemory {
		t.Errorf("restart %q memory %d; want unless-stopped and %d", h.RestartPolicy.Name, h.Memory, s.oldMemory)
	}
	if s.oldMemory == 0 {
		t.Log("the daemon keeps no memory limit here: the memory check compared zeros")
	}
	if len(h.PortBindings) > 0 || h.PublishAllPorts {
		t.Errorf("port bindings %v, publish all %t; want none", h.PortBindings, h.PublishAllPorts)
	}
	for p, bs := range info.NetworkSettings.Ports {
		if len(bs) > 0 {
			t.Errorf("port %s published on %v", p, bs)
		}
	}
	if !slices.ContainsFunc(spec.Skipped, func(l string) bool { return strings.HasPrefix(l, "published port 80/tcp on 127.0.0.1:(any):") }) {
		t.Errorf("skipped %q; want the published port named", spec.Skipped)
	}
	if !ctrRunning(t, id) || !ctrRunning(t, s.old.id) {
		t.Errorf("running: copy %t, old %t; want both", ctrRunning(t, id), ctrRunning(t, s.old.id))
	}
}

// TestCloneDockerDryRun: describe names the volume, the network and the
// env, and planning creates nothing.
func TestCloneDockerDryRun(t *testing.T) {
	s := newCloneSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec, err := planNext(ctx, dockerCli, s.old.id, s.tag, []string{"EXTRA=1"})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := spec.describe(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"name:        " + s.base + "-web-2\n",
		"image:       " + s.tag + " (" + shortID(strings.TrimPrefix(s.v2ID, "sha256:")) + ")\n",
		"volume " + s.vol + " -> /data",
		s.net + " (aliases web-alias)",
		"FOO=bar\n", "EXTRA=1\n", "MODE=new  (image)\n",
		"restart:     unless-stopped\n",
		"published port 80/tcp on 127.0.0.1:(any):",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("describe lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "MODE=old") {
		t.Errorf("describe names the old image's MODE=old:\n%s", out)
	}
	ctrs, err := dockerCli.ContainerList(ctx, container.ListOptions{
		All: true, Filters: filters.NewArgs(filters.Arg("name", s.base+"-web-")),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ctrs) > 0 {
		t.Errorf("planning created %v", ctrs[0].Names)
	}
}
