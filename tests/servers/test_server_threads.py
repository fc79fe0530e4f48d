"""threads=N: N share-nothing event loops (one SO_REUSEPORT listener and one ring / epoll instance
each) behind one port, for both servers and the io_uring variants; per-thread and total counters."""

import os
import subprocess
import sys
import time

import pytest

import echo_core
from conftest import SERVER_CPU, impl_param
from echo_client import connect, distinct_payload, echo_all
from echo_core.host.cpus import cpus_shared
from echo_core.measure.benchmark import run_benchmark
from echo_core.native import ffi, lib
from echo_core.servers.serve import Server, check_max_conns, thread_cpus

CONNECTIONS = 1000
BATCH = 100
TWO_CPUS = sorted(os.sched_getaffinity(0))[-2:] if len(os.sched_getaffinity(0)) >= 2 else None


@pytest.fixture(params=("epoll", "uring", "uring+mshot+bundle"))
def impl(request):
    return impl_param(request.param)


def _wait_for(cond, timeout=5.0):
    """Counters of a send the client already saw may land a moment later (the CQE, the loop turn)."""
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


@pytest.mark.skipif(TWO_CPUS is None, reason="needs two CPUs to pin two loops to")
def test_two_threads_echo_every_byte_of_1000_connections(impl):
    sizes = [100 + (i * 37) % 3000 for i in range(CONNECTIONS)]
    payloads = [distinct_payload(i, n) for i, n in enumerate(sizes)]
    socks = []
    with Server(impl, threads=2, cpus=TWO_CPUS, max_conns=2 * CONNECTIONS) as srv:
        assert srv.threads == 2 and srv.cpus == TWO_CPUS
        try:
            # In batches, every connection kept open, so all 1,000 are live on the server at the end.
            for start in range(0, CONNECTIONS, BATCH):
                batch = [connect(srv.port) for _ in range(min(BATCH, CONNECTIONS - start))]
                socks += batch
                got = echo_all(batch, payloads[start:start + len(batch)], timeout=20.0)
                for i, data in enumerate(got, start):
                    assert data == payloads[i], f"connection {i}: {len(data)} of {len(payloads[i])} bytes, or wrong"
            sent = sum(sizes)
            assert _wait_for(lambda: srv.stats()["bytes_out"] == sent), srv.stats()
            # Readable while running: each loop's slot and the totals.
            per = srv.thread_stats()
            total = srv.stats()
            assert len(per) == 2
            assert all(t["running"] == 1 for t in per) and total["running"] == 1
            conns = [t["conns_accepted"] for t in per]
            assert min(conns) > 0, f"the kernel sent every connection to one loop: {conns}"
            assert sum(conns) == CONNECTIONS == total["conns_accepted"]
            assert sum(t["conns_active"] for t in per) == CONNECTIONS
            assert min(t["bytes_in"] for t in per) > 0
            assert total["bytes_in"] == total["bytes_out"] == sent
            assert sum(t["bytes_in"] for t in per) == sent
            assert total["pending_bytes_max"] == max(t["pending_bytes_max"] for t in per)
        finally:
            for s in socks:
                s.close()
    final = srv.final_stats
    assert final["running"] == 0
    assert final["conns_accepted"] == CONNECTIONS
    assert final["bytes_in"] == final["bytes_out"] == sum(sizes)
    assert [t["conns_accepted"] for t in srv.final_thread_stats] == conns


def test_one_thread_keeps_its_one_slot_file():
    with Server("epoll", cpu=SERVER_CPU) as srv:
        assert os.path.getsize(srv.stats_path) == ffi.sizeof("struct ec_server_stats")
        s = connect(srv.port)
        echo_all([s], [b"one loop"])
        s.close()
        assert [t["conns_accepted"] for t in srv.thread_stats()] == [1]
    assert srv.final_stats["bytes_in"] == len(b"one loop")


def test_stats_sum_adds_counters_takes_max_and_all_running():
    slots = ffi.new("struct ec_server_stats[]", 3)
    for i, (running, pending) in enumerate(((1, 10), (1, 70), (0, 5))):
        slots[i].running = running
        slots[i].bytes_in = 100 * (i + 1)
        slots[i].pending_bytes_max = pending
        slots[i].recv_hist[3] = i + 1
        slots[i].pool_buffers = 7
        slots[i].ring_refusals = 2  # the last field
    out = ffi.new("struct ec_server_stats *")
    lib.ec_server_stats_sum(slots, 3, out)
    assert (out.bytes_in, out.pending_bytes_max, out.recv_hist[3], out.pool_buffers, out.ring_refusals) == \
        (600, 70, 6, 21, 6)
    assert out.running == 0
    lib.ec_server_stats_sum(slots, 2, out)
    assert (out.running, out.bytes_in, out.pending_bytes_max) == (1, 300, 70)
    lib.ec_server_stats_sum(slots, 0, out)
    assert out.bytes_in == 0 and out.running == 0


@pytest.mark.parametrize("threads, cpus, message", [
    (0, None, "threads must be an integer in 1.."),
    (lib.EC_MAX_SERVER_THREADS + 1, None, f"1..{lib.EC_MAX_SERVER_THREADS}"),
    ("2", None, "threads must be an integer"),
    (True, None, "threads must be an integer"),
    (2, [SERVER_CPU], "one CPU per thread"),
    (2, [SERVER_CPU, 1 << 20], f"cpu {1 << 20} is not available"),
    (1, "0", "cpus must be a list"),
])
def test_bad_threads_or_cpus_are_one_clear_value_error(threads, cpus, message):
    with pytest.raises(ValueError, match=message) as info:
        Server("epoll", threads=threads, cpus=cpus)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        echo_core.serve("epoll", threads=threads, cpus=cpus)


