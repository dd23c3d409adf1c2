package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The copy's planning from hand-written inspect answers: a serving
// container "web" of an old image, and a new image whose every default
// differs from the old one's, so that each test tells an inherited value
// (the new image's applies) from one the user set (kept).

const cloneTestID = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789"

func cloneOldImage() image.InspectResponse {
	return image.InspectResponse{ID: "sha256:0ld", Config: &dockerspec.DockerOCIImageConfig{
		ImageConfig: ocispec.ImageConfig{
			User: "app", WorkingDir: "/srv", StopSignal: "SIGQUIT",
			Env:          []string{"PATH=/usr/bin", "MODE=old"},
			Entrypoint:   []string{"/app"},
			Cmd:          []string{"serve"},
			Labels:       map[string]string{"build": "1"},
			ExposedPorts: map[string]struct{}{"80/tcp": {}},
			Volumes:      map[string]struct{}{"/cache": {}},
		},
		DockerOCIImageConfigExt: dockerspec.DockerOCIImageConfigExt{
			Healthcheck: &container.HealthConfig{Test: []string{"CMD", "/app", "check"}, Interval: 30 * time.Second, Retries: 3},
		},
	}}
}

func cloneNewImage() image.InspectResponse {
	return image.InspectResponse{ID: "sha256:4e3", Config: &dockerspec.DockerOCIImageConfig{
		ImageConfig: ocispec.ImageConfig{
			User: "app2", WorkingDir: "/srv2",
			Env:        []string{"PATH=/bin", "MODE=new"},
			Entrypoint: []string{"/app2"},
			Cmd:        []string{"serve2"},
			Labels:     map[string]string{"build": "2"},
		},
	}}
}

// cloneServing is the serving container as inspect reports it: the old
// image's config merged in, plus what the user set (FOO, the role label,
// a named volume, the alias, restart policy, memory).
func cloneServing() container.InspectResponse {
	old := cloneOldImage().Config
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{
			ID: cloneTestID, Name: "/web", Image: "sha256:0ld", Created: "2024-01-01T00:00:00Z",
			State: &container.State{Running: true, Pid: 42},
			HostConfig: &container.HostConfig{
				NetworkMode:   "app",
				Binds:         []string{"data:/data"},
				RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyUnlessStopped},
				Resources:     container.Resources{Memory: 64 << 20},
			},
		},
		Mounts: []container.MountPoint{
			{Type: mount.TypeVolume, Name: "data", Destination: "/data", RW: true},
			{Type: mount.TypeVolume, Name: strings.Repeat("ab", 32), Destination: "/cache", RW: true},
		},
		Config: &container.Config{
			Hostname: cloneTestID[:12], Image: "myapp:latest",
			User: old.User, WorkingDir: old.WorkingDir, StopSignal: old.StopSignal,
			Env:          []string{"FOO=bar", "PATH=/usr/bin", "MODE=old"},
			Entrypoint:   old.Entrypoint,
			Cmd:          old.Cmd,
			Labels:       map[string]string{"build": "1", "role": "web"},
			ExposedPorts: nat.PortSet{"80/tcp": {}},
			Volumes:      map[string]struct{}{"/cache": {}},
			Healthcheck:  &container.HealthConfig{Test: []string{"CMD", "/app", "check"}, Interval: 30 * time.Second, Retries: 3},
		},
		NetworkSettings: &container.NetworkSettings{Networks: map[string]*network.EndpointSettings{
			"app": {
				NetworkID: "a1b2c3d4e5f60718293a4b5c6d7e8f90", Aliases: []string{cloneTestID[:12], "web"},
				IPAddress: "172.18.0.2", MacAddress: "02:42:ac:12:00:02", Gateway: "172.18.0.1", EndpointID: "ep1",
			},
		}},
	}
}

// planTest plans the copy of the serving container changed by edit.
func planTest(t *testing.T, edit func(*container.InspectResponse)) nextSpec {
	t.Helper()
	info := cloneServing()
	if edit != nil {
		edit(&info)
	}
	return planFrom(info, cloneOldImage(), cloneNewImage(), "myapp:latest", nil)
}

