"""What every server run in its own process offers the harness (ServerProcess), and the checks and
descriptions shared by echo_core's servers and external ones."""

import ipaddress
import os
import signal


def validate_address(host, port, cpu):
    """Check where a server is to listen and run (shared with ExternalServer)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a numeric IPv4/IPv6 address, got {host!r}") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
    if cpu is not None and cpu not in os.sched_getaffinity(0):
        raise ValueError(f"cpu {cpu} is not available (available: {sorted(os.sched_getaffinity(0))})")


class ServerProcess:
    """What every server run in its own process offers the harness: start()/stop() as a context
    manager, its pid and address.  Subclasses set impl, host, port, cpu and proc."""

    proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def address(self):
        return self.host, self.port

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def exit_description(code):
    """'exited with status 3' or 'was killed by SIGKILL' for a subprocess return code."""
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