@pytest.mark.skipif(TWO_CPUS is None, reason="needs two CPUs")
def test_cpu_and_cpus_must_agree():
    with pytest.raises(ValueError, match="contradicts"):
        thread_cpus(1, cpu=TWO_CPUS[1], cpus=[TWO_CPUS[0]])
    assert thread_cpus(1, cpu=SERVER_CPU) == [SERVER_CPU]
    assert thread_cpus(1) is None  # unpinned, as before threads existed


def test_default_cpus_start_at_the_servers_cpu_and_cycle():
    available = sorted(os.sched_getaffinity(0))
    cpus = thread_cpus(len(available) + 1)
    assert cpus[0] == max(available)  # bench.default_cpus' server CPU
    assert sorted(set(cpus)) == available
    assert cpus[len(available)] == cpus[0]


def test_threads_share_the_fd_limit():
    check_max_conns("epoll", 5000, 10000, threads=2)
    with pytest.raises(OSError, match="shared by 2 threads"):
        check_max_conns("epoll", 5001, 10000, threads=2)


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "error: threads must be an integer in 1.."),
    (["--threads", "2", "--cpus", str(SERVER_CPU)], "error: cpus must name one CPU per thread"),
    (["--threads", "2", "--cpus", "0,x"], "error: argument --cpus: a CPU list looks like"),
])
def test_cli_serve_bad_threads_is_one_line(args, message):
    proc = subprocess.run([sys.executable, "-m", "echo_core", "serve", "--impl", "epoll", *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "listening on" not in proc.stdout


def test_cpus_shared_says_when_a_row_cannot_show_scaling():
    assert cpus_shared([1], [0], 1, available=2) is False
    assert cpus_shared([1, 0], [0], 2, available=2) is True      # overlap
    assert cpus_shared([2, 3], [0, 1], 2, available=4) is False
    assert cpus_shared([2, 3], [0], 2, available=2) is True      # fewer than threads + 1 CPUs


@pytest.mark.skipif(TWO_CPUS is None, reason="needs two CPUs")
def test_run_benchmark_with_two_server_threads_records_the_spread():
    row = run_benchmark("epoll", "rr", 64, 16, duration=0.5, warmup=0.2, warmup_max=None, server_threads=2)
    assert row["valid"], row["invalid_reason"]
    assert row["server_threads"] == 2
    assert row["server_cpus"] == ",".join(map(str, thread_cpus(2)))
    conns = [int(c) for c in row["server_thread_conns"].split(",")]
    data = [int(b) for b in row["server_thread_bytes"].split(",")]
    assert len(conns) == len(data) == 2 and sum(conns) == 16
    mean = sum(data) / 2
    assert row["server_thread_imbalance"] == pytest.approx(max(data) / mean)
    assert row["server_thread_imbalance"] >= 1.0
    # The load generator snapshots the totals of both slots: the window's server bytes out match
    # what the client got (one slot alone would be a share of it).
    assert row["window_agreement"] == pytest.approx(1.0, abs=0.05)
    assert row["server_util"] == pytest.approx(row["server_cpu_s"] / (row["duration_s"] * 2))
    # The default CPUs put the second loop on a client CPU (and this machine has two): not a
    # scaling result, and the row says so.
    assert row["bottleneck"] == "cpus-shared"


@pytest.mark.skipif(TWO_CPUS is None, reason="needs two CPUs")
def test_sweep_cli_server_threads_reach_the_rows(tmp_path):
    import csv
    import json

    proc = subprocess.run([sys.executable, "-m", "echo_core", "sweep", "--impls", "epoll", "--modes", "rr",
                           "--payloads", "512", "--connections", "4", "--repeats", "1", "--duration", "0.3",
                           "--warmup", "0.1", "--quiet", "--no-plots", "--output-dir", str(tmp_path), "--name", "t",
                           "--server-threads", "2", "--server-cpus", ",".join(map(str, TWO_CPUS))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert rows[0]["server_threads"] == "2" and rows[0]["server_cpus"] == ",".join(map(str, TWO_CPUS))
    assert len(rows[0]["server_thread_conns"].split(",")) == 2
    assert rows[0]["bottleneck"] == "cpus-shared"
    params = json.loads((tmp_path / "t.json").read_text())["parameters"]
    assert params["server_threads"] == 2 and params["server_cpus"] == TWO_CPUS
    bad = subprocess.run([sys.executable, "-m", "echo_core", "sweep", "--server-threads", "0", "--quiet",
                          "--output-dir", str(tmp_path), "--name", "bad"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: threads must be an integer in 1.."), bad.stderr
    assert not (tmp_path / "bad.csv").exists()


def test_threads_refuse_a_port_someone_already_listens_on():
    # SO_REUSEPORT would let the loops join this listener's group and take half its connections.
    import socket

    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises((OSError, RuntimeError), match="in use"):
            Server("epoll", port=port, threads=2, cpus=[SERVER_CPU, SERVER_CPU]).start()