func skippedHas(s nextSpec, substr string) bool {
	return slices.ContainsFunc(s.Skipped, func(l string) bool { return strings.Contains(l, substr) })
}

// TestCloneInheritedFromNewImage: what the container has from its old
// image is left to the new one; what the user set stays.
func TestCloneInheritedFromNewImage(t *testing.T) {
	s := planTest(t, nil)
	c := s.Config
	if c.Image != "myapp:latest" {
		t.Errorf("image %q; want myapp:latest", c.Image)
	}
	if !slices.Equal(c.Env, []string{"FOO=bar"}) {
		t.Errorf("env %q; want [FOO=bar] (PATH and MODE from the image)", c.Env)
	}
	if c.Entrypoint != nil || c.Cmd != nil {
		t.Errorf("entrypoint %q cmd %q; want both from the image", c.Entrypoint, c.Cmd)
	}
	if c.User != "" || c.WorkingDir != "" || c.StopSignal != "" || c.Healthcheck != nil {
		t.Errorf("user %q workdir %q stop signal %q healthcheck %v; want all from the image", c.User, c.WorkingDir, c.StopSignal, c.Healthcheck)
	}
	if c.ExposedPorts != nil || c.Volumes != nil {
		t.Errorf("exposed %v volumes %v; want both from the image", c.ExposedPorts, c.Volumes)
	}
	if want := map[string]string{"role": "web"}; !maps.Equal(c.Labels, want) {
		t.Errorf("labels %v; want %v", c.Labels, want)
	}
	if c.Hostname != "" {
		t.Errorf("hostname %q: the default (the old short id) was copied", c.Hostname)
	}
	if s.Name != "web-2" {
		t.Errorf("name %q; want web-2", s.Name)
	}
	h := s.Host
	if !slices.Equal(h.Binds, []string{"data:/data"}) || h.RestartPolicy.Name != container.RestartPolicyUnlessStopped || h.Memory != 64<<20 {
		t.Errorf("binds %v restart %v memory %d; want them copied", h.Binds, h.RestartPolicy, h.Memory)
	}
	if h.NetworkMode != "app" {
		t.Errorf("network mode %q; want app", h.NetworkMode)
	}
	ep := s.Networks["app"]
	if ep == nil || !slices.Equal(ep.Aliases, []string{"web"}) {
		t.Fatalf("endpoint on app %+v; want aliases [web]", ep)
	}
	if ep.IPAddress != "" || ep.MacAddress != "" || ep.EndpointID != "" || ep.NetworkID != "" || ep.IPAMConfig != nil {
		t.Errorf("endpoint %+v: operational data copied", ep)
	}
	// The image VOLUME /cache: the new image has none there.
	if !skippedHas(s, "anonymous volume abababababab at /cache") || !skippedHas(s, "no volume there") {
		t.Errorf("skipped %q; want the anonymous /cache volume, with no volume there now", s.Skipped)
	}
	if len(s.Skipped) != 1 {
		t.Errorf("skipped %q; want only the anonymous volume", s.Skipped)
	}
}

