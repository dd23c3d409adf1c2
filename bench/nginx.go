package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// nginx's stream module, as Debian ships it: the nginx package and the
// dynamic module libnginx-mod-stream (on Debian 12, nginx-light and
// nginx-core are only transitional packages that depend on nginx).
const (
	nginxPackages     = "nginx libnginx-mod-stream"
	nginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"
)

// ensureNginx reports whether nginx with the stream module is installed,
// installing Debian's packages when it is not. Without it the run goes on
// without nginx.
func ensureNginx(ctx context.Context) bool {
	return aptEnsure(ctx, "nginx's stream module", nginxPackages, func() bool {
		_, ok := nginxStream()
		return ok
	})
}

// nginxStream finds nginx and says how it gets the stream module: a
// load_module line for the dynamic module, or nothing when it is built in.
func nginxStream() (loadModule string, ok bool) {
	if _, err := exec.LookPath("nginx"); err != nil {
		return "", false
	}
	if _, err := os.Stat(nginxStreamModule); err == nil {
		return "load_module " + nginxStreamModule + ";\n", true
	}
	// nginx -V prints its configure arguments on stderr.
	out, _ := exec.Command("nginx", "-V").CombinedOutput()
	for arg := range strings.FieldsSeq(string(out)) {
		if arg == "--with-stream" {
			return "", true
		}
	}
	return "", false
}

// startNginx runs nginx's stream module in front of the first container,
// configured as in production: one stream server per backend port (the
// four docker-proxy forwards), a worker per core under a master (master
// and workers are one process tree, which the /proc figures sum over),
// enough worker_connections for the idle measurement, no access log. It
// stays in the foreground (daemon off) and everything it writes is in the
// temp dir: the error log goes to stderr, which is the proxy's log file,
// and -p, -e and pid keep it off /etc/nginx and /var.
func (b *bench) startNginx(ctx context.Context) (*target, error) {
	loadModule, ok := nginxStream()
	if !ok {
		return nil, fmt.Errorf("no nginx with the stream module")
	}
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(b.tmp, "nginx")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	wc := b.nginxWorkerConnections()
	var cfg strings.Builder
	cfg.WriteString(loadModule)
	cfg.WriteString("daemon off;\nmaster_process on;\nworker_processes auto;\n")
	fmt.Fprintf(&cfg, "worker_rlimit_nofile %d;\n", b.fdLimit)
	fmt.Fprintf(&cfg, "pid %s;\nlock_file %s;\n", filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "nginx.lock"))
	cfg.WriteString("error_log stderr warn;\n")
	fmt.Fprintf(&cfg, "\nevents {\n    worker_connections %d;\n}\n", wc)
	cfg.WriteString("\nstream {\n    access_log off;\n    proxy_connect_timeout 5s;\n    proxy_timeout 10m;\n")
	for i, cp := range []int{portSource, portSink, portEcho, portHTTP} {
		fmt.Fprintf(&cfg, "\n    server {\n        listen 127.0.0.1:%d;\n        proxy_pass %s;\n    }\n", ports[i], addr(b.ip, cp))
	}
	cfg.WriteString("}\n")
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		return nil, err
	}
	p, err := b.startTree(tNginx, "nginx", "-p", dir+"/", "-e", "stderr", "-c", path)
	if err != nil {
		return nil, err
	}
	t := loopbackTarget(tNginx, p, ports)
	return t, waitTarget(ctx, t)
}

// nginxWorkerConnections is enough for every idle connection (2 each,
// client and upstream) in one worker, since nothing spreads them evenly,
// plus room for the listeners and the other measurements; and no more
// than fits under the fd limit, since each one is a descriptor. It is not
// simply the fd limit, which may be a million: nginx allocates and touches
// its connection table up front.
func (b *bench) nginxWorkerConnections() int {
	return max(512, min(int(b.fdLimit)-100, 2*b.p.idleConns+1024))
}

func nginxVersion() string {
	out, err := exec.Command("nginx", "-v").CombinedOutput()
	if err != nil {
		return "no nginx"
	}
	// nginx version: nginx/1.22.1
	if _, v, ok := strings.Cut(string(out), "nginx/"); ok && len(strings.Fields(v)) > 0 {
		return "nginx " + strings.Fields(v)[0]
	}
	return "nginx"
}
