package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// The subcommands: docker-proxy wait, deploy and status are clients of a
// running proxy's control API. Without one, docker-proxy is the daemon, as
// it always was.

// command is one subcommand: it runs with its arguments and returns its
// exit code.
type command func(args []string, stdout, stderr io.Writer) int

var commands = map[string]command{
	"wait":   waitMain,
	"deploy": deployMain,
	"status": statusMain,
}

// runCommand runs the subcommand args[0] names, if it names one.
func runCommand(args []string) (code int, ok bool) {
	if len(args) == 0 {
		return 0, false
	}
	cmd, ok := commands[args[0]]
	if !ok {
		return 0, false
	}
	return cmd(args[1:], os.Stdout, os.Stderr), true
}

// newCommandFlags makes a subcommand's flag set, with the flags that find
// the proxy.
func newCommandFlags(name, usage string, stderr io.Writer, cf *ctlFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("docker-proxy "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: docker-proxy %s\n\n", usage)
		fs.PrintDefaults()
		fmt.Fprintf(out, "\nExit status: 0 done, 1 the deploy failed, 2 bad usage, 3 could not tell (the proxy unreachable, or -timeout).\n")
	}
	fs.StringVar(&cf.control, "control", "", "`path` of the proxy's control socket (default: from -address and -ports, else the only one in "+controlDir+") [$DOCKER_PROXY_CONTROL]")
	fs.StringVar(&cf.address, "address", "", "the proxy's -address, to find its control socket [$DOCKER_PROXY_ADDRESS]")
	fs.StringVar(&cf.ports, "ports", "", "the proxy's -ports, to find its control socket [$DOCKER_PROXY_PORTS]")
	return fs
}

// parseCommand parses a subcommand's flags; a non-nil code means exit with
// it (0 after -h).
func parseCommand(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	out := fs.Output()
	fs.SetOutput(io.Discard) // errors are reported once, below
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.Usage()
		return exitOK, true
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v (see -h)\n", fs.Name(), err)
		return exitUsage, true
	}
	return 0, false
}

// report prints err as the command's one line and returns its exit code.
func report(stderr io.Writer, name string, err error) int {
	if err != nil {
		fmt.Fprintf(stderr, "docker-proxy %s: %v\n", name, err)
	}
	return exitCode(err)
}

// withProxy finds the proxy's control socket and runs fn with a client of
// it, until fn returns or SIGINT or SIGTERM; it returns the exit code, after
// one line saying why when fn failed.
func withProxy(name string, cf ctlFlags, stderr io.Writer, fn func(ctx context.Context, c *ctlClient) error) int {
	path, err := cf.findControl()
	if err != nil {
		return report(stderr, name, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return report(stderr, name, fn(ctx, newCtlClient(path)))
}