// TestCloneUserSettings: values that differ from the old image's are the
// user's and are kept, each in the form the daemon merges right.
func TestCloneUserSettings(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(*container.InspectResponse)
		check func(t *testing.T, c *container.Config)
	}{
		{"env of an image key, own value", func(i *container.InspectResponse) {
			i.Config.Env = []string{"PATH=/usr/bin", "MODE=mine"}
		}, func(t *testing.T, c *container.Config) {
			if !slices.Equal(c.Env, []string{"MODE=mine"}) {
				t.Errorf("env %q; want [MODE=mine]", c.Env)
			}
		}},
		{"cmd", func(i *container.InspectResponse) {
			i.Config.Cmd = []string{"serve", "-v"}
		}, func(t *testing.T, c *container.Config) {
			if c.Entrypoint != nil || !slices.Equal(c.Cmd, []string{"serve", "-v"}) {
				t.Errorf("entrypoint %q cmd %q; want the image's entrypoint, cmd [serve -v]", c.Entrypoint, c.Cmd)
			}
		}},
		{"entrypoint and cmd", func(i *container.InspectResponse) {
			i.Config.Entrypoint, i.Config.Cmd = []string{"/bin/sh"}, []string{"-c", "x"}
		}, func(t *testing.T, c *container.Config) {
			if !slices.Equal(c.Entrypoint, []string{"/bin/sh"}) || !slices.Equal(c.Cmd, []string{"-c", "x"}) {
				t.Errorf("entrypoint %q cmd %q; want [/bin/sh] [-c x]", c.Entrypoint, c.Cmd)
			}
		}},
		// With an entrypoint set the daemon takes no cmd from the image:
		// a cmd equal to the old image's was the user's too.
		{"entrypoint, cmd equal to the image's", func(i *container.InspectResponse) {
			i.Config.Entrypoint = []string{"/other"}
		}, func(t *testing.T, c *container.Config) {
			if !slices.Equal(c.Entrypoint, []string{"/other"}) || !slices.Equal(c.Cmd, []string{"serve"}) {
				t.Errorf("entrypoint %q cmd %q; want [/other] [serve]", c.Entrypoint, c.Cmd)
			}
		}},
		// --entrypoint /app (the image's own) dropped the image's cmd.
		{"image's entrypoint given, no cmd", func(i *container.InspectResponse) {
			i.Config.Cmd = nil
		}, func(t *testing.T, c *container.Config) {
			if !slices.Equal(c.Entrypoint, []string{"/app"}) || len(c.Cmd) != 0 {
				t.Errorf("entrypoint %q cmd %q; want [/app] and no cmd", c.Entrypoint, c.Cmd)
			}
		}},
		{"entrypoint cleared", func(i *container.InspectResponse) {
			i.Config.Entrypoint = []string{}
		}, func(t *testing.T, c *container.Config) {
			if c.Entrypoint == nil || len(c.Entrypoint) != 0 || c.Cmd != nil {
				t.Errorf("entrypoint %#v cmd %q; want an empty, set entrypoint and the image's cmd", c.Entrypoint, c.Cmd)
			}
		}},
		{"user, workdir, stop signal, shell", func(i *container.InspectResponse) {
			i.Config.User, i.Config.WorkingDir, i.Config.StopSignal = "root", "/tmp", "SIGTERM"
			i.Config.Shell = []string{"/bin/bash", "-c"}
		}, func(t *testing.T, c *container.Config) {
			if c.User != "root" || c.WorkingDir != "/tmp" || c.StopSignal != "SIGTERM" || len(c.Shell) != 2 {
				t.Errorf("user %q workdir %q stop signal %q shell %q; want root /tmp SIGTERM [/bin/bash -c]", c.User, c.WorkingDir, c.StopSignal, c.Shell)
			}
		}},
		{"hostname, domainname", func(i *container.InspectResponse) {
			i.Config.Hostname, i.Config.Domainname = "web1", "example.org"
		}, func(t *testing.T, c *container.Config) {
			if c.Hostname != "web1" || c.Domainname != "example.org" {
				t.Errorf("hostname %q domainname %q; want web1 example.org", c.Hostname, c.Domainname)
			}
		}},
		{"healthcheck interval only", func(i *container.InspectResponse) {
			i.Config.Healthcheck.Interval = 5 * time.Second
		}, func(t *testing.T, c *container.Config) {
			if h := c.Healthcheck; h == nil || h.Test != nil || h.Interval != 5*time.Second || h.Retries != 0 {
				t.Errorf("healthcheck %+v; want the interval alone", h)
			}
		}},
		{"healthcheck disabled", func(i *container.InspectResponse) {
			i.Config.Healthcheck.Test = []string{"NONE"}
		}, func(t *testing.T, c *container.Config) {
			if h := c.Healthcheck; h == nil || !slices.Equal(h.Test, []string{"NONE"}) {
				t.Errorf("healthcheck %+v; want NONE", h)
			}
		}},
		{"exposed port", func(i *container.InspectResponse) {
			i.Config.ExposedPorts["9000/tcp"] = struct{}{}
		}, func(t *testing.T, c *container.Config) {
			if len(c.ExposedPorts) != 1 || c.ExposedPorts["9000/tcp"] != struct{}{} {
				t.Errorf("exposed %v; want 9000/tcp alone", c.ExposedPorts)
			}
		}},
		{"tty, stdin, stop timeout", func(i *container.InspectResponse) {
			i.Config.Tty, i.Config.OpenStdin, i.Config.AttachStdin, i.Config.AttachStdout = true, true, true, true
			i.Config.StopTimeout = new(30)
		}, func(t *testing.T, c *container.Config) {
			if !c.Tty || !c.OpenStdin || c.AttachStdin || c.AttachStdout || c.StopTimeout == nil || *c.StopTimeout != 30 {
				t.Errorf("tty %t stdin %t attach %t/%t stop timeout %v; want true true false/false 30", c.Tty, c.OpenStdin, c.AttachStdin, c.AttachStdout, c.StopTimeout)
			}
		}},
		{"image label with own value", func(i *container.InspectResponse) {
			i.Config.Labels["build"] = "pinned"
		}, func(t *testing.T, c *container.Config) {
			if c.Labels["build"] != "pinned" {
				t.Errorf("labels %v; want build=pinned kept", c.Labels)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, planTest(t, tt.edit).Config)
		})
	}
}

