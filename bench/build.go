package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Building: both binaries are static (CGO_ENABLED=0) so that the backend
// runs FROM scratch, and built from this checkout so that the benchmark
// measures the code beside it.

// repoRoot is the directory of the go.mod above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from the repository")
		}
		dir = parent
	}
}

func goBuild(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
	}
	return nil
}

// buildImage builds tag FROM scratch around dir/backend.
func buildImage(ctx context.Context, dir, tag string) error {
	df := "FROM scratch\nCOPY backend /backend\nENTRYPOINT [\"/backend\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
		return err
	}
	_, err := docker(ctx, "build", "-q", "-t", tag, dir)
	return err
}

// ensureHAProxy reports whether haproxy is on PATH, installing Debian's
// package when it is not. Without it the run goes on without HAProxy.
func ensureHAProxy(ctx context.Context) bool {
	return aptEnsure(ctx, "HAProxy", "haproxy", func() bool {
		_, err := exec.LookPath("haproxy")
		return err == nil
	})
}

// ensureERB reports whether erb is on PATH (Debian's ruby), installing
// it when it is not. Without it the restart phase has no container modes.
func ensureERB(ctx context.Context) bool {
	return aptEnsure(ctx, "erb", "ruby", func() bool {
		_, err := exec.LookPath("erb")
		return err == nil
	})
}

// aptUpdated: this run has run apt-get update already (for HAProxy).
var aptUpdated bool

// aptEnsure reports whether have, installing Debian's pkgs first when it
// does not. Without them the run goes on without what, and says so.
func aptEnsure(ctx context.Context, what, pkgs string, have func() bool) bool {
	if have() {
		return true
	}
	// A fresh machine has no package lists yet: update first, once a run.
	sh := "apt-get install -y -qq " + pkgs
	if !aptUpdated {
		sh = "apt-get update -qq && " + sh
	}
	step("%s is not installed: %s", what, strings.ReplaceAll(sh, " -qq", ""))
	cmd := exec.CommandContext(ctx, "sh", "-c", sh)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	aptUpdated = true // had it failed, it would fail again
	if err == nil && !have() {
		err = errors.New("installed, but still missing")
	}
	if err != nil {
		msg := ""
		if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); lines[len(lines)-1] != "" {
			msg = ": " + lines[len(lines)-1]
		}
		fmt.Printf("   could not install %s (%v)%s\n   going on without %s\n", pkgs, err, msg, what)
		return false
	}
	return true
}
