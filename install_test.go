package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallScript: make install never puts our docker-proxy where dockerd
// would take it for its own userland proxy.
func TestInstallScript(t *testing.T) {
	bin := proxyBinary(t)
	script, err := filepath.Abs("scripts/install.sh")
	if err != nil {
		t.Fatal(err)
	}
	fakeDockerProxy := "#!/bin/sh\nexit 0\n"
	tests := []struct {
		name      string
		setup     func(root string) // files beside the install
		pathDirs  []string          // dockerd's PATH, relative to root
		pin       bool              // daemon.json pins Docker's own
		wantError string            // "" if the install must succeed
	}{
		{"no docker-proxy of Docker's", nil, []string{"local/bin", "sbin"}, false, ""},
		{"dockerd in the folder", func(root string) { write(t, root, "local/bin/dockerd", fakeDockerProxy) },
			[]string{"local/bin"}, false, "dockerd lives in"},
		{"Docker's own later on PATH", func(root string) { write(t, root, "sbin/docker-proxy", fakeDockerProxy) },
			[]string{"local/bin", "sbin"}, false, "dockerd would find ours"},
		{"Docker's own pinned", func(root string) { write(t, root, "sbin/docker-proxy", fakeDockerProxy) },
			[]string{"local/bin", "sbin"}, true, ""},
		{"Docker's own earlier on PATH", func(root string) { write(t, root, "sbin/docker-proxy", fakeDockerProxy) },
			[]string{"sbin", "local/bin"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			if tt.setup != nil {
				tt.setup(root)
			}
			var dirs []string
			for _, d := range tt.pathDirs {
				dirs = append(dirs, filepath.Join(root, d))
			}
			daemonJSON := filepath.Join(root, "daemon.json")
			if tt.pin {
				write(t, root, "daemon.json", `{"userland-proxy-path": "`+filepath.Join(root, "sbin/docker-proxy")+`"}`)
			}
			cmd := exec.Command(script)
			cmd.Env = append(os.Environ(), "BIN="+bin, "PREFIX="+filepath.Join(root, "local"),
				"DOCKERD_PATH="+strings.Join(dirs, ":"), "DAEMON_JSON="+daemonJSON)
			out, err := cmd.CombinedOutput()
			installed := filepath.Join(root, "local/bin/docker-proxy")
			_, statErr := os.Stat(installed)
			if tt.wantError == "" {
				if err != nil || statErr != nil {
					t.Fatalf("install failed: %v\n%s", err, out)
				}
				return
			}
			if err == nil || !strings.Contains(string(out), tt.wantError) {
				t.Errorf("got %v:\n%s\nwant a refusal saying %q", err, out, tt.wantError)
			}
			if statErr == nil {
				t.Errorf("%s was installed despite the refusal", installed)
			}
		})
	}
}

func write(t *testing.T, root, name, text string) {
	t.Helper()
	p := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
}