// TestCloneDropsWhatClashes: published ports, links, fixed addresses and
// MAC addresses are not copied, and each is named in Skipped.
func TestCloneDropsWhatClashes(t *testing.T) {
	s := planTest(t, func(i *container.InspectResponse) {
		i.HostConfig.PortBindings = nat.PortMap{"80/tcp": {{HostIP: "127.0.0.1", HostPort: "8080"}}}
		i.HostConfig.PublishAllPorts = true
		i.HostConfig.Links = []string{"/db:/web/db"}
		i.Config.MacAddress = "02:42:ac:11:00:09" // API 1.41's place for it
		ep := i.NetworkSettings.Networks["app"]
		ep.IPAMConfig = &network.EndpointIPAMConfig{IPv4Address: "172.18.0.9", IPv6Address: "fd00::9"}
		ep.Links = []string{"cache:cache"}
	})
	if s.Host.PortBindings != nil || s.Host.PublishAllPorts || s.Host.Links != nil {
		t.Errorf("ports %v publish-all %t links %v; want none", s.Host.PortBindings, s.Host.PublishAllPorts, s.Host.Links)
	}
	if ep := s.Networks["app"]; ep.IPAMConfig != nil || ep.Links != nil {
		t.Errorf("endpoint IPAM %+v links %v; want none", ep.IPAMConfig, ep.Links)
	}
	for _, want := range []string{
		"published port 80/tcp on 127.0.0.1:8080", "publish all ports", "link /db:/web/db",
		"mac address 02:42:ac:11:00:09", "fixed address 172.18.0.9 on network app", "fixed address fd00::9",
		"link cache:cache on network app",
	} {
		if !skippedHas(s, want) {
			t.Errorf("skipped %q; want a line with %q", s.Skipped, want)
		}
	}
}

