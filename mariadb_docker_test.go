package main

// MariaDB behind -status_port, against the real daemon: Debian's
// mariadb-server, with its defaults, run in a container from an image
// built FROM scratch in this run (see mariadbImage).
//
// What MariaDB 10.11.19 (Debian 12's 1:10.11.19-0+deb12u1) counts, seen in
// performance_schema.host_cache (on only for that look) and pinned by
// TestDockerMariaDBCountsProbes. The server speaks first: a greeting, or
// an error packet in its place.
//   - A TCP connection from a client address that ends before the
//     client's handshake response is a handshake error: one more of the
//     address's SUM_CONNECT_ERRORS. So are connect and close at once
//     (what -status_port does), connect, read the greeting and close,
//     the same with a half-close (FIN) waiting for the server to close,
//     and connect and say nothing (the server resets the connection
//     after connect_timeout, 10s). A reset (SO_LINGER 0) right after the
//     connect is counted unless it reaches the server before it asks for
//     the peer's address (a race; then Connection_errors_peer_address).
//   - A failed login (a handshake with a wrong password, 1045, or an
//     unknown user, 1698) is an authentication error, not counted there.
//   - A successful login resets the address's count to zero; COM_QUIT
//     after it is a clean end (no Aborted_clients).
//   - Once the count reaches max_connect_errors (100), every new
//     connection from the address gets error packet 1129 in place of the
//     greeting, until FLUSH HOSTS; the TCP connect itself still succeeds.
//   - The host cache, and so the count and the block, is used only with
//     name resolution on (the default): with skip-name-resolve nothing is
//     counted. The lookup need not succeed: an address with no name is
//     cached, counted and blocked by its IP.

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/go-sql-driver/mysql"
)

// Debian's mariadb-server puts its files here.
const (
	mariadbd      = "/usr/sbin/mariadbd"
	mariadbInstDB = "/usr/bin/mariadb-install-db"
	mariadbShare  = "/usr/share/mysql" // errmsg files and charsets
)

// The account the tests log in with, from any host; created at start-up.
const (
	mariadbUser = "proxytest"
	mariadbPass = "proxytest"
)

var (
	mariadbOnce sync.Once
	mariadbBase string // the MariaDB image, tagged prefix:mariadb
	mariadbErr  error
)

// needMariaDB skips the test where mariadb-server is not installed,
// except in CI (CI set), where .ci/run installs it and a missing one
// fails the test.
func needMariaDB(t testing.TB) {
	t.Helper()
	var missing []string
	for _, p := range []string{mariadbd, mariadbInstDB, filepath.Join(mariadbShare, "english", "errmsg.sys")} {
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, p)
		}
	}
	if _, err := exec.LookPath("ldd"); err != nil {
		missing = append(missing, "ldd")
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("mariadb-server is needed in CI (.ci/run installs it): missing %s", strings.Join(missing, ", "))
	}
	t.Skipf("mariadb-server is not installed: missing %s", strings.Join(missing, ", "))
}

