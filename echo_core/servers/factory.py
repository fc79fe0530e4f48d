"""make_server: the one entry point that turns any implementation string into a server process, an
echo_core server for a spec, an ExternalServer for "exec:CMD"."""

from echo_core.servers.external import ExternalServer
from echo_core.servers.serve import Server
from echo_core.servers.specs import EXEC_PREFIX, canonical


def make_server(impl, host="127.0.0.1", port=0, cpu=None, threads=1, cpus=None, netns=None, **options):
    """A Server for a spec ("uring", "epoll", "uring+mshot", ...), an ExternalServer for "exec:CMD";
    neither is started yet.  threads/cpus: see Server (an external server runs as it likes); netns:
    run it inside that network namespace (echo_core.lab.netns)."""
    canonical(impl)  # ValueError, one line, for a malformed spec
    if impl.startswith(EXEC_PREFIX):
        if threads != 1 or cpus is not None:
            raise ValueError(f"threads/cpus are for echo_core's own servers, not {impl!r}")
        return ExternalServer(impl, host=host, port=port, cpu=cpu, netns=netns, **options)
    return Server(impl, host=host, port=port, cpu=cpu, threads=threads, cpus=cpus, netns=netns, **options)
