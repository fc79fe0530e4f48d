"""Kernel counters per run: real servers, the real kernel, the load generator's own window.

The tracepoint counts need root (or CAP_PERFMON) and tracefs; where this machine or user cannot
count, the tests that need the counts skip saying why, and the NaN-with-a-reason path is tested.
"""

import json
import math
import os
import subprocess
import sys

import pytest

import echo_core
from echo_core.load import counters
from echo_core.measure.benchmark import run_benchmark
from echo_core.native import lib
from echo_core.results import histogram

from conftest import SERVER_CPU, impl_param

PAYLOAD = 512
TRACEPOINT_COLUMNS = [c for c, names in counters.PER_MSG.items() if not set(names) & set(counters.HARDWARE)]
HARDWARE_COLUMNS = [c for c, names in counters.PER_MSG.items() if set(names) & set(counters.HARDWARE)]
ALL_COLUMNS = list(counters.PER_MSG)


def _tracepoints_unavailable():
    """Why the tracepoint columns cannot be measured here, or None (cheap: no perf event opened)."""
    if counters.disabled():
        return counters.DISABLED_NOTE
    avail = counters.availability()
    if avail["tracepoints"] != "available":
        return f"tracepoints not countable here: {avail['tracepoints']}"
    if os.geteuid() != 0:
        return "counting another process's tracepoints needs root or CAP_PERFMON"
    return None


NO_TRACEPOINTS = _tracepoints_unavailable()


def _rr(impl, connections=4, **kw):
    return run_benchmark(impl_param(impl), "rr", PAYLOAD, connections, duration=0.5, warmup=0.2, warmup_max=None,
                         **kw)


@pytest.fixture(scope="module")
def uring_row():
    return _rr("uring")


@pytest.fixture(scope="module")
def epoll_row():
    return _rr("epoll")


@pytest.mark.parametrize("which", ["uring", "epoll"])
def test_server_loop_counters(which, request):
    """From the servers themselves (no permission needed): completions, recv sizes, sends."""
    row = request.getfixturevalue(f"{which}_row")
    assert row["valid"], row["invalid_reason"]
    # io_uring waits for at least one completion a turn; epoll also polls with timeout 0 (may get none).
    assert row["server_completions_per_wait"] >= (1 if which == "uring" else 0.3)
    assert 0 < row["server_bytes_per_recv"] <= PAYLOAD
    # rr: one send per echoed request (a short send would add one; 512 B never is short).
    assert 0.9 <= row["server_sends_per_msg"] <= 1.5
    sparse = histogram.decode(row["server_recv_size_hist"], buckets=lib.EC_RECV_HIST_BUCKETS)
    hist = [sparse.get(i, 0) for i in range(lib.EC_RECV_HIST_BUCKETS)]
    assert sum(hist) == row["server_recv_ok"] > 0
    # 512-byte requests arrive whole or in pieces, never bigger.
    assert not any(hist[10:])
    for key in ("server_ctx_switches_per_msg", "server_vol_ctx_switches_per_msg",
                "server_invol_ctx_switches_per_msg", "server_minor_faults_per_msg"):
        assert math.isfinite(row[key]) and row[key] >= 0, key
    assert row["server_ctx_switches_per_msg"] == pytest.approx(
        row["server_vol_ctx_switches_per_msg"] + row["server_invol_ctx_switches_per_msg"])
    # The pool's size at the window's end: the default 4096 buffers; epoll has none.
    assert row["server_pool_buffers"] == (4096 if which == "uring" else 0)


def test_growing_pool_size_is_recorded():
    # 32 request-response connections on a pool of 4 that grows by 4 while it runs dry: the row says
    # how far it grew.
    row = _rr("uring(buf_count=256,buf_size=4096)+mshot+bundle+grow(start=4,step=4)", connections=32)
    assert row["valid"], row["invalid_reason"]
    assert 4 < row["server_pool_buffers"] <= 256


@pytest.mark.skipif(NO_TRACEPOINTS is not None, reason=str(NO_TRACEPOINTS))
def test_uring_tracepoints_plausible(uring_row):
    row = uring_row
    for column in TRACEPOINT_COLUMNS:
        assert math.isfinite(row[column]) and row[column] >= 0, column
    # One recv and one send SQE per request at least (a partial recv adds more).
    assert row["server_submit_reqs_per_msg"] >= 1
    assert row["server_submit_reqs_per_msg"] == pytest.approx(row["server_ops_per_msg"], rel=0.05)
    # The server counts each submit-and-wait it makes; liburing may skip the system call when there is
    # nothing to submit or wait for, never make more.
    assert 0 < row["server_uring_enter_syscalls_per_msg"] <= row["server_syscalls_per_msg"] * 1.05
    assert row["server_wait_syscalls_per_msg"] > 0
    # io_uring's recvs and sends are not recv/send system calls.
    assert row["server_recv_syscalls_per_msg"] == 0 and row["server_send_syscalls_per_msg"] == 0
    # Blocking waits are switches away from the server: at most one per io_uring_enter, plus preemptions.
    assert row["server_sched_switches_per_msg"] <= row["server_uring_enter_syscalls_per_msg"] + 0.5


@pytest.mark.skipif(NO_TRACEPOINTS is not None, reason=str(NO_TRACEPOINTS))
def test_epoll_tracepoints_plausible(epoll_row):
    row = epoll_row
    assert row["server_submit_reqs_per_msg"] == 0
    assert row["server_poll_arms_per_msg"] == 0 and row["server_task_work_per_msg"] == 0
    assert row["server_uring_enter_syscalls_per_msg"] == 0
    assert row["server_wait_syscalls_per_msg"] > 0
    # The server counts its own recv()/send() calls: the tracepoints see the same calls.
    assert row["server_recv_syscalls_per_msg"] == pytest.approx(row["server_recv_calls"] / row["messages"], rel=0.05)
    assert row["server_send_syscalls_per_msg"] == pytest.approx(row["server_sends_per_msg"], rel=0.05)


