import os
import resource
import signal

import pytest

import echo_core
from echo_core.host.machine import io_uring_info
from echo_core.servers.specs import CATALOGUE, RECOMMENDED

# A test run started in the background of a non-interactive shell (`cmd &`) inherits SIGINT ignored, and so
# would every server and load generator it starts; the tests that stop them with SIGINT need it delivered.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
    from echo_core.profiling import profile

    try:
        profile.check_perf()
    except profile.ProfilerUnavailable as exc:
        return str(exc)
    return None


#: Tests that need CPU profiles skip with this reason where it is not None.
PERF_UNAVAILABLE = perf_unavailable()


@pytest.fixture(scope="session", autouse=True)
def tracepoints_held():
    """The session holds the counters' tracepoints, as a sweep does: every run's perf events close at once
    instead of waiting for a kernel grace period per tracepoint (0.6 s per run)."""
    from echo_core.load import counters

    with counters.tracepoints_held():
        yield


@pytest.fixture(scope="session", autouse=True)
def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: The io_uring variants (issue 10) every robustness test runs over, as server specs (echo_core.servers.specs):
#: the recommended design, every strategy and buffer mode, and every feature at least once.  batch (how the loop waits), pollfirst
#: (one recv flag) and napi (a registration that loopback never uses) change no buffer or connection
#: handling: they run here in combination (uring+mshot+bundle+batch+pollfirst+sendring), each alone in
#: test_uring_features.py and in the long-lived regime over every spec (test_lifetime.py) — CI time.
#: The recommended design is mshot+bundle on a small pool (it spills, its budget is a quarter of the pool):
#: it stands for uring+mshot+bundle here, which keeps its own tests and runs in the long-lived regime.
#: The SQPOLL thread shares the server's CPU, so the machine's other CPU stays the load's.
#: Send rings (sendring) change who reads a queued buffer: they ride on the batch+pollfirst combination
#: (the recommended design keeps the gathered sendmsg); plain mshot runs without the kernel's byte cap
#: (own_cap=1, the path of kernels before 6.17; the recommended design has the cap).
URING_VARIANTS = (RECOMMENDED, "uring+connbuf", "uring+inc", "uring+mshot(own_cap=1)", "uring+mshot+inc",
                  "uring+mshot+bundle+batch+pollfirst+sendring", "uring+zc", "uring+mshot+zc",
                  f"uring+sqpoll(cpu={SERVER_CPU})")
#: ECHO_CORE_TEST_VARIANTS=0 runs the seed's two servers only (quick runs).  epoll(spin_us=N) changes
#: only how the epoll loop waits: the long-lived regime (every spec in the catalogue) and its own tests
#: take it, not every robustness test (CI time).
ALL_IMPLS = echo_core.IMPLS + (URING_VARIANTS if os.environ.get("ECHO_CORE_TEST_VARIANTS", "1") != "0"
                               else ())
_VARIANT_REFUSED = {}


def variant_refused(spec):
    """Why this machine cannot run the spec (the probe's reason, or set-up failing: EOPNOTSUPP,
    EINVAL, ...), or None; cached."""
    from echo_core.servers import specs

    if spec not in _VARIANT_REFUSED:
        why = specs.unsupported_reason(spec)
        if why is None:
            try:
                echo_core.Server(spec, port=0).start().stop()
            except (RuntimeError, OSError) as exc:
                why = f"{spec} refused here: {exc}"
        _VARIANT_REFUSED[spec] = why
    return _VARIANT_REFUSED[spec]


def impl_param(name):
    """The impl fixture's value: skips, saying why, where the kernel refuses io_uring (or the
    variant's feature)."""
    if name.startswith("uring") and IO_URING_REFUSED:
        pytest.skip(IO_URING_REFUSED)
    if "+" in name and variant_refused(name):
        pytest.skip(variant_refused(name))
    return name


@pytest.fixture(params=echo_core.IMPLS)
def impl(request):
    """Each server implementation (uring, epoll).  The robustness suites (test_servers.py,
    test_chaos.py) override it with ALL_IMPLS, the io_uring variants included."""
    return impl_param(request.param)


@pytest.fixture(params=CATALOGUE)
def spec(request):
    """Each server spec `python -m echo_core impls` lists; the ones this machine cannot run skip, saying why
    (a suite that takes this fixture instead of `impl` runs over every supported variant)."""
    from echo_core.servers import specs

    why = specs.unsupported_reason(request.param)
    if why:
        pytest.skip(f"{request.param} unsupported: {why}")
    return request.param


def with_base_options(impl, options):
    """(spec, options) for a robustness test's own pool or buffer sizes on a spec that sets them (the
    recommended design's 64 x 16 KiB pool): the test's options replace the spec's base tunables, which the
    server would otherwise refuse as a conflict; its features stay."""
    from echo_core.servers import specs

    spec = specs.parse(impl)
    base = spec.tunables(spec.base)
    if not set(base) & set(options):
        return impl, options
    tunables = specs.BASES[spec.base]
    return (str(spec.without_base_tunables()),
            {**{tunables[name].option: value for name, value in base.items()}, **options})


@pytest.fixture
def start_server(impl):
    """Factory: start_server(**options) -> a running echo_core.Server of the parametrized impl."""
    started = []
    def start(**options):
        spec, options = with_base_options(impl, options)
        srv = echo_core.Server(spec, port=0, cpu=SERVER_CPU, **options).start()
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


#: Test files of the slow tier: notebooks, sweeps, dask labs, profiles, chaos and long-lived servers.
SLOW_FILES = {"test_notebooks.py", "test_ablation.py", "test_cluster.py", "test_chaos.py", "test_lifetime.py",
              "test_profile.py", "test_explain.py", "test_sweep.py"}


def _runs_a_variant(item):
    """A test parametrized over a server spec other than the two bases (uring, epoll)."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(v, str) and v not in echo_core.IMPLS and (v.startswith("uring") or v.startswith("epoll"))
               for v in params.values())


def pytest_collection_modifyitems(config, items):
    """The fast tier, `pytest -m "not slow"` (a few minutes on 2 CPUs): everything on the two bases;
    the slow tier adds the files above and every io_uring variant.  CI runs both."""
    for item in items:
        if item.path.name in SLOW_FILES or _runs_a_variant(item):
            item.add_marker(pytest.mark.slow)
