import os
import resource

import pytest

import echo_core

# Leave CPU 0 to the test client; pin servers to the last CPU.
SERVER_CPU = max(os.sched_getaffinity(0))


@pytest.fixture(scope="session", autouse=True)
def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(params=echo_core.IMPLS)
def impl(request):
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
