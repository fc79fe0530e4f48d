"""The seeded chaos client: both servers survive it, a seed reproduces its scripts, a faulty server
is caught, and the CLI speaks one line."""

import os
import subprocess
import sys

import pytest

import echo_core
from conftest import ALL_IMPLS, impl_param
from echo_core.chaos import storm as chaos

SERVER_CPU = max(os.sched_getaffinity(0))
FAULTY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "faulty_echo.py")
CHAOS = [sys.executable, "-m", "echo_core", "chaos"]


@pytest.fixture(params=ALL_IMPLS)
def impl(request):
    """Every server: uring, epoll and the io_uring variants (conftest.URING_VARIANTS)."""
    return impl_param(request.param)


def faulty(fault, *extra):
    return " ".join([f"exec:{sys.executable}", FAULTY, "--port", "{port}", "--fault", fault, *extra])


def _cli(args, timeout=60):
    return subprocess.run(CHAOS + args, capture_output=True, text=True, timeout=timeout)


#: The two bases and the recommended design get 3 s of chaos, the other variants 1 s (~650 scripts,
#: every kind many times; the drain after the window takes as long again) -- CI time.
LONG_CHAOS = ("epoll", "uring", echo_core.RECOMMENDED)


def test_chaos_finds_nothing_wrong_and_exercises_everything(impl):
    r = chaos.run_chaos(impl, seconds=3.0 if impl in LONG_CHAOS else 1.0, seed=7, cpu=SERVER_CPU)
    assert r["ok"], chaos.verdict(r)
    assert r["violations"] == [] and r["violation_count"] == 0
    assert r["connections"] > 100 and r["scripts"] > 50
    assert r["bytes_sent"] > 0 and r["bytes_echoed"] > 0
    assert r["resets"] > 0 and r["half_closes"] > 0 and r["flood_connections"] > 0
    assert r["nonreaders"] > 0 and r["idles"] > 0
    # The server saw it all: every connection accepted (a flood connection closed before its
    # handshake ended may never be), every verified byte went through it.
    assert r["connections"] - r["flood_connections"] <= r["conns_accepted"] <= r["connections"]
    assert r["bytes_out"] >= r["bytes_echoed"] and r["bytes_in"] >= r["bytes_out"]
    assert r["conn_errors"] > 0  # the resets reached it
    assert r["server_alive"] and r["fds_end"] == r["fds_start"] and r["conns_active_end"] == 0
    assert r["rss_start_kib"] <= r["rss_max_kib"] <= r["rss_bound_kib"]


#: Accept pausing lives in each base's accept path and each io_uring strategy's slot handling, not in a
#: feature: one spec per strategy (test_servers.py fills the table over every variant).
STRATEGIES = ("epoll", "uring", echo_core.RECOMMENDED, "uring+connbuf")


@pytest.mark.parametrize("impl", [i for i in ALL_IMPLS if i in STRATEGIES], indirect=True)
def test_full_connection_table_loses_no_connection(impl):
    r = chaos.run_chaos(impl, seconds=1.5, seed=11, connections=24, cpu=SERVER_CPU,
                        server_options={"max_conns": 8})
    assert r["server"]["accept_pauses"] > 0  # the table did fill up
    assert r["ok"], chaos.verdict(r)


def test_same_seed_same_scripts():
    a, b = chaos.plan(5, 300), chaos.plan(5, 300)
    assert a == b
    assert chaos.make_script(5, 123) == a[123]  # random access: a failing index replays alone
    assert a != chaos.plan(6, 300)
    assert {s["kind"] for s in a} == set(chaos.KINDS)
    assert len({s["sub_seed"] for s in a}) == 300
    assert chaos.pattern_block(5) == chaos.pattern_block(5) != chaos.pattern_block(6)
    for s in a:  # every script ends by closing its connection one way or another
        assert s["actions"][-1][0] in ("close", "rst", "shutdown")


def test_faulty_server_is_caught():
    r = chaos.run_chaos(faulty("flip", "--after", "1000"), seconds=1.0, seed=3, cpu=SERVER_CPU)
    assert not r["ok"] and r["violation_count"] > 0
    first = r["violations"][0]
    assert "stream offset 1000" in first and "sub-seed 0x" in first and first.startswith("script ")
    assert any("corrupted in place" in v for v in r["violations"])
    assert "replay it alone" in chaos.verdict(r) and f"--script {first.split()[1]}" in chaos.verdict(r)
    # The index and sub-seed in the report are those of the plan.
    index = int(first.split()[1])
    assert f"{chaos.make_script(3, index)['sub_seed']:#x}" in first
    # ... and replaying that one script alone reproduces the finding.
    again = chaos.run_chaos(faulty("flip", "--after", "1000"), seconds=1.0, seed=3, cpu=SERVER_CPU,
                            scripts=[index])
    assert again["scripts"] == 1 and again["violation_count"] == 1
    assert again["violations"][0].split(" (")[:2] == first.split(" (")[:2]