// mariadbImage gives the test its own tag of an image that runs the
// host's mariadbd FROM scratch: the binary, the shared libraries ldd
// lists (the loader among them), the english error messages and the
// charsets, a /etc/passwd for --user=root, and a data directory made by
// mariadb-install-db, built once per run. The server runs with its
// compiled-in defaults (--no-defaults: no option file is read), so
// max_connect_errors is 100 and names are resolved; /etc/nsswitch.conf
// resolves hosts from /etc/hosts alone, so that the reverse lookup of a
// client's address never sends a DNS query off this machine. An init
// file creates the test account at every start.
func mariadbImage(t testing.TB) string {
	t.Helper()
	needMariaDB(t)
	cli := needDocker(t)
	mariadbOnce.Do(func() {
		mariadbBase = prefix + ":mariadb"
		start := time.Now()
		mariadbErr = buildMariaDBImage(mariadbBase)
		t.Logf("built the MariaDB image in %v", time.Since(start).Round(100*time.Millisecond))
	})
	if mariadbErr != nil {
		t.Fatalf("MariaDB image: %v", mariadbErr)
	}
	name := strings.Trim(nonName.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 60 {
		name = name[:60]
	}
	ref := prefix + "-" + name + ":mariadb"
	if err := cli.ImageTag(context.Background(), mariadbBase, ref); err != nil {
		t.Fatalf("tag %s: %v", ref, err)
	}
	t.Cleanup(func() {
		_, _ = cli.ImageRemove(context.Background(), ref, image.RemoveOptions{Force: true, PruneChildren: true})
	})
	return ref
}

func buildMariaDBImage(ref string) error {
	files := map[string]string{"usr/sbin/mariadbd": mariadbd}
	libs, err := sharedLibs(mariadbd)
	if err != nil {
		return err
	}
	var libDirs []string
	for _, lib := range libs {
		files[strings.TrimPrefix(lib, "/")] = lib
		if d := filepath.Dir(lib); !slices.Contains(libDirs, d) {
			libDirs = append(libDirs, d)
		}
	}
	for _, dir := range []string{"english", "charsets"} {
		if err := addTree(files, filepath.Join(mariadbShare, dir), "usr/share/mysql/"+dir); err != nil {
			return err
		}
	}

	tmp, err := os.MkdirTemp("", "dockerproxy-mariadb")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	data := filepath.Join(tmp, "data")
	// --skip-name-resolve here only names the initial grant rows by IP
	// rather than resolving this host's name; the server in the
	// container resolves names (the default). The smallest redo log
	// keeps the image small: the server resizes it to its default
	// (96 MiB) at start.
	args := []string{"--no-defaults", "--datadir=" + data, "--skip-test-db", "--skip-name-resolve", "--innodb-log-file-size=4M"}
	if os.Geteuid() == 0 {
		args = append(args, "--user=root")
	}
	if out, err := exec.Command(mariadbInstDB, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("mariadb-install-db: %v\n%s", err, out)
	}
	if err := addTree(files, data, "var/lib/mysql"); err != nil {
		return err
	}

	inline := map[string]string{
		"Dockerfile": "FROM scratch\nCOPY . /\n" +
			"ENV LD_LIBRARY_PATH=" + strings.Join(libDirs, ":") + "\n" +
			`ENTRYPOINT ["/usr/sbin/mariadbd", "--no-defaults", "--user=root", "--init-file=/init.sql"]` + "\n",
		"etc/passwd":        "root:x:0:0:root:/root:/sbin/nologin\n",
		"etc/group":         "root:x:0:\n",
		"etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files\n",
		"tmp/.keep":         "",
		"run/mysqld/.keep":  "", // the default socket's directory
		"init.sql": fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%%' IDENTIFIED BY '%s';\n"+
			"GRANT ALL PRIVILEGES ON *.* TO '%[1]s'@'%%';\n", mariadbUser, mariadbPass),
	}
	return buildImage(ref, inline, files)
}

// sharedLibs lists the absolute paths ldd prints for bin: the libraries
// it loads and the loader.
func sharedLibs(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %v", bin, err)
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.Contains(line, "not found") {
			return nil, fmt.Errorf("ldd %s: %s", bin, line)
		}
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		if p, _, _ := strings.Cut(line, " "); strings.HasPrefix(p, "/") {
			libs = append(libs, p)
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s listed no library:\n%s", bin, out)
	}
	return libs, nil
}

// addTree adds every regular file under dir to files, under to.
func addTree(files map[string]string, dir, to string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		files[filepath.ToSlash(filepath.Join(to, rel))] = path
		return nil
	})
}

// startMariaDB runs the MariaDB image with extra server options. The
// container's DNS server is its own loopback (belt and braces beside
// nsswitch.conf: no lookup leaves the container).
func startMariaDB(t testing.TB, ref string, opts ...string) testCtr {
	t.Helper()
	return startCtrWith(t, &container.Config{Image: ref, Cmd: opts}, &container.HostConfig{DNS: []string{"127.0.0.1"}})
}

// mariadbLogin logs in at addr as the test account, asks the server's
// hostname (the container's) and quits (COM_QUIT).
func mariadbLogin(addr, password string) (string, error) {
	cfg := mysql.NewConfig()
	cfg.User, cfg.Passwd, cfg.Net, cfg.Addr = mariadbUser, password, "tcp", addr
	cfg.Timeout, cfg.ReadTimeout, cfg.WriteTimeout = 5*time.Second, 5*time.Second, 5*time.Second
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return "", err
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var host string
	err = db.QueryRowContext(ctx, "SELECT @@hostname").Scan(&host)
	return host, err
}