def test_note_and_hardware(uring_row):
    """The note is empty exactly when every counter was counted; a missing PMU is said so."""
    row = uring_row
    note = row["counters_note"]
    assert isinstance(note, str)
    counted = all(math.isfinite(row[c]) for c in ALL_COLUMNS)
    assert (note == "") == counted, note
    if not all(math.isfinite(row[c]) for c in HARDWARE_COLUMNS):
        assert "pmu" in note or "permission" in note or "disabled" in note, note


def test_env_switch_disables(monkeypatch):
    monkeypatch.setenv(counters.ENV_SWITCH, "0")
    row = _rr("epoll")
    assert row["valid"], row["invalid_reason"]
    assert row["counters_note"] == counters.DISABLED_NOTE
    for column in ALL_COLUMNS:
        assert math.isnan(row[column]), column
    # The servers' own counters and /proc do not need the switch's permission: still there.
    assert math.isfinite(row["server_ctx_switches_per_msg"]) and row["server_bytes_per_recv"] > 0


HOLD_SCRIPT = """
import json, os
from echo_core.load import counters

def perf_fds():
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the listing's own directory fd, closed by now
            pass
    return links.count("anon_inode:[perf_event]")

events, _ = counters.resolve()
tracepoints = {c for _, t, c in events if t == counters.PERF_TYPE_TRACEPOINT}
counts = [perf_fds()]
with counters.tracepoints_held(events):
    counts.append(perf_fds())
    with counters.tracepoints_held(events + events):  # nested, each tracepoint twice: nothing more
        counts.append(perf_fds())
    counts.append(perf_fds())  # the inner block does not release
counts.append(perf_fds())
print(json.dumps({"tracepoints": len(tracepoints), "counts": counts}))
"""


@pytest.mark.skipif(bool(NO_TRACEPOINTS), reason=str(NO_TRACEPOINTS))
def test_tracepoints_are_held_once_while_a_block_runs():
    """A sweep holds one disabled perf event per tracepoint (so that a run's events close without a grace
    period each): once, however often it is asked, until the outermost block ends."""
    done = subprocess.run([sys.executable, "-c", HOLD_SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    n, (before, held, nested, inner_done, after) = got["tracepoints"], got["counts"]
    assert n > 0
    assert held - before == nested - before == inner_done - before == n
    assert after == before


def test_availability_is_cheap_and_says_why():
    avail = counters.availability()
    assert {"tracepoints", "pmu", "tracefs", "perf_event_paranoid"} <= set(avail)
    for key in ("tracepoints", "pmu"):
        assert isinstance(avail[key], str) and avail[key]


def test_bad_counter_spec_is_one_line():
    out = subprocess.run([sys.executable, "-m", "echo_core", "load", "--port", "1", "--counters", "bogus"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith("error: unknown counter(s) bogus") and "Traceback" not in out.stderr


# Loaded (with the C core) while still root, then run as nobody: the interpreter itself lives where
# nobody may not exec it (e.g. under /root), so setpriv cannot start it.
DROP_AND_LOAD = r"""
import os, sys
from echo_core.cli import main
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="simulating an unprivileged user needs root to drop from")
def test_unprivileged_load_generator_gets_nan_and_reason():
    """The load generator run as nobody against a root server: counters NaN with a reason, exit 0.

    Without --server-stats: the server's counters file is private to its user (0600), so nobody
    could not map it (that is an error by design); the perf counters and /proc are what is tested.
    """
    if counters.disabled():
        pytest.skip(counters.DISABLED_NOTE)
    srv = echo_core.Server("epoll", port=0, cpu=SERVER_CPU).start()
    try:
        cmd = [sys.executable, "-c", DROP_AND_LOAD, "load", "--json", "--port", str(srv.port), "--mode", "rr",
               "--duration", "0.3", "--server-pid", ",".join(map(str, srv.pids()))]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=60)
    finally:
        srv.stop()
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.strip().splitlines()[-1])
    for name in counters.NAMES:
        assert record[counters.raw_key(name)] is None, name  # NaN travels as JSON null
    note = record["counters_note"]
    assert note and ("permission" in note or "EACCES" in note or "EPERM" in note), note
    assert record["mismatches"] == 0 and record["errors"] == 0


@pytest.mark.skipif(NO_TRACEPOINTS is not None, reason=str(NO_TRACEPOINTS))
def test_counter_subset_and_none():
    """--counters picks events: the others are NaN and, not being asked for, need no reason."""
    from echo_core.load.generator import run_load

    srv = echo_core.Server("epoll", port=0, cpu=SERVER_CPU).start()
    try:
        pid = srv.pids()
        some = run_load(port=srv.port, duration=0.2, server_pids=pid, counters="sched_switch,sys_sendto")
        none = run_load(port=srv.port, duration=0.2, server_pids=pid, counters="none")
    finally:
        srv.stop()
    # rr: one send() per echo; the window edges may shift a few between server and client.
    assert some[counters.raw_key("sys_sendto")] >= 0.9 * some["messages"] > 0
    assert some[counters.raw_key("sched_switch")] >= 0
    assert math.isnan(some[counters.raw_key("poll_arm")]) and some["counters_note"] == ""
    assert all(math.isnan(none[counters.raw_key(n)]) for n in counters.NAMES) and none["counters_note"] == ""
