package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// The docker CLI is enough for the few calls the benchmark makes, and
// keeps the benchmark free of the Docker client library.

// docker runs one docker command and returns its trimmed output.
func docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("docker %s: %v: %s", args[0], err, strings.TrimSpace(string(ee.Stderr)))
		}
		return "", fmt.Errorf("docker %s: %v", args[0], err)
	}
	return strings.TrimSpace(string(out)), nil
}

// startContainer starts a container of the run's tag, labelled and named
// for the run, with /status ready readyAfter after the process starts. It
// keeps the daemon's fd limit (here the same as the host's).
func (b *bench) startContainer(ctx context.Context, name string, readyAfter string) (string, error) {
	if readyAfter == "" {
		readyAfter = "0s"
	}
	return docker(ctx, "run", "-d", "--label", b.label, "--name", "docker-proxy-bench-"+b.run+"-"+name,
		b.tag, "-ready_after", readyAfter)
}

// containerIP is the container's address on the default bridge, or else
// on its first network.
func containerIP(ctx context.Context, id string) (string, error) {
	out, err := docker(ctx, "inspect", "-f",
		"{{.NetworkSettings.IPAddress}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", id)
	if err != nil {
		return "", err
	}
	for _, f := range strings.Fields(out) {
		return f, nil
	}
	return "", fmt.Errorf("container %.12s has no IP address", id)
}

// runningContainers lists the run's running containers.
func runningContainers(ctx context.Context, label string) []string {
	out, _ := docker(ctx, "ps", "-q", "--filter", "label="+label)
	return strings.Fields(out)
}

// removeContainers removes every container of the run, running or not.
func removeContainers(ctx context.Context, label string) {
	out, _ := docker(ctx, "ps", "-aq", "--filter", "label="+label)
	if ids := strings.Fields(out); len(ids) > 0 {
		if _, err := docker(ctx, append([]string{"rm", "-f"}, ids...)...); err != nil {
			fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
		}
	}
}

func removeImage(ctx context.Context, tag string) {
	if _, err := docker(ctx, "image", "inspect", "-f", "{{.Id}}", tag); err != nil {
		return // never built
	}
	if _, err := docker(ctx, "rmi", "-f", tag); err != nil {
		fmt.Fprintln(os.Stderr, "bench: cleanup:", err)
	}
}
