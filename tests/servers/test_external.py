"""External servers (exec:CMD): start, readiness, process tree, stop, clear errors, and load checks."""

import os
import socket
import sys
import time

import pytest

from echo_client import connect, distinct_payload, echo_on_new_connections, recv_exact
from echo_core.servers.external import ExternalServer
from echo_core.load.generator import run_load
from echo_core.servers.factory import make_server
from echo_core.servers.serve import Server, check_impl

SERVER_CPU = max(os.sched_getaffinity(0))
FAULTY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "faulty_echo.py")


def faulty(fault="none", *extra):
    return " ".join([f"exec:{sys.executable}", FAULTY, "--host", "{host}", "--port", "{port}", "--fault", fault,
                     *extra])


def _alive(pid):
    """Running and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_healthy_external_server_echoes_and_stops_cleanly():
    srv = make_server(faulty("none"), cpu=SERVER_CPU)
    assert isinstance(srv, ExternalServer)
    with srv:
        assert srv.port > 0 and srv.pid is not None
        assert srv.pids()[0] == srv.pid
        assert os.sched_getaffinity(srv.pid) == {SERVER_CPU}
        assert srv.stats() is None and srv.stats_path is None
        payloads = [distinct_payload(i, 50_000 + i) for i in range(16)]
        assert echo_on_new_connections(srv.port, payloads, timeout=30) == payloads
        pid = srv.pid
    assert srv.returncode == 0  # faulty_echo.py exits 0 on SIGTERM
    assert srv.proc is None and srv.pids() == [] and srv.final_stats is None
    assert not _alive(pid)


def test_ipv6_host_placeholder():
    with make_server(faulty("none"), host="::1") as srv:
        with socket.create_connection(("::1", srv.port), timeout=10) as s:
            s.sendall(b"six")
            assert recv_exact(s, 3) == b"six"


def test_pids_include_descendants_and_stop_ends_the_whole_group():
    # A shell that starts the server as its child: both are the server, both must be stopped.
    spec = f"exec:sh -c '{sys.executable} {FAULTY} --port $0 & wait' {{port}}"
    with ExternalServer(spec, cpu=SERVER_CPU) as srv:
        pids = srv.pids()
        assert len(pids) == 2 and pids[0] == srv.pid
        # The child inherited the pinning.
        assert os.sched_getaffinity(pids[1]) == {SERVER_CPU}
        with connect(srv.port) as s:
            s.sendall(b"through a shell")
            assert recv_exact(s, 15) == b"through a shell"
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)  # the orphaned child's zombie is reaped by init, not by us
    assert not any(_alive(p) for p in pids)


def test_command_that_exits_at_once_is_a_clear_runtime_error():
    srv = ExternalServer(faulty("bogus"))
    with pytest.raises(RuntimeError, match=r"exited with status 2 before accepting connections: .*invalid choice"):
        srv.start()
    assert srv.proc is None and srv.pids() == []


def test_missing_program_is_a_clear_runtime_error():
    with pytest.raises(RuntimeError, match="cannot start '/nonexistent/echo'"):
        ExternalServer("exec:/nonexistent/echo --port {port}").start()


def test_server_that_never_listens_times_out_and_is_killed():
    srv = ExternalServer("exec:sh -c 'sleep 30' {port}", startup_timeout=0.5)
    with pytest.raises(RuntimeError, match=r"did not accept connections on 127\.0\.0\.1:\d+ within 0\.5 s"):
        srv.start()
    assert srv.proc is None


def test_server_that_ignores_sigterm_is_killed_and_reported():
    code = ("import signal, socket, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)")
    srv = ExternalServer(f'exec:{sys.executable} -c "{code}" {{port}}').start()
    pid = srv.pid
    with pytest.raises(RuntimeError, match="did not stop within 0.5 s of SIGTERM; killed"):
        srv.stop(timeout=0.5)
    assert not _alive(pid)


@pytest.mark.parametrize("spec, message", [
    ("exec:", "empty command"),
    ("exec:   ", "empty command"),
    ("exec:/usr/bin/my_echo --port 7", "no {port}"),
    ("exec:/usr/bin/my_echo --host {host}", "no {port}"),
    ("exec:'/usr/bin/my_echo --port {port}", "cannot parse"),
    ("kqueue", "unknown implementation"),
    ("EXEC:/usr/bin/my_echo {port}", "unknown implementation"),
    (None, "unknown implementation"),
])
def test_bad_specs_raise_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        check_impl(spec)
    with pytest.raises(ValueError, match=message):
        make_server(spec)


def test_server_options_are_refused_for_external_servers():
    with pytest.raises(ValueError, match="buf_size.*do not apply to an external server"):
        make_server(faulty("none"), buf_size=4096)


@pytest.mark.parametrize("kwargs, message", [
    (dict(host="localhost"), "numeric"),
    (dict(port=70000), "port"),
    (dict(cpu=4096), "cpu"),
])
def test_bad_address_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_server(faulty("none"), **kwargs)


def test_builtin_impls_still_make_servers_and_server_refuses_exec_specs():
    assert isinstance(make_server("epoll"), Server)
    assert check_impl("uring") == "uring"
    with pytest.raises(ValueError, match="make_server"):
        Server(faulty("none"))


@pytest.mark.parametrize("fault", ["flip", "drop"])
def test_load_generator_catches_a_faulty_external_server(fault):
    with make_server(faulty(fault), cpu=SERVER_CPU) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=0.4)
    assert r["mismatches"] > 0, r
    assert r["mismatched_conns"] == 2  # the fault hits every connection at offset 1000


def test_load_generator_passes_a_correct_external_server():
    with make_server(faulty("none"), cpu=SERVER_CPU) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=0.4)
    assert r["mismatches"] == 0 and r["mismatched_conns"] == 0 and r["errors"] == 0, r
    assert r["messages"] > 0 and r["connected"] == 2


def test_freeze_keeps_connections_open_but_stops_echoing():
    with make_server(faulty("freeze", "--after", "0.5")) as srv:
        with connect(srv.port) as s:
            s.sendall(b"before")
            assert recv_exact(s, 6) == b"before"
            time.sleep(0.7)
            s.sendall(b"after")
            # Neither an echo nor EOF: the connection hangs, as a stuck server's would.
            with pytest.raises(socket.timeout):
                recv_exact(s, 5, timeout=0.5)


def test_port_taken_by_another_program_is_not_mistaken_for_ready():
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        srv = ExternalServer(faulty("none"), port=blocker.getsockname()[1])
        # A connect succeeds (to the blocker), but the server itself cannot bind and exits.
        with pytest.raises(RuntimeError, match="exited with status 1 .*Address already in use"):
            srv.start()
    finally:
        blocker.close()
