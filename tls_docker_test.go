package main

// The Docker client's own conventions (DOCKER_HOST, DOCKER_TLS_VERIFY,
// DOCKER_CERT_PATH) and TLS to the daemon, through a TLS-terminating
// bridge to docker.sock with certificates made in the test.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// apiBridge forwards every Docker API call it gets on its listener to
// docker.sock and counts them; on a TLS listener it also records the
// common name of each client certificate.
type apiBridge struct {
	addr    string
	calls   atomic.Int64
	mu      sync.Mutex
	clients map[string]bool // client certificate common names seen
}

func startAPIBridge(t testing.TB, ln net.Listener) *apiBridge {
	t.Helper()
	needDocker(t)
	rp := socketProxy()
	b := &apiBridge{addr: ln.Addr().String(), clients: map[string]bool{}}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.calls.Add(1)
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
				b.mu.Lock()
				b.clients[r.TLS.PeerCertificates[0].Subject.CommonName] = true
				b.mu.Unlock()
			}
			rp.ServeHTTP(w, r)
		}),
		ErrorLog: log.New(io.Discard, "", 0), // refused handshakes are the point of some tests
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

func (b *apiBridge) sawClient(cn string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.clients[cn]
}

// testPKI is a CA and the certificates it signed, as PEM files in dir.
type testPKI struct {
	dir    string // ca.pem, cert.pem, key.pem: what DOCKER_CERT_PATH wants
	ca     *x509.CertPool
	server tls.Certificate // for 127.0.0.1
}

const clientCN = "docker-proxy-test-client"

// newPKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and writes the CA and the client's pair to a new folder.
func newPKI(t testing.TB, name string) *testPKI {
	t.Helper()
	caKey := newKey(t)
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, tmpl *x509.Certificate) ([]byte, *ecdsa.PrivateKey) {
		key := newKey(t)
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, key
	}
	srvDER, srvKey := issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	cliDER, cliKey := issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: clientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p := &testPKI{dir: t.TempDir(), ca: x509.NewCertPool()}
	p.ca.AddCert(caCert)
	p.server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	writePEM(t, filepath.Join(p.dir, "ca.pem"), "CERTIFICATE", caDER)
	writePEM(t, filepath.Join(p.dir, "cert.pem"), "CERTIFICATE", cliDER)
	keyDER, err := x509.MarshalECPrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(p.dir, "key.pem"), "EC PRIVATE KEY", keyDER)
	return p
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (p *testPKI) file(name string) string { return filepath.Join(p.dir, name) }

// startTLSBridge serves the Docker API over TLS on a loopback port, with
// the PKI's server certificate, and requires a client certificate signed
// by its CA, as dockerd --tlsverify does.
func startTLSBridge(t testing.TB, p *testPKI) *apiBridge {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.ca,
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		t.Fatal(err)
	}
	return startAPIBridge(t, ln)
}

// startBinaryEnv is startBinary with the environment env (and none of the
// test process's Docker or DOCKER_PROXY_ variables).
func startBinaryEnv(t testing.TB, env []string, args ...string) *procProxy {
	t.Helper()
	args = append([]string{"-log_format", "json", "-log_level", "debug", "-control", filepath.Join(t.TempDir(), "ctl.sock")}, args...)
	cmd := exec.Command(proxyBinary(t), args...)
	cmd.Env = append(cleanEnv(), env...)
	return runBinary(t, cmd)
}

// servesThrough runs the binary with env and args against a new container
// of a tag of its own, and checks that it serves the container and made
// its Docker calls through b.
func servesThrough(t *testing.T, b *apiBridge, env []string, args ...string) *procProxy {
	t.Helper()
	tag := newTag(t, "v1")
	svc := startCtr(t, tag)
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	pp := startBinaryEnv(t, env, append([]string{"-address", "127.0.0.1", "-ports", strconv.Itoa(port) + "=80",
		"-tag", tag, "-grace_period", "1s"}, args...)...)
	waitServed(t, addr, svc, 15*time.Second)
	if b.calls.Load() == 0 {
		t.Errorf("no Docker API call went through %s", b.addr)
	}
	// A deploy works too: the event stream flows through the bridge.
	nu := startCtr(t, tag)
	waitServed(t, addr, nu, 15*time.Second)
	eventually(t, 15*time.Second, "old container removed", func() bool { return !ctrExists(t, svc.id) })
	return pp
}

// TestDockerDockerHostTCP: with no -docker, DOCKER_HOST names the API.
func TestDockerDockerHostTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := startAPIBridge(t, ln)
	servesThrough(t, b, []string{"DOCKER_HOST=tcp://" + b.addr})
}

// TestDockerDockerHostUnix: DOCKER_HOST may name a unix socket other than
// the default one.
func TestDockerDockerHostUnix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	b := startAPIBridge(t, ln)
	servesThrough(t, b, []string{"DOCKER_HOST=unix://" + sock})
}