// TestCloneVolumes: a named volume and a bind are copied; anonymous
// volumes are not (the copy gets fresh ones where its config or image
// declares them), and each is named in Skipped.
func TestCloneVolumes(t *testing.T) {
	s := planTest(t, func(i *container.InspectResponse) {
		i.HostConfig.Binds = append(i.HostConfig.Binds, "/srv/conf:/conf:ro")
		i.HostConfig.Mounts = []mount.Mount{
			{Type: mount.TypeVolume, Target: "/scratch"},
			{Type: mount.TypeVolume, Source: "logs", Target: "/logs"},
		}
		i.Config.Volumes["/tmpdata"] = struct{}{} // -v /tmpdata
		i.Config.Volumes["/logs"] = struct{}{}    // declared, but a named volume is there
		i.Mounts = append(i.Mounts,
			container.MountPoint{Type: mount.TypeBind, Source: "/srv/conf", Destination: "/conf"},
			container.MountPoint{Type: mount.TypeVolume, Name: strings.Repeat("cd", 32), Destination: "/scratch"},
			container.MountPoint{Type: mount.TypeVolume, Name: "logs", Destination: "/logs"},
			container.MountPoint{Type: mount.TypeVolume, Name: strings.Repeat("ef", 32), Destination: "/tmpdata"},
		)
	})
	if !slices.Equal(s.Host.Binds, []string{"data:/data", "/srv/conf:/conf:ro"}) || len(s.Host.Mounts) != 2 {
		t.Errorf("binds %q mounts %v; want both binds and both mounts", s.Host.Binds, s.Host.Mounts)
	}
	if _, ok := s.Config.Volumes["/tmpdata"]; !ok || len(s.Config.Volumes) != 2 {
		t.Errorf("volumes %v; want /tmpdata (a fresh one, as -v /tmpdata gives) and /logs", s.Config.Volumes)
	}
	want := []string{
		"anonymous volume abababababab at /cache: not copied (its data stays with the old container): there is no volume there in the new container",
		"anonymous volume cdcdcdcdcdcd at /scratch: not copied (its data stays with the old container): the new container gets a fresh, empty one",
		"anonymous volume efefefefefef at /tmpdata: not copied (its data stays with the old container): the new container gets a fresh, empty one",
	}
	if !slices.Equal(s.Skipped, want) {
		t.Errorf("skipped:\n%s\nwant:\n%s", strings.Join(s.Skipped, "\n"), strings.Join(want, "\n"))
	}
}

// TestCloneNetworks: the network the mode names is the one the copy is
// created on, else the first by name; host, none and container modes keep
// the mode and take no endpoints.
func TestCloneNetworks(t *testing.T) {
	eps := func(names ...string) map[string]*network.EndpointSettings {
		m := map[string]*network.EndpointSettings{}
		for i, n := range names {
			m[n] = &network.EndpointSettings{NetworkID: fmt.Sprintf("%d%s", i, strings.Repeat("f", 63)), Aliases: []string{cloneTestID[:12]}}
		}
		return m
	}
	tests := []struct {
		mode     container.NetworkMode
		networks map[string]*network.EndpointSettings
		wantMode container.NetworkMode
		wantEPs  int
	}{
		{"zeta", eps("alpha", "zeta", "app"), "zeta", 3},
		{"gone", eps("zeta", "app"), "app", 2},
		{"default", eps("app", "bridge"), "bridge", 2},
		{"1fffffffffff", eps("a", "b"), "b", 2}, // by id prefix
		{"host", eps("host"), "host", 0},
		{"none", eps("none"), "none", 0},
		{"container:" + cloneTestID, nil, "container:" + cloneTestID, 0},
		{"app", nil, "none", 0}, // on no network now
	}
	for _, tt := range tests {
		t.Run(string(tt.mode), func(t *testing.T) {
			s := planTest(t, func(i *container.InspectResponse) {
				i.HostConfig.NetworkMode = tt.mode
				i.NetworkSettings.Networks = tt.networks
				i.Config.Hostname = "explicit"
			})
			if s.Host.NetworkMode != tt.wantMode || len(s.Networks) != tt.wantEPs {
				t.Errorf("mode %q, %d endpoints; want %q, %d", s.Host.NetworkMode, len(s.Networks), tt.wantMode, tt.wantEPs)
			}
			for name, ep := range s.Networks {
				if len(ep.Aliases) != 0 {
					t.Errorf("aliases on %s: %q; want the short id dropped", name, ep.Aliases)
				}
			}
			if wantHost := !tt.wantMode.IsContainer(); (s.Config.Hostname == "explicit") != wantHost {
				t.Errorf("hostname %q in mode %s", s.Config.Hostname, tt.wantMode)
			}
		})
	}
}