// mysqlErrNo is the server's error number in err, or 0.
func mysqlErrNo(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// waitMariaDB waits until a login at addr succeeds.
func waitMariaDB(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	var err error
	eventually(t, timeout, "MariaDB at "+addr+" taking a login", func() bool {
		_, err = mariadbLogin(addr, mariadbPass)
		return err == nil
	})
}

// bareConnect connects and closes at once, reading nothing: what
// -status_port's probe does today.
func bareConnect(t testing.TB, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	_ = c.Close()
}

// politeProbe is a well-behaved client that knows nothing of the
// protocol: it reads the server's first bytes, half-closes (FIN) and
// reads until the server closes. Once it returns, the server is done
// with the connection, and has counted it if it counts it.
func politeProbe(t testing.TB, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("connect %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 512)); err != nil {
		t.Fatalf("read the greeting of %s: %v", addr, err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("wait for %s to close: %v", addr, err)
	}
}

// blocked tells, without changing the address's count, whether the
// server refuses the address: a login with a wrong password is an
// authentication error (1045), not a connect error, unless the address
// is blocked (1129).
func blocked(t testing.TB, addr string) bool {
	t.Helper()
	_, err := mariadbLogin(addr, "not-"+mariadbPass)
	switch mysqlErrNo(err) {
	case 1129:
		return true
	case 1045:
		return false
	}
	t.Fatalf("login with a wrong password at %s: %v; want error 1045 or 1129", addr, err)
	return false
}

// TestDockerMariaDBCountsProbes pins what the regression test below
// relies on, directly against the container (no proxy): a probe that
// ends before the MySQL handshake, however politely, is a connection
// error of the prober's address; a login resets the count; at
// max_connect_errors (100) the address is blocked; with skip-name-resolve
// nothing is counted.
func TestDockerMariaDBCountsProbes(t *testing.T) {
	ref := mariadbImage(t)
	def := startMariaDB(t, ref)
	noResolve := startMariaDB(t, ref, "--skip-name-resolve")
	addr := netip.AddrPortFrom(def.ip, 3306).String()
	waitMariaDB(t, addr, 30*time.Second)

	// 99 errors, then a login: not blocked, and the count is back to 0,
	// else the next 99 would block.
	for round := range 2 {
		for range 99 {
			politeProbe(t, addr)
		}
		if blocked(t, addr) {
			t.Fatalf("round %d: blocked after 99 probes; want blocked only at 100", round)
		}
		if _, err := mariadbLogin(addr, mariadbPass); err != nil {
			t.Fatalf("round %d: login after 99 probes: %v", round, err)
		}
	}
	// Bare connects count the same: 99 of them and one more probe block.
	for range 99 {
		bareConnect(t, addr)
	}
	politeProbe(t, addr)
	eventually(t, 5*time.Second, "blocked after 100 probes (99 bare connects)", func() bool { return blocked(t, addr) })
	if _, err := mariadbLogin(addr, mariadbPass); mysqlErrNo(err) != 1129 {
		t.Fatalf("login once blocked: %v; want error 1129", err)
	}

	// With skip-name-resolve, no host cache: never blocked.
	addr = netip.AddrPortFrom(noResolve.ip, 3306).String()
	waitMariaDB(t, addr, 30*time.Second)
	for range 150 {
		politeProbe(t, addr)
	}
	if blocked(t, addr) {
		t.Fatal("blocked with skip-name-resolve")
	}
}

// TestDockerStatusPortMariaDBLongGrace is issue 9's outage 6: with
// -status_port 3306 and a grace period long enough for 150 probes at
// 200ms, no client in between, the new MariaDB container must still take
// a proxied login once the old one is retired. Today the probes block the
// proxy's address (error 1129) while the proxy serves the container.
func TestDockerStatusPortMariaDBLongGrace(t *testing.T) {
	ref := mariadbImage(t)
	const grace = 30 * time.Second
	old := startMariaDB(t, ref)
	cfg := testConfig(ref, portMap{3306, 3306})
	cfg.statusPort = 3306
	cfg.statusTimeout = 30 * time.Second
	cfg.grace = grace
	p := startProxy(t, cfg)
	p.logs.waitLog(t, 30*time.Second, "serving", "container", old.short())
	if host, err := mariadbLogin(p.addrs[0], mariadbPass); err != nil || host != old.host {
		t.Fatalf("login through the proxy: host %q, %v; want the old container %s", host, err, old.host)
	}

	nu := startMariaDB(t, ref)
	p.logs.waitLog(t, 30*time.Second, "swap", "container", nu.short(), "previous", old.short())
	swapped := time.Now()
	// No client until the grace period is over and the old container is
	// gone: nothing but the proxy's probes reaches the new one.
	eventually(t, grace+15*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
	t.Logf("old container removed %v after the swap", time.Since(swapped).Round(100*time.Millisecond))

	host, err := mariadbLogin(p.addrs[0], mariadbPass)
	if err != nil {
		t.Fatalf("login through the proxy, to the new container it serves, after a %v grace period with no client: %v", grace, err)
	}
	if host != nu.host {
		t.Fatalf("login through the proxy reached %q; want the new container %s", host, nu.host)
	}
}