// TestDockerDockerHostFlagWins: -docker wins over DOCKER_HOST.
func TestDockerDockerHostFlagWins(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := startAPIBridge(t, ln)
	dead := "tcp://127.0.0.1:" + strconv.Itoa(freePort(t))
	servesThrough(t, b, []string{"DOCKER_HOST=" + dead}, "-docker", "tcp://"+b.addr)
}

// TestBinaryDockerHostUnreachable: an unreachable DOCKER_HOST exits 1 and
// is named as such.
func TestBinaryDockerHostUnreachable(t *testing.T) {
	dead := "tcp://127.0.0.1:" + strconv.Itoa(freePort(t))
	cmd := exec.Command(proxyBinary(t), "-tag", "myapp", "-ports", "80", "-address", "127.0.0.1")
	cmd.Env = append(cleanEnv(), "DOCKER_HOST="+dead)
	out, err := outputWithin(t, cmd, 20*time.Second)
	if code := processExit(err); code != 1 {
		t.Errorf("got %v; want exit status 1", err)
	}
	if !strings.Contains(out, "DOCKER_HOST "+dead) {
		t.Errorf("output does not name DOCKER_HOST %s:\n%s", dead, out)
	}
}

func processExit(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err == nil {
		return 0
	}
	return -1
}

// TestDockerTLSFlags: -docker tcp://... with the -docker_tls_* files talks
// TLS with a client certificate.
func TestDockerTLSFlags(t *testing.T) {
	p := newPKI(t, "good")
	b := startTLSBridge(t, p)
	servesThrough(t, b, nil, "-docker", "tcp://"+b.addr,
		"-docker_tls_ca", p.file("ca.pem"), "-docker_tls_cert", p.file("cert.pem"), "-docker_tls_key", p.file("key.pem"))
	if !b.sawClient(clientCN) {
		t.Errorf("the bridge never saw the client certificate %q", clientCN)
	}
}

// TestDockerTLSEnv: DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, as
// the docker CLI reads them, with no -docker flag.
func TestDockerTLSEnv(t *testing.T) {
	p := newPKI(t, "good")
	b := startTLSBridge(t, p)
	servesThrough(t, b, []string{"DOCKER_HOST=tcp://" + b.addr, "DOCKER_TLS_VERIFY=1", "DOCKER_CERT_PATH=" + p.dir})
	if !b.sawClient(clientCN) {
		t.Errorf("the bridge never saw the client certificate %q", clientCN)
	}
}

// TestDockerTLSSettingsFromProxyEnv: the same TLS settings as
// DOCKER_PROXY_* variables.
func TestDockerTLSSettingsFromProxyEnv(t *testing.T) {
	p := newPKI(t, "good")
	b := startTLSBridge(t, p)
	servesThrough(t, b, []string{"DOCKER_PROXY_DOCKER=tcp://" + b.addr, "DOCKER_PROXY_DOCKER_TLS_CA=" + p.file("ca.pem"),
		"DOCKER_PROXY_DOCKER_TLS_CERT=" + p.file("cert.pem"), "DOCKER_PROXY_DOCKER_TLS_KEY=" + p.file("key.pem")})
}

// TestDockerTLSWrongCA: a daemon whose certificate the -docker_tls_ca does
// not vouch for is refused at once, exit status 1, with an error that
// names the -docker URL and the certificate problem.
func TestDockerTLSWrongCA(t *testing.T) {
	good := newPKI(t, "good")
	other := newPKI(t, "other")
	b := startTLSBridge(t, good)
	url := "tcp://" + b.addr
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string // names the API
	}{
		{"flags", nil, []string{"-docker", url, "-docker_tls_ca", other.file("ca.pem"),
			"-docker_tls_cert", good.file("cert.pem"), "-docker_tls_key", good.file("key.pem")}, "-docker " + url},
		{"DOCKER_CERT_PATH", []string{"DOCKER_HOST=" + url, "DOCKER_TLS_VERIFY=1", "DOCKER_CERT_PATH=" + other.dir},
			nil, "DOCKER_HOST " + url},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			pp := startBinaryEnv(t, tc.env, append([]string{"-address", "127.0.0.1", "-ports",
				strconv.Itoa(freePort(t)), "-tag", prefix + "-never:v1"}, tc.args...)...)
			select {
			case <-pp.exited:
			case <-time.After(8 * time.Second):
				t.Fatal("still running 8s after start; want a quick exit")
			}
			if code := processExit(pp.err); code != 1 {
				t.Errorf("exit: %v; want status 1", pp.err)
			}
			lines := pp.logs.lines("docker-proxy failed")
			if len(lines) != 1 {
				t.Fatalf("logged %d failure lines; want 1:\n%s", len(lines), pp.logs.String())
			}
			msg, _ := lines[0]["err"].(string)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not name %q", msg, tc.want)
			}
			if !strings.Contains(msg, "x509") || !strings.Contains(msg, "certificate") {
				t.Errorf("error %q does not say the certificate is not trusted (x509)", msg)
			}
			t.Logf("exited after %v: %s", time.Since(start).Round(time.Millisecond), msg)
		})
	}
	if n := b.calls.Load(); n != 0 {
		t.Errorf("%d calls reached the daemon through an untrusted connection", n)
	}
}