func TestCloneNextName(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"/web", "web-2"},
		{"web", "web-2"},
		{"web-2", "web-3"},
		{"myapp_web_1", "myapp_web_2"},
		{"myapp-web-1", "myapp-web-2"},
		{"job-09", "job-10"},
		{"job-99", "job-100"},
		{"web.1", "web.2"},
		{"web2", "web2-2"},
		{"web-", "web--2"},
		{"web-99999999999999999999", "web-99999999999999999999-2"},
	} {
		if got := nextName(tt.in); got != tt.want {
			t.Errorf("nextName(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

// TestCloneComposeLabels: compose's labels are kept, and its replica
// number follows the copy's name.
func TestCloneComposeLabels(t *testing.T) {
	compose := map[string]string{
		"com.docker.compose.project": "myapp", "com.docker.compose.service": "web",
		composeNumberLabel: "1", "com.docker.compose.oneoff": "False",
	}
	edit := func(i *container.InspectResponse) {
		i.Name = "/myapp_web_1"
		maps.Copy(i.Config.Labels, compose)
	}
	s := planTest(t, edit)
	if s.Name != "myapp_web_2" {
		t.Errorf("name %q; want myapp_web_2", s.Name)
	}
	want := maps.Clone(compose)
	want[composeNumberLabel] = "2"
	want["role"] = "web"
	if !maps.Equal(s.Config.Labels, want) {
		t.Errorf("labels %v; want %v", s.Config.Labels, want)
	}

	// myapp_web_2 taken: planNext moves on, and the number with it.
	f := newFakeClone(t, edit)
	f.names = []string{"/myapp_web_2", "/other"}
	s, err := planNext(context.Background(), f, cloneTestID, "myapp:latest", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != "myapp_web_3" || s.Config.Labels[composeNumberLabel] != "3" {
		t.Errorf("name %q, number %q; want myapp_web_3, 3", s.Name, s.Config.Labels[composeNumberLabel])
	}
}

// fakeClone is a daemon with one container and two images; it records the
// calls that change things.
type fakeClone struct {
	info    container.InspectResponse
	images  map[string]image.InspectResponse
	names   []string // of the containers that ContainerList finds
	filters []string // name filters listed with

	createErrs []error // returned by the creates in turn, then nil
	lostCreate func()  // if set, a create makes the container, calls it and returns its context's error
	connectErr error
	startErr   error
	onStart    func()

	calls   []string
	created []fakeCreated
	made    map[string]container.InspectResponse // the created containers, by name
	removed []string
}

type fakeCreated struct {
	name   string
	cfg    container.Config
	netCfg *network.NetworkingConfig
}

func newFakeClone(t *testing.T, edit func(*container.InspectResponse)) *fakeClone {
	t.Helper()
	f := &fakeClone{info: cloneServing(), images: map[string]image.InspectResponse{
		"sha256:0ld": cloneOldImage(), "myapp:latest": cloneNewImage(),
	}}
	if edit != nil {
		edit(&f.info)
	}
	return f
}

func (f *fakeClone) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	if id == f.info.ID {
		return f.info, nil
	}
	if c, ok := f.made[id]; ok {
		return c, nil
	}
	return container.InspectResponse{}, fmt.Errorf("no such container %s: %w", id, cerrdefs.ErrNotFound)
}

func (f *fakeClone) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	f.filters = append(f.filters, o.Filters.Get("name")...)
	return []container.Summary{{Names: f.names}}, nil
}

func (f *fakeClone) ImageInspect(_ context.Context, ref string, _ ...client.ImageInspectOption) (image.InspectResponse, error) {
	img, ok := f.images[ref]
	if !ok {
		return img, fmt.Errorf("No such image: %s: %w", ref, cerrdefs.ErrNotFound)
	}
	return img, nil
}

func (f *fakeClone) ContainerCreate(ctx context.Context, cfg *container.Config, _ *container.HostConfig, netCfg *network.NetworkingConfig, _ *ocispec.Platform, name string) (container.CreateResponse, error) {
	f.calls = append(f.calls, "create "+name)
	if len(f.createErrs) > 0 {
		err := f.createErrs[0]
		f.createErrs = f.createErrs[1:]
		if err != nil {
			return container.CreateResponse{}, err
		}
	}
	f.created = append(f.created, fakeCreated{name, *cfg, netCfg})
	if f.made == nil {
		f.made = map[string]container.InspectResponse{}
	}
	f.made[name] = container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: "new-" + name, State: &container.State{Status: container.StateCreated}},
		Config:            cfg,
	}
	if f.lostCreate != nil {
		f.lostCreate()
		return container.CreateResponse{}, ctx.Err()
	}
	return container.CreateResponse{ID: "new-" + name}, nil
}

