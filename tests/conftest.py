import os
import resource

import pytest

import echo_core
from echo_core.machine import io_uring_info

# Leave the other CPUs to the test client; pin servers to the last CPU this process may use.
SERVER_CPU = max(os.sched_getaffinity(0))
CLIENT_CPUS = sorted(os.sched_getaffinity(0) - {SERVER_CPU}) or [SERVER_CPU]
#: Connections a many-connection test may open: 10,000, or what the hard fd limit leaves room for.
MANY_CONNECTIONS = min(10000, resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 64)


def io_uring_refused():
    """Why io_uring cannot be used here (kernel.io_uring_disabled, a seccomp profile, ...), or None."""
    info = io_uring_info()
    if info["setup_permitted"]:
        return None
    return (f"io_uring refused by this kernel: {info['setup_error']} "
            f"(kernel.io_uring_disabled = {info['io_uring_disabled']})")


#: Computed once per test session: the probe sets up (and tears down) one ring.
IO_URING_REFUSED = io_uring_refused()


def perf_unavailable():
    """Why perf cannot sample the servers here (missing, refused), or None."""
    from echo_core import profile

    try:
        profile.check_perf()
    except profile.ProfilerUnavailable as exc:
        return str(exc)
    return None


#: Tests that need CPU profiles skip with this reason where it is not None.
PERF_UNAVAILABLE = perf_unavailable()


@pytest.fixture(scope="session", autouse=True)
def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(params=echo_core.IMPLS)
def impl(request):
    """Each server implementation; io_uring tests skip, saying why, where the kernel refuses io_uring."""
    if request.param == "uring" and IO_URING_REFUSED:
        pytest.skip(IO_URING_REFUSED)
    return request.param


@pytest.fixture(params=__import__("echo_core.specs").specs.CATALOGUE)
def spec(request):
    """Each server spec `python -m echo_core impls` lists; the ones this machine cannot run skip, saying why
    (a suite that takes this fixture instead of `impl` runs over every supported variant)."""
    from echo_core import specs

    why = specs.unsupported_reason(request.param)
    if why:
        pytest.skip(f"{request.param} unsupported: {why}")
    return request.param


@pytest.fixture
def start_server(impl):
    """Factory: start_server(**options) -> a running echo_core.Server of the parametrized impl."""
    started = []

    def start(**options):
        srv = echo_core.Server(impl, port=0, cpu=SERVER_CPU, **options).start()
        started.append(srv)
        return srv

    yield start
    # Stop every server even if one fails to stop cleanly (it then fails the test: a crash or an
    # unclean exit is a server bug the test itself may not have noticed).
    errors = []
    for srv in started:
        if srv.proc is not None:
            try:
                srv.stop()
            except RuntimeError as exc:
                errors.append(str(exc))
    assert not errors, errors
