"""The serve CLI and the Python API: start, stop, counters, and clear errors for bad input."""

import errno
import json
import glob
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

import echo_core
from conftest import SERVER_CPU
from echo_client import connect, recv_exact

SERVE = [sys.executable, "-m", "echo_core", "serve"]


def _run_cli(args, timeout=20):
    return subprocess.run(SERVE + args, capture_output=True, text=True, timeout=timeout)


def _first_line(proc, timeout=15):
    """The server's first stdout line, or "" if none comes in time (a hung server fails, not hangs, the test)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_cli_serves_and_exits_cleanly_on_sigterm(impl):
    proc = subprocess.Popen(SERVE + ["--impl", impl, "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = _first_line(proc)
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with connect(port) as s:
            s.sendall(b"hello echo")
            assert recv_exact(s, 10) == b"hello echo"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    counters = json.loads(out.strip().splitlines()[-1])
    assert counters["conns_accepted"] == 1
    assert counters["bytes_in"] == counters["bytes_out"] == 10


def test_sigint_also_stops_the_server(impl):
    proc = subprocess.Popen(SERVE + ["--impl", impl], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert _first_line(proc).startswith("listening on")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0


def test_restart_on_the_same_port_waits_for_it(impl):
    with echo_core.Server(impl, port=0) as first:
        port = first.port
    # The previous server's port can stay busy for a few ms; the new one must not fail.
    with echo_core.Server(impl, port=port) as second:
        assert second.port == port


def test_ipv6_loopback(impl):
    with echo_core.Server(impl, host="::1", port=0) as srv:
        with socket.create_connection(("::1", srv.port), timeout=10) as s:
            s.sendall(b"six")
            assert recv_exact(s, 3) == b"six"


@pytest.mark.parametrize("args, message", [
    (["--impl", "kqueue"], "unknown implementation"),
    (["--impl", "uring+bundle"], "bundle needs mshot"),
    (["--impl", "uring", "--port", "70000"], "port"),
    (["--impl", "epoll", "--port", "-1"], "port"),
    (["--impl", "uring", "--port", "abc"], "invalid int"),
    (["--impl", "uring", "--buf-size", "0"], "buf_size"),
    (["--impl", "uring", "--buf-count", "1000"], "power of two"),
    (["--impl", "epoll", "--host", "localhost.invalid"], "numeric"),
    (["--impl", "epoll", "--cpu", "4096"], "cpu"),
])
def test_cli_bad_arguments_give_one_line_error(args, message):
    result = _run_cli(args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr


def test_cli_port_in_use_is_an_error(impl):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        result = _run_cli(["--impl", impl, "--port", str(blocker.getsockname()[1])])
    finally:
        blocker.close()
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "in use" in result.stderr


def test_api_counters_while_running_and_at_exit(impl):
    with echo_core.Server(impl, port=0, cpu=SERVER_CPU) as srv:
        with connect(srv.port) as s:
            s.sendall(b"x" * 5000)
            recv_exact(s, 5000)
            # The echo can reach the client just before the server reaps the send's completion.
            deadline = time.monotonic() + 5
            while srv.stats()["bytes_out"] < 5000 and time.monotonic() < deadline:
                time.sleep(0.01)
            live = srv.stats()
        assert live["running"] == 1
        assert live["conns_accepted"] == 1 and live["conns_active"] == 1
        assert live["bytes_in"] == live["bytes_out"] == 5000
        assert live["recv_calls"] >= 1 and live["send_calls"] >= 1 and live["wait_calls"] >= 1
        user, system = srv.cpu_times()
        # Starting Python alone costs well over one clock tick, so zeros mean cpu_times() is broken.
        assert user >= 0 and system >= 0 and user + system > 0
    final = srv.final_stats
    assert final["running"] == 0 and final["conns_active"] == 0
    assert final["bytes_out"] == 5000


@pytest.mark.parametrize("kwargs, message", [
    (dict(impl="io-uring"), "unknown implementation"),
    (dict(impl="uring", port=65536), "port"),
    (dict(impl="uring", port="80"), "port"),
    (dict(impl="epoll", buf_size=0), "buf_size"),
    (dict(impl="epoll", buf_size=-5), "buf_size"),
    (dict(impl="uring", turbo=1), "unknown server option"),
])
def test_api_bad_input_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        echo_core.Server(**kwargs)


def test_c_sources_compile_without_warnings():
    """Every source and every header on its own (a header includes what it needs)."""
    csrc = os.path.join(os.path.dirname(echo_core.__file__), "csrc")
    paths = sorted(glob.glob(os.path.join(csrc, "**", "*.[ch]"), recursive=True))
    assert any("/uring/" in p for p in paths) and any("/load/" in p for p in paths)
    for path in paths:
        result = subprocess.run(
            ["gcc", "-fsyntax-only", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-D_GNU_SOURCE",
             "-DNDEBUG", path], capture_output=True, text=True)
        assert result.returncode == 0, f"{os.path.relpath(path, csrc)}:\n{result.stderr}"


def test_missing_liburing_is_a_clear_build_error(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "echo_core_build", os.path.join(os.path.dirname(echo_core.__file__), "_build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    monkeypatch.setattr(build, "LIBURING_HEADER_DIRS", ["/nonexistent"])
    with pytest.raises(SystemExit, match="liburing-dev"):
        build._liburing_prefix()
    # A prefix of one's own (ECHO_CORE_LIBURING) without the headers is named, not silently passed over.
    monkeypatch.setattr(build, "LIBURING_PREFIX", "/nonexistent-prefix")
    with pytest.raises(SystemExit, match="ECHO_CORE_LIBURING=/nonexistent-prefix"):
        build._liburing_prefix()


def test_a_liburing_prefix_of_its_own_is_searched_for_headers_and_library(tmp_path, monkeypatch):
    """Review item 2: headers found under a prefix (conda's sys.prefix, a liburing built under /usr/local,
    ECHO_CORE_LIBURING) were not added to the include and library paths."""
    import importlib.util

    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "liburing.h").write_text("")
    (tmp_path / "lib" / "x86_64-linux-gnu").mkdir(parents=True)
    (tmp_path / "lib" / "x86_64-linux-gnu" / "liburing.so").write_text("")
    monkeypatch.setenv("ECHO_CORE_LIBURING", str(tmp_path))
    spec = importlib.util.spec_from_file_location(
        "echo_core_build", os.path.join(os.path.dirname(echo_core.__file__), "_build.py"))
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.LIBURING_INCLUDE == str(tmp_path / "include")
    assert build._EXTRA_INCLUDE == [str(tmp_path / "include")]
    assert build._EXTRA_LIB == [str(tmp_path / "lib" / "x86_64-linux-gnu")]


def test_serve_off_the_main_thread_is_a_clear_error():
    import threading

    errors = []

    def run():
        try:
            echo_core.serve("epoll", port=0)
        except RuntimeError as exc:
            errors.append(str(exc))

    # Daemon: should serve() ever run off the main thread, the test fails instead of hanging at exit.
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive(), "serve() ran on a non-main thread"
    assert errors and "main thread" in errors[0]


# Set-ups that pass Python's validation but that the C side cannot complete on this machine.
# uring: 32768 buffers of 2 GiB are 64 TiB, which mmap refuses (ENOMEM); a fixed-file table larger
# than the kernel's limit (1 << 20) is EMFILE.  epoll allocates per connection, so only the fd
# limit can stop its set-up: with 8 fds, stdio + listener + stop pipe + ready pipe leave none for
# epoll_create1 (or io_uring_setup).
HUGE_BUFFERS = dict(buf_count=32768, buf_size=2**31)
FDS_FOR_PYTHON_ONLY = 8


def _limit_fds():
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (FDS_FOR_PYTHON_ONLY, FDS_FOR_PYTHON_ONLY))


@pytest.mark.parametrize("impl, args, limit_fds, message", [
    ("uring", ["--buf-count", "32768", "--buf-size", str(2**31)], False, "Cannot allocate memory"),
    ("uring", ["--max-conns", "2000000"], False, "Too many open files"),
    ("uring", [], True, "Too many open files"),
    ("epoll", [], True, "Too many open files"),
])
def test_cli_setup_failure_is_one_error_line_and_never_listening(impl, args, limit_fds, message):
    proc = subprocess.run(SERVE + ["--impl", impl, "--port", "0"] + args, capture_output=True, text=True,
                          timeout=20, preexec_fn=_limit_fds if limit_fds else None)
    assert proc.returncode != 0
    assert "listening on" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: [Errno") and f"{impl} server set-up failed" in lines[0]
    assert message in lines[0]


@pytest.mark.parametrize("options, message", [
    (HUGE_BUFFERS, "Cannot allocate memory"),
    (dict(max_conns=2_000_000), "Too many open files"),
])
def test_server_setup_failure_raises_runtime_error_with_the_servers_error(options, message):
    srv = echo_core.Server("uring", port=0, **options)
    with pytest.raises(RuntimeError, match=f"uring server did not start: .*set-up failed: {message}"):
        srv.start()
    assert srv.proc is None and srv.stats_path is None


def test_serve_setup_failure_raises_os_error_before_announcing():
    announced = []
    with pytest.raises(OSError, match="set-up failed: Cannot allocate memory") as info:
        echo_core.serve("uring", port=0, on_listening=lambda h, p: announced.append(p), **HUGE_BUFFERS)
    assert info.value.errno == errno.ENOMEM
    assert announced == []


def test_serve_stops_and_reraises_when_on_listening_fails(impl):
    def on_listening(host, port):
        raise ValueError("cannot announce")

    with pytest.raises(ValueError, match="cannot announce"):
        echo_core.serve(impl, port=0, on_listening=on_listening)


def test_server_is_running_when_start_returns_and_exposes_its_stats_path(impl):
    size = echo_core.native.ffi.sizeof("struct ec_server_stats")
    srv = echo_core.Server(impl, port=0)
    assert srv.stats_path is None
    with srv:
        # No polling: "listening on" is printed only after the C loop is set up.
        assert srv.stats()["running"] == 1
        path = srv.stats_path
        assert os.path.getsize(path) == size
        with open(path, "rb") as f:
            raw = f.read(size)
        fields = struct.unpack(f"{size // 8}Q", raw)
        assert fields[0] == 1  # running, the first counter
    assert srv.stats_path is None
    assert not os.path.exists(path)