func (f *fakeClone) NetworkConnect(_ context.Context, net, id string, _ *network.EndpointSettings) error {
	f.calls = append(f.calls, "connect "+id+" "+net)
	return f.connectErr
}

func (f *fakeClone) ContainerStart(_ context.Context, id string, _ container.StartOptions) error {
	f.calls = append(f.calls, "start "+id)
	if f.onStart != nil {
		f.onStart()
	}
	return f.startErr
}

func (f *fakeClone) ContainerRemove(ctx context.Context, id string, o container.RemoveOptions) error {
	f.calls = append(f.calls, fmt.Sprintf("remove %s force=%t ctxErr=%v", id, o.Force, ctx.Err()))
	f.removed = append(f.removed, id)
	return nil
}

// TestClonePlanNext: env overrides replace or add entries; a bad one, a
// missing image or container is an error that names it.
func TestClonePlanNext(t *testing.T) {
	ctx := context.Background()
	f := newFakeClone(t, nil)
	f.names = []string{"/web", "/web-2"}
	s, err := planNext(ctx, f, cloneTestID, "myapp:latest", []string{"FOO=baz", "NEW=1", "EMPTY="})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"FOO=baz", "NEW=1", "EMPTY="}; !slices.Equal(s.Config.Env, want) {
		t.Errorf("env %q; want %q", s.Config.Env, want)
	}
	if s.Name != "web-3" {
		t.Errorf("name %q; want web-3 (web-2 is taken)", s.Name)
	}
	if !slices.Equal(f.filters, []string{"^/?web-"}) {
		t.Errorf("listed with name filters %q; want [^/?web-]", f.filters)
	}
	if s.image.ID != "sha256:4e3" {
		t.Errorf("planned with image %q; want the new one", s.image.ID)
	}

	for _, tt := range []struct {
		env        []string
		ref, id    string
		wantErr    string
		wantNotFnd bool
	}{
		{env: []string{"FOO"}, wantErr: `env "FOO": want KEY=VALUE`},
		{env: []string{"=x"}, wantErr: `env "=x": want KEY=VALUE`},
		{ref: "myapp:gone", wantErr: "image myapp:gone: not found locally", wantNotFnd: true},
		{id: "0123456789abcdef", wantErr: "inspect 0123456789ab", wantNotFnd: true},
	} {
		ref, id := cmp.Or(tt.ref, "myapp:latest"), cmp.Or(tt.id, cloneTestID)
		_, err := planNext(ctx, newFakeClone(t, nil), id, ref, tt.env)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || cerrdefs.IsNotFound(err) != tt.wantNotFnd {
			t.Errorf("planNext(%s, %s, %q): %v; want an error with %q (not found: %t)", id, ref, tt.env, err, tt.wantErr, tt.wantNotFnd)
		}
	}
}

