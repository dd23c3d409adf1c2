package main

import (
	"log/slog"
	"os"
	"os/exec"
	"strconv"

	"github.com/coreos/go-systemd/v22/daemon"
)

// systemd: with Type=notify the proxy tells systemd when it serves, and a
// successor that took over tells systemd it is the service's main process
// now. Without NOTIFY_SOCKET (not under systemd) nothing is sent.

// notifyReady tells systemd that this process serves, and is the main one.
func notifyReady(log *slog.Logger) {
	state := "READY=1\nMAINPID=" + strconv.Itoa(os.Getpid())
	if _, err := daemon.SdNotify(false, state); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
}

// restartInPlace starts a new process of the same binary (re-read from its
// path, so after an upgrade it is the new one) with the same arguments and
// environment; it takes over from this one over the control socket, and
// this one then stops as after a hand-over. systemctl reload sends the
// signal for it (ExecReload, see examples/systemd).
func restartInPlace(log *slog.Logger) {
	exe, err := os.Executable()
	if err != nil {
		log.Error("restart: cannot find this binary", "err", err)
		return
	}
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		log.Error("restart: cannot start the new process", "binary", exe, "err", err)
		return
	}
	log.Info("restart: started a new process to take over", "binary", exe, "pid", cmd.Process.Pid)
	go func() {
		if err := cmd.Wait(); err != nil {
			log.Error("restart: the new process ended", "pid", cmd.Process.Pid, "err", err)
		}
	}()
}
