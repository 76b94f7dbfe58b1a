"""Helpers shared by bench.py and soak.py: waiting for a port, reading a process's figures."""
import os
import socket
import sys
import time


def wait_port(port, proc=None):
    """Waits until something accepts on 127.0.0.1:port; exits if `proc` died first."""
    for _ in range(400):
        if proc is not None and proc.poll() is not None:
            sys.exit(f"process exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def status_bytes(pid, key):
    """A `kB` figure of /proc/<pid>/status (e.g. VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))