def test_faulty_server_cli_exits_1_with_one_line():
    proc = _cli(["--impl", faulty("drop", "--after", "5000"), "--seconds", "1", "--seed", "2"])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaos FAILED: "), proc.stdout
    assert "stream offset 5000" in lines[0]
    assert "Traceback" not in proc.stderr


def test_dropped_byte_is_diagnosed_as_lost():
    r = chaos.run_chaos(faulty("drop", "--after", "3000"), seconds=1.0, seed=2, cpu=SERVER_CPU)
    assert not r["ok"]
    assert any("stream offset 3000" in v and "skips 1 bytes" in v for v in r["violations"]), r["violations"][:3]


def test_hung_server_is_reported_as_stalled():
    r = chaos.run_chaos(faulty("freeze", "--after", "0.5"), seconds=1.0, seed=4, cpu=SERVER_CPU,
                        drain_timeout=1.0, settle_s=1.0)
    assert not r["ok"]
    assert any("stalled" in v for v in r["violations"]), r["violations"][:3]
    # A frozen server never sees the closes: its fds stay open, which is reported too.
    assert any("fd count" in v for v in r["violations"]), r["violations"][-3:]


def test_existing_server_by_port_and_pid_cli_ok():
    with echo_core.Server("epoll", port=0, cpu=SERVER_CPU) as srv:
        proc = _cli(["--port", str(srv.port), "--pid", str(srv.pid), "--seconds", "1", "--seed", "9",
                     "--connections", "16"])
        assert srv.stats()["conns_accepted"] > 0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaos ok: "), proc.stdout
    assert "fds " in lines[0] and "rss max" in lines[0]


@pytest.mark.parametrize("args", [
    ["--impl", "nope"],
    ["--impl", "epoll", "--seconds", "abc"],
    ["--impl", "epoll", "--seconds", "0"],
    ["--impl", "epoll", "--seed", "-1"],
    ["--impl", "epoll", "--connections", "0"],
    ["--impl", "epoll", "--host", "10.1.2.3"],
    ["--impl", "epoll", "--option", "buf_count=3"],
    ["--impl", "epoll", "--option", "bogus=1"],
    ["--impl", "epoll", "--pid", "1"],
    ["--port", "70000"],
    ["--impl", "epoll", "--script", "x"],
    ["--impl", "exec:/bin/true"],
    [],
])
def test_bad_input_exits_2_with_one_line(args):
    proc = _cli(args, timeout=30)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stdout == ""


def test_bad_input_raises_value_error():
    for kwargs in (dict(seconds=-1), dict(seed="x"), dict(connections=0), dict(host="8.8.8.8"),
                   dict(port=0), dict(server_options={"nope": 1})):
        with pytest.raises(ValueError):
            chaos.run_chaos("epoll", **kwargs)


def test_server_checks_report_rss_and_stuck_connections():
    """The RSS bound and the conns_active check fire (forced: a tiny bound, counters that never settle)."""
    with echo_core.Server("epoll", port=0, cpu=SERVER_CPU) as srv:
        def stuck_stats():
            return {**srv.stats(), "conns_active": 1}

        r = chaos.run_chaos("epoll", seconds=0.5, seed=1, connections=8, port=srv.port, pid=srv.pid,
                            server_stats=stuck_stats, rss_bound_kib=1, settle_s=0.2)
    assert not r["ok"]
    assert any("RSS" in v and "above the bound" in v for v in r["violations"]), r["violations"]
    assert any("conns_active is 1" in v for v in r["violations"]), r["violations"]
    assert r["fds_end"] == r["fds_start"] and r["server_alive"]


def test_dead_server_is_reported():
    import signal
    import threading

    srv = echo_core.Server("uring", port=0, cpu=SERVER_CPU).start()
    killer = threading.Timer(0.5, os.kill, (srv.pid, signal.SIGKILL))
    killer.start()
    try:
        r = chaos.run_chaos("uring", seconds=3.0, seed=1, connections=16, port=srv.port, pid=srv.pid,
                            server_stats=srv.stats, drain_timeout=1.0, settle_s=0.2)
    finally:
        killer.join()
        with pytest.raises(RuntimeError):
            srv.stop()
    assert not r["ok"] and r["server_alive"] is False
    assert any("is gone" in v for v in r["violations"]), r["violations"][-3:]
    assert r["elapsed_s"] < 2.5  # the run stops early once the server is gone


def test_ipv6_loopback():
    r = chaos.run_chaos("epoll", seconds=0.5, seed=12, connections=8, host="::1", cpu=SERVER_CPU)
    assert r["ok"], chaos.verdict(r)
    assert r["host"] == "::1" and r["bytes_echoed"] > 0