// TestCloneStart: created on the first network, connected to the others
// before the start; a name taken meanwhile moves on.
func TestCloneStart(t *testing.T) {
	f := newFakeClone(t, func(i *container.InspectResponse) {
		i.NetworkSettings.Networks["zeta"] = &network.EndpointSettings{Aliases: []string{"z"}}
		i.NetworkSettings.Networks["bridge"] = &network.EndpointSettings{}
	})
	f.createErrs = []error{fmt.Errorf("name in use: %w", cerrdefs.ErrConflict)}
	s, err := planNext(context.Background(), f, cloneTestID, "myapp:latest", nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := s.start(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"create web-2", "create web-3", "connect new-web-3 bridge", "connect new-web-3 zeta", "start new-web-3"}
	if id != "new-web-3" || !slices.Equal(f.calls, want) {
		t.Errorf("id %q, calls %q; want new-web-3, %q", id, f.calls, want)
	}
	nc := f.created[0].netCfg
	if nc == nil || len(nc.EndpointsConfig) != 1 || nc.EndpointsConfig["app"] == nil {
		t.Errorf("created with %+v; want the app network alone", nc)
	}
	if s.Name != "web-2" {
		t.Errorf("start renamed its receiver's copy: %q", s.Name)
	}
}

// TestCloneStartFailureRemoves: a failed connect or start removes the
// container, even when the context has ended; so does a create whose
// answer the ended context lost; a failed create leaves nothing to
// remove.
func TestCloneStartFailureRemoves(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		set     func(f *fakeClone, cancel func())
		wantErr error
		want    string
	}{
		{"connect", func(f *fakeClone, _ func()) { f.connectErr = boom }, boom, "connect web-2 (new-web-2) to zeta: boom"},
		{"start", func(f *fakeClone, cancel func()) { f.startErr, f.onStart = boom, cancel }, boom, "start web-2 (new-web-2): boom"},
		{"create", func(f *fakeClone, _ func()) { f.createErrs = []error{boom} }, boom, "create web-2: boom"},
		{"create answer lost", func(f *fakeClone, cancel func()) { f.lostCreate = cancel }, context.Canceled, "create web-2: context canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeClone(t, func(i *container.InspectResponse) {
				i.NetworkSettings.Networks["zeta"] = &network.EndpointSettings{}
			})
			s, err := planNext(context.Background(), f, cloneTestID, "myapp:latest", nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			tt.set(f, cancel)
			id, err := s.start(ctx, f)
			if id != "" || !errors.Is(err, tt.wantErr) || err.Error() != tt.want {
				t.Errorf("start: %q, %v; want no id and %q", id, err, tt.want)
			}
			wantRemoved := []string{"new-web-2"}
			if tt.name == "create" {
				wantRemoved = nil
			}
			if !slices.Equal(f.removed, wantRemoved) {
				t.Errorf("removed %q; want %q (calls %q)", f.removed, wantRemoved, f.calls)
			}
			if last := f.calls[len(f.calls)-1]; wantRemoved != nil && last != "remove new-web-2 force=true ctxErr=<nil>" {
				t.Errorf("last call %q; want a forced remove with a live context", last)
			}
		})
	}
}

// TestCloneDescribe: the dry-run text names what deploy would create, and
// what it did not copy.
func TestCloneDescribe(t *testing.T) {
	s := planTest(t, func(i *container.InspectResponse) {
		i.HostConfig.PortBindings = nat.PortMap{"80/tcp": {{HostPort: "8080"}}}
		i.HostConfig.RestartPolicy = container.RestartPolicy{Name: container.RestartPolicyOnFailure, MaximumRetryCount: 3}
		i.Config.Cmd = []string{"serve", "-v"}
	})
	s.Config.Env = applyEnv(s.Config.Env, []string{"NEW=1"})
	var b bytes.Buffer
	if err := s.describe(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"name:        web-2\n",
		"image:       myapp:latest (4e3)\n",
		"entrypoint:  [\"/app2\"]  (image)\n",
		"cmd:         [\"serve\" \"-v\"]\n",
		"user:        app2  (image)\n",
		"env:         FOO=bar\n             NEW=1\n             PATH=/bin  (image)\n             MODE=new  (image)\n",
		"labels:      role=web\n             build=2  (image)\n",
		"mounts:      volume data -> /data\n",
		"networks:    app (aliases web) (created on it)\n",
		"restart:     on-failure:3\n",
		"resources:   memory 64m\n",
		"healthcheck: (none)\n",
		"not copied:\n  - published port 80/tcp on host port 8080:",
		"  - anonymous volume abababababab at /cache",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("describe lacks %q:\n%s", want, out)
		}
	}
}
