"""Tests for the load generator (echo_core/load/generator.py + csrc/load/loadgen.c and its load_*.c files).

Real sockets on 127.0.0.1 only.  Small in-test servers play a correct echo
server and a set of faulty ones (a flipped, dropped, duplicated or swapped
byte, bytes from another connection, a connection that never echoes, slow
and stalling servers, servers that close connections); the load generator
must see every fault.  Every run is bounded by its duration.
"""

import errno
import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import echo_core
from conftest import CLIENT_CPUS, MANY_CONNECTIONS, SERVER_CPU
from echo_core.results import histogram
from echo_core.load.generator import run_load

FAULT_AT = 1000  # stream offset of the faulty byte: inside the 2nd rr request of 512 B


# ------------------------------------------------------------ test servers


def echo_handler(conn, index):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


class ThreadedServer:
    """Echo server on 127.0.0.1 (or ::1), one thread per connection.

    handler(conn, index) serves one connection; index counts accepted
    connections from 0.
    """

    def __init__(self, handler=echo_handler, host="127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.handler = handler
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            index = self.accepted
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn, index):
        try:
            self.handler(conn, index)
        except OSError:
            pass  # the load generator resets its connections when done
        finally:
            conn.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.sock.close()
        self._thread.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SelectorServer:
    """Single-threaded non-blocking echo server for many connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._stop_r, self._stop_w = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "listen")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        pending = {}
        while True:
            for key, events in sel.select(1.0):
                if key.data == "stop":
                    for s in list(pending):
                        s.close()
                    sel.close()
                    return
                if key.data == "listen":
                    while True:
                        try:
                            conn, _ = self.sock.accept()
                        except BlockingIOError:
                            break
                        conn.setblocking(False)
                        pending[conn] = b""
                        sel.register(conn, selectors.EVENT_READ, "conn")
                    continue
                conn = key.fileobj
                try:
                    if events & selectors.EVENT_READ:
                        data = conn.recv(65536)
                        if not data:
                            raise ConnectionResetError
                        pending[conn] += data
                    if pending[conn]:
                        sent = conn.send(pending[conn])
                        pending[conn] = pending[conn][sent:]
                    sel.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[conn] else 0), "conn")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    sel.unregister(conn)
                    del pending[conn]
                    conn.close()

    def close(self):
        self._stop_w.send(b"x")
        self._thread.join(5)
        self.sock.close()
        self._stop_r.close()
        self._stop_w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def fault_handler(kind, at=FAULT_AT):
    """Echo, but corrupt connection 0's stream once at offset `at`."""

    def handler(conn, index):
        if index != 0:
            return echo_handler(conn, index)
        where, off, carry, done = at, 0, b"", False
        while True:
            data = conn.recv(65536)
            if not data:
                return
            inp = carry + data
            buf, carry = bytearray(inp), b""
            i = where - off
            if not done and 0 <= i < len(buf):
                if kind == "flip":
                    buf[i] ^= 0x40
                    done = True
                elif kind == "drop":
                    del buf[i]
                    done = True
                elif kind == "dup":
                    buf.insert(i, buf[i])
                    done = True
                elif kind == "swap":
                    if i + 1 == len(buf):
                        carry = bytes(buf[i:])  # wait for the byte after it
                        del buf[i:]
                    elif buf[i] == buf[i + 1]:
                        where += 1  # swapping equal bytes changes nothing: try the next pair
                    else:
                        buf[i], buf[i + 1] = buf[i + 1], buf[i]
                        done = True
            off += len(inp) - len(carry)
            conn.sendall(buf)

    return handler


def cross_handler():
    """Connection 1 gets connection 0's bytes (same offsets) instead of its own first chunk."""
    seen = bytearray()
    cond = threading.Condition()

    def handler(conn, index):
        if index == 0:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                with cond:
                    if len(seen) < 65536:
                        seen.extend(data)
                        cond.notify_all()
                conn.sendall(data)
        if index == 1:
            data = conn.recv(65536)
            with cond:
                cond.wait_for(lambda: len(seen) >= len(data), timeout=2)
                other = bytes(seen[: len(data)])
            conn.sendall(other if len(other) == len(data) else bytes(len(data)))
        echo_handler(conn, index)

    return handler


def blackhole_handler(conn, index):
    """Connection 0 reads but never echoes; the rest are fine."""
    if index != 0:
        return echo_handler(conn, index)
    while conn.recv(65536):
        pass


def flood_handler(conn, index):
    """Ignores the client and sends garbage as fast as it can."""
    junk = bytes(range(256)) * 256
    while True:
        conn.sendall(junk)


def delay_handler(conn, index):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        time.sleep(0.005)
        conn.sendall(data)


def stall_once_handler(after=0.5, stall=0.2):
    def handler(conn, index):
        start, stalled = time.monotonic(), False
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if not stalled and time.monotonic() - start >= after:
                time.sleep(stall)
                stalled = True
            conn.sendall(data)

    return handler


def freeze_handler(after=0.5):
    """Echo for `after` seconds after accepting, then keep reading but never answer again."""

    def handler(conn, index):
        end = time.monotonic() + after
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if time.monotonic() < end:
                conn.sendall(data)

    return handler


def capped_handler(conn, index):
    """At most one 64-byte read per ~2 ms: a server with a fixed capacity (< 500 requests/s)."""
    while True:
        data = conn.recv(64)
        if not data:
            return
        time.sleep(0.002)
        conn.sendall(data)


def close_odd_handler(conn, index):
    """Odd connections are closed by the server after 0.1 s."""
    if index % 2 == 0:
        return echo_handler(conn, index)
    conn.settimeout(0.05)
    end = time.monotonic() + 0.1
    while time.monotonic() < end:
        try:
            data = conn.recv(65536)
        except socket.timeout:
            continue
        if not data:
            return
        conn.sendall(data)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "echo_core", "load", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ------------------------------------------------------------ correct runs


@pytest.mark.parametrize("mode", ["stream", "rr", "rate"])
def test_correct_server(mode):
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode=mode, payload=512, connections=4, duration=0.5,
                     warmup=0.1, rate=2000 if mode == "rate" else None)
    assert r["mismatches"] == 0 and r["mismatched_conns"] == 0
    assert r["errors"] == 0 and r["connected"] == 4
    # A stream message the window's edge cuts counts whole, its bytes only inside: one per connection.
    assert r["messages"] > 0 and r["bytes"] >= (r["messages"] - 4) * 512
    assert r["msgs_per_s"] > 0 and r["bytes_per_s"] > 0
    assert abs(r["duration_s"] - 0.5) < 0.01
    assert 0 < r["fairness"] <= 1.0 + 1e-9
    assert 0 < r["conn_bytes_min"] <= r["conn_bytes_max"]
    assert r["send_calls"] > 0 and r["recv_calls"] > 0
    assert r["client_cpu_s"] == pytest.approx(r["client_cpu_user_s"] + r["client_cpu_sys_s"])
    if mode == "stream":
        assert all(math.isnan(r[k]) for k in ("p50_us", "p99_us", "p999_us", "max_us", "mean_us"))
    else:
        assert r["latency_samples"] > 0
        assert 0 < r["min_us"] <= r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"]
        assert r["min_us"] <= r["mean_us"] <= r["max_us"]


def test_result_keys():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, duration=0.2)
    for key in ("mode", "payload", "connections", "threads", "duration_s", "warmup_s", "rate",
                "msgs_per_s", "bytes_per_s", "messages", "bytes", "p50_us", "p90_us", "p99_us",
                "p999_us", "max_us", "mean_us", "min_us", "latency_samples", "fairness",
                "conn_bytes_min", "conn_bytes_max", "mismatches", "mismatched_conns", "connected",
                "connect_errors", "io_errors", "errors", "client_cpu_user_s", "client_cpu_sys_s",
                "client_cpu_s", "send_calls", "recv_calls", "unanswered", "never_answered",
                "send_lag_p50_us", "send_lag_p99_us", "send_lag_max_us", "latency_hist", "arrivals",
                "seed", "warmup_min_s", "warmup_max_s", "warmup_steady"):
        assert key in r, key


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = ThreadedServer(host="::1")
    except OSError:
        pytest.skip("::1 not configured")
    with srv:
        r = run_load(host="::1", port=srv.port, mode="rr", connections=2, duration=0.3)
    assert r["mismatches"] == 0 and r["messages"] > 0


def test_many_connections_two_threads():
    with SelectorServer() as srv:
        r = run_load(port=srv.port, mode="rr", payload=64, connections=1000, threads=2,
                     duration=1.0, cpus=sorted(os.sched_getaffinity(0))[:2], connect_timeout=10)
    assert r["connected"] == 1000 and r["errors"] == 0
    assert r["mismatches"] == 0
    assert r["messages"] > 1000
    assert r["conn_bytes_min"] > 0  # every connection made progress


def test_large_rr_payload_does_not_deadlock():
    # 4 MiB requests are far bigger than the socket buffers: the client must read while writing.
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rr", payload=4 << 20, connections=2, duration=1.0)
    assert r["mismatches"] == 0 and r["errors"] == 0
    assert r["messages"] >= 1


def test_stream_window_bounds_inflight():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="stream", payload=100, connections=1, duration=0.3, window=1000)
    assert r["mismatches"] == 0 and r["messages"] > 0


def test_rate_is_kept():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rate", payload=64, connections=4, duration=1.0,
                     warmup=0.2, rate=2000)
    assert r["mismatches"] == 0
    assert r["messages"] == pytest.approx(2000, rel=0.05)
    assert r["latency_samples"] == pytest.approx(2000, rel=0.05)


def stats_path(srv):
    return getattr(srv, "stats_path", None) or srv._stats_file.name


def test_window_snapshot_of_the_server(impl):
    # The load generator snapshots the server at its own window edges: in a steady stream the
    # server sent what the client received in that window, give or take what is in flight.
    with echo_core.Server(impl, port=0, cpu=max(os.sched_getaffinity(0))) as srv:
        r = run_load(port=srv.port, mode="stream", payload=4096, connections=2, duration=0.5,
                     warmup=0.2, server_pids=[srv.pid], server_stats_path=stats_path(srv))
    assert r["mismatches"] == 0 and r["errors"] == 0 and r["bytes"] > 0
    assert r["server_bytes_out"] == pytest.approx(r["bytes"], rel=0.05)
    assert r["server_bytes_in"] == pytest.approx(r["bytes"], rel=0.05)
    assert r["server_recv_calls"] > 0 and r["server_send_calls"] > 0
    assert r["server_cpu_s"] > 0
    # schedstat (ns) and stat (ticks) see the same CPU, the latter coarsely.
    assert r["server_cpu_s"] <= r["duration_s"] * 1.1
    assert abs(r["server_cpu_user_s"] + r["server_cpu_sys_s"] - r["server_cpu_s"]) < 0.1


def test_server_keys_only_when_asked():
    with ThreadedServer() as srv:
        plain = run_load(port=srv.port, duration=0.2)
        pid_only = run_load(port=srv.port, duration=0.2, server_pids=str(os.getpid()))
    assert not any(k.startswith("server_") for k in plain)
    # Without a counters file the counter deltas are unknown, not zero; the CPU is still read.
    assert math.isnan(pid_only["server_bytes_out"]) and math.isnan(pid_only["server_enobufs"])
    assert pid_only["server_cpu_s"] > 0


def test_fixed_warmup_is_reported_as_such():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rr", duration=0.2, warmup=0.15)
    assert r["warmup_steady"] is None
    assert r["warmup_s"] == pytest.approx(0.15, abs=1e-6)
    assert r["warmup_min_s"] == r["warmup_max_s"] == 0.15


def test_adaptive_warmup_finds_steady_state(impl):
    with echo_core.Server(impl, port=0, cpu=max(os.sched_getaffinity(0))) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=0.3,
                     warmup=0.2, warmup_max=3.0, server_pids=[srv.pid],
                     server_stats_path=stats_path(srv))
    assert r["warmup_steady"] is True
    assert 0.2 <= r["warmup_s"] < 3.0
    assert r["warmup_min_s"] == 0.2 and r["warmup_max_s"] == 3.0
    assert abs(r["duration_s"] - 0.3) < 0.01
    assert r["mismatches"] == 0 and r["errors"] == 0 and r["messages"] > 0
    # The window's server counters match the client's, give or take what was in flight at the
    # edges and how late the snapshots ran on a busy machine.
    assert r["server_bytes_out"] == pytest.approx(r["bytes"], rel=0.05)


def test_adaptive_warmup_gives_up_at_the_cap():
    # Nothing is ever echoed, so the load never looks steady: the window opens at warmup_max.
    with ThreadedServer(blackhole_handler) as srv:
        r = run_load(port=srv.port, mode="rr", connections=1, duration=0.2, warmup=0.1,
                     warmup_max=0.4)
    assert r["warmup_steady"] is False
    assert r["warmup_s"] == pytest.approx(0.4, abs=1e-6)


def test_rate_mode_keeps_a_fixed_warmup():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rate", rate=500, duration=0.2, warmup=0.1, warmup_max=2.0)
    assert r["warmup_steady"] is None and r["warmup_s"] == pytest.approx(0.1, abs=1e-6)


def test_histogram_roundtrip_matches_c_percentiles():
    with ThreadedServer() as srv:
        a = run_load(port=srv.port, mode="rr", payload=64, connections=2, duration=0.3)
        b = run_load(port=srv.port, mode="rate", rate=2000, payload=64, connections=2, duration=0.3)
    for r in (a, b):
        enc = r["latency_hist"]
        buckets = histogram.decode(enc)
        assert sum(buckets.values()) == r["latency_samples"] > 0
        assert histogram.encode(buckets) == enc
        dense = [buckets.get(i, 0) for i in range(histogram.BUCKETS)]
        assert histogram.encode(dense) == enc
        # Same rule as C (bucket midpoint); C also clamps to the exact min/max: within half a bucket.
        for q, key in ((0.5, "p50_us"), (0.9, "p90_us"), (0.99, "p99_us"), (0.999, "p999_us")):
            assert histogram.quantile(enc, q) == pytest.approx(r[key], rel=1 / 64 + 1e-9)
    merged = histogram.merge([a["latency_hist"], b["latency_hist"]])
    assert histogram.count(merged) == a["latency_samples"] + b["latency_samples"]
    assert histogram.merge([a["latency_hist"], a["latency_hist"]]) == histogram.encode(
        {i: 2 * c for i, c in histogram.decode(a["latency_hist"]).items()})
    lo, hi = sorted((a["p50_us"], b["p50_us"]))
    assert lo * (1 - 1 / 64) <= histogram.quantile(merged, 0.5) <= hi * (1 + 1 / 64)


def test_histogram_helpers():
    assert histogram.encode([0] * histogram.BUCKETS) == ""
    assert histogram.decode("") == {}
    assert math.isnan(histogram.quantile("", 0.5))
    # Bucket 1000 covers [low, low + width): its midpoint is what a quantile reports.
    low, width = histogram.bucket_low(1000), histogram.bucket_width(1000)
    assert histogram.quantile("1000:5", 0.99) == (low + width // 2) / 1e3
    assert histogram.bucket_low(1001) == low + width
    with pytest.raises(ValueError):
        histogram.decode("1:2 x")
    with pytest.raises(ValueError):
        histogram.decode(f"{histogram.BUCKETS}:1")


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize("mode", ["stream", "rr"])
@pytest.mark.parametrize("kind", ["flip", "drop", "dup", "swap"])
def test_corrupting_server_is_caught(kind, mode):
    with ThreadedServer(fault_handler(kind)) as srv:
        r = run_load(port=srv.port, mode=mode, payload=512, connections=2, duration=0.4)
    assert r["mismatches"] > 0, r
    assert r["mismatched_conns"] == 1


def test_flip_one_byte_counts_one_byte():
    with ThreadedServer(fault_handler("flip")) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=1, duration=0.3)
    assert r["mismatches"] == 1 and r["mismatched_conns"] == 1


def test_bytes_from_another_connection_are_caught():
    with ThreadedServer(cross_handler()) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=0.3)
    assert r["mismatches"] > 0 and r["mismatched_conns"] >= 1


def test_lost_bytes_are_caught():
    # Connection 0 never gets an echo: the drain after the window finds its bytes missing.
    with ThreadedServer(blackhole_handler) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=0.3)
    assert r["mismatches"] >= 512 and r["mismatched_conns"] == 1
    # Its one request never came back, and it was open when the window closed.
    assert r["never_answered"] == 1
    assert r["unanswered"] >= 1


@pytest.mark.parametrize("mode", ["stream", "rr", "rate"])
def test_correct_server_answers_everything(mode):
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode=mode, payload=512, connections=2, duration=0.3,
                     rate=1000 if mode == "rate" else None)
    assert r["never_answered"] == 0 and r["mismatches"] == 0
    if mode == "stream":
        assert r["unanswered"] == 0 and r["latency_hist"] == ""


def test_stream_never_answered_in_payload_units():
    # Stream: what connection 0 had in flight when the server stopped echoing, in payloads rounded up.
    with ThreadedServer(blackhole_handler) as srv:
        r = run_load(port=srv.port, mode="stream", payload=1000, connections=1, duration=0.3,
                     window=4500)
    assert r["never_answered"] == 5  # 4500 bytes unechoed -> 4.5 payloads -> 5
    assert r["mismatches"] == 4500


@pytest.mark.parametrize("mode", ["stream", "rr", "rate"])
def test_flooding_server_cannot_hold_the_run(mode):
    with ThreadedServer(flood_handler) as srv:
        start = time.monotonic()
        r = run_load(port=srv.port, mode=mode, payload=512, connections=2, duration=0.5,
                     rate=1000 if mode == "rate" else None)
        elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert abs(r["duration_s"] - 0.5) < 0.01
    assert r["mismatches"] > 0 and r["mismatched_conns"] == 2


def test_flip_cli_exits_nonzero():
    with ThreadedServer(fault_handler("flip")) as srv:
        p = cli("--port", str(srv.port), "--mode", "rr", "--payload", "512", "--duration", "0.3", "--json")
    assert p.returncode != 0, p.stderr
    out = json.loads(p.stdout)
    assert out["mismatches"] > 0


def test_cli_clean_run_prints_strict_json():
    with ThreadedServer() as srv:
        p = cli("--port", str(srv.port), "--mode", "stream", "--payload", "1K", "--duration", "0.3", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert out["mismatches"] == 0 and out["messages"] > 0 and out["p50_us"] is None


def test_cli_summary_and_bad_input():
    with ThreadedServer() as srv:
        p = cli("--port", str(srv.port), "--duration", "0.2")
        assert p.returncode == 0 and "latency" in p.stdout
        bad = cli("--port", str(srv.port), "--payload", "0")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr


def test_cli_new_flags():
    with echo_core.Server("epoll", port=0, cpu=max(os.sched_getaffinity(0))) as srv:
        p = cli("--port", str(srv.port), "--mode", "rate", "--rate", "500", "--arrivals", "uniform",
                "--seed", "7", "--duration", "0.3", "--server-pid", str(srv.pid),
                "--server-stats", stats_path(srv), "--json")
        q = cli("--port", str(srv.port), "--mode", "rr", "--warmup", "0.1", "--warmup-max", "2",
                "--duration", "0.2")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["arrivals"] == "uniform" and out["seed"] == 7
    assert out["server_bytes_out"] > 0 and out["server_cpu_s"] > 0
    assert out["send_lag_p99_us"] is not None and out["latency_hist"]
    assert q.returncode == 0, q.stderr
    assert "warm-up (steady" in q.stdout or "warm-up (not steady" in q.stdout


@pytest.mark.parametrize("flags", [
    ("--warmup", "1", "--warmup-max", "0.5"),
    ("--warmup-max", "soon"),
    ("--mode", "rate", "--rate", "100", "--arrivals", "bursty"),
    ("--seed", "x"),
    ("--server-pid", "0"),
    ("--server-pid", "12,x"),
    ("--server-stats", "/nonexistent/stats"),
])
def test_cli_new_flags_bad_input(flags):
    p = cli("--port", "9", "--duration", "0.1", *flags)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr


def test_server_closing_connections_counts_io_errors():
    with ThreadedServer(close_odd_handler) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=4, duration=0.5)
    assert r["io_errors"] == 2 and r["errors"] == 2
    assert r["connected"] == 4 and r["messages"] > 0
    assert r["mismatches"] == 0


# --------------------------------------------------------------- latency


def test_slow_server_latency():
    with ThreadedServer(delay_handler) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=1, duration=0.5)
    assert r["p50_us"] >= 5000
    # Every answered round trip took >= 5 ms.  Closed loop counts the one request open at the
    # window's end as unanswered but adds no sample for it (it would be a lower bound).
    assert r["unanswered"] <= 1 and r["min_us"] >= 5000
    short = sum(c for i, c in histogram.decode(r["latency_hist"]).items()
                if histogram.bucket_low(i) + histogram.bucket_width(i) <= 5_000_000)
    assert short == 0
    assert histogram.count(r["latency_hist"]) == r["latency_samples"]


def test_stall_open_loop_sees_it_closed_loop_hides_it():
    # One 200 ms stall, 0.5 s into the window.  Open loop keeps its schedule, so the
    # ~400 requests due during the stall (20% of 2000) all wait; closed loop records
    # a single slow round trip among tens of thousands.
    settings = dict(payload=64, connections=1, duration=2.0)
    with ThreadedServer(stall_once_handler()) as srv:
        rate = run_load(port=srv.port, mode="rate", rate=1000, **settings)
        rr = run_load(port=srv.port, mode="rr", **settings)
    assert rate["mismatches"] == 0 and rr["mismatches"] == 0
    assert rate["max_us"] >= 200_000
    assert rate["p999_us"] >= 150_000
    assert rate["p99_us"] >= 100_000
    assert rr["max_us"] >= 200_000  # the stall is there...
    assert rr["latency_samples"] > 2000
    assert rr["p999_us"] < 100_000  # ...but hidden in the percentiles
    assert rr["p99_us"] < 50_000


def test_server_that_freezes_is_charged_for_every_open_request():
    # Echoes for 0.5 s, then silence.  Requests due from 0.5 s to the window's end (~3000 at
    # 2000/s) are never answered: each waits until the window's end at least, so p99 is ~1.4 s.
    with ThreadedServer(freeze_handler(0.5)) as srv:
        r = run_load(port=srv.port, mode="rate", rate=2000, payload=64, connections=4, duration=2.0)
    assert 2000 < r["unanswered"] < 3600, r["unanswered"]
    assert r["latency_samples"] == pytest.approx(4000, rel=0.15)
    assert r["p99_us"] >= 1_000_000
    assert r["max_us"] <= 2_000_000 * 1.02  # nothing can have waited longer than the window
    assert r["messages"] < 1300  # only the first ~0.5 s was answered
    assert r["never_answered"] > 1000


def test_cli_exits_nonzero_when_the_server_freezes():
    with ThreadedServer(freeze_handler(0.3)) as srv:
        p = cli("--port", str(srv.port), "--mode", "rate", "--rate", "1000", "--payload", "64",
                "--connections", "2", "--duration", "1", "--json")
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout)
    assert out["unanswered"] > 300 and out["never_answered"] > 0


def test_rate_above_capacity_falls_behind_and_latency_grows():
    # The server manages < 500 requests/s; offered 1000/s.  An open loop keeps offering, so
    # achieved < offered and the queue (hence latency) grows with the length of the run.
    runs = {}
    for duration in (0.5, 1.0):
        with ThreadedServer(capped_handler) as srv:
            runs[duration] = run_load(port=srv.port, mode="rate", rate=1000, payload=64,
                                      connections=1, duration=duration)
    for r in runs.values():
        assert r["msgs_per_s"] < 0.7 * r["rate"]
        assert r["unanswered"] > 0.2 * r["rate"] * r["duration_s"]
        assert r["mismatches"] == 0
    assert runs[1.0]["p50_us"] > 1.4 * runs[0.5]["p50_us"]
    assert runs[1.0]["max_us"] > 1.4 * runs[0.5]["max_us"]


@pytest.mark.parametrize("arrivals", ["uniform", "poisson"])
def test_rate_below_capacity_is_achieved(arrivals):
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rate", rate=1000, payload=64, connections=2, duration=1.0,
                     warmup=0.1, arrivals=arrivals)
    assert r["arrivals"] == arrivals and r["seed"] == 1
    assert r["msgs_per_s"] == pytest.approx(1000, rel=0.15)
    assert r["unanswered"] <= 20 and r["never_answered"] == 0
    # Send lag is the client's own lateness: small when the client is idle most of the time.
    assert 0 <= r["send_lag_p50_us"] <= r["send_lag_p99_us"] <= r["send_lag_max_us"]
    assert r["send_lag_p50_us"] < 5000


def test_send_lag_only_in_rate_mode():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rr", duration=0.2)
    assert r["arrivals"] == ""
    assert all(math.isnan(r[k]) for k in ("send_lag_p50_us", "send_lag_p99_us", "send_lag_max_us"))


def schedule(arrivals, rate, connections, index, n, seed=1):
    from echo_core._native import ffi, lib

    times = ffi.new("uint64_t[]", n)
    kind = {"uniform": lib.EC_ARRIVALS_UNIFORM, "poisson": lib.EC_ARRIVALS_POISSON}[arrivals]
    assert lib.ec_load_schedule(kind, rate, connections, index, seed, times, n) == 0
    return list(times)


def cv_of_gaps(times):
    gaps = [b - a for a, b in zip(times, times[1:])]
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    return mean, sd / mean


def test_arrival_schedules():
    # 1000 req/s over 4 connections: each connection's mean gap is 4 ms.
    mean, cv = cv_of_gaps(schedule("poisson", 1000, 4, 1, 20000))
    assert mean == pytest.approx(4e6, rel=0.03)
    assert cv == pytest.approx(1.0, abs=0.05)  # exponential gaps
    mean, cv = cv_of_gaps(schedule("uniform", 1000, 4, 1, 2000))
    assert mean == pytest.approx(4e6, rel=1e-6) and cv < 0.001
    assert schedule("uniform", 1000, 4, 1, 1)[0] == 1_000_000  # connection i starts i/rate in
    # Reproducible from the seed, different across seeds and connections.
    assert schedule("poisson", 1000, 4, 1, 50) == schedule("poisson", 1000, 4, 1, 50)
    assert schedule("poisson", 1000, 4, 1, 50) != schedule("poisson", 1000, 4, 1, 50, seed=2)
    assert schedule("poisson", 1000, 4, 1, 50) != schedule("poisson", 1000, 4, 2, 50)
    # All connections together: a Poisson process at the total rate.
    merged = sorted(t for i in range(4) for t in schedule("poisson", 1000, 4, i, 3000))
    merged = [t for t in merged if t < 2_000_000_000]
    assert len(merged) == pytest.approx(2000, rel=0.1)
    assert cv_of_gaps(merged)[1] == pytest.approx(1.0, abs=0.08)


def test_schedule_rejects_bad_input():
    from echo_core._native import ffi, lib

    times = ffi.new("uint64_t[]", 4)
    assert lib.ec_load_schedule(7, 1000, 4, 0, 1, times, 4) == -errno.EINVAL
    assert lib.ec_load_schedule(lib.EC_ARRIVALS_POISSON, 0, 4, 0, 1, times, 4) == -errno.EINVAL
    assert lib.ec_load_schedule(lib.EC_ARRIVALS_POISSON, 1000, 4, 4, 1, times, 4) == -errno.EINVAL


# -------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(payload=0),
        dict(payload=-1),
        dict(connections=0),
        dict(connections=100_000),
        dict(duration=-1),
        dict(duration=0),
        dict(duration=float("nan")),
        dict(warmup=-0.5),
        dict(mode="bogus"),
        dict(mode="rate"),
        dict(mode="rate", rate=0),
        dict(mode="rate", rate=-5),
        dict(threads=0),
        dict(port=0),
        dict(port=70000),
        dict(port=None),
        dict(host="10.1.2.3"),
        dict(host="0.0.0.0"),
        dict(host="192.168.0.1"),
        dict(host="example.com"),
        dict(host="localhost"),
        dict(host="2001:db8::1"),
        dict(cpus="zero"),
        dict(cpus=[4096]),
        dict(warmup=1.0, warmup_max=0.5),
        dict(warmup_max=float("inf")),
        dict(warmup_max=-1),
        dict(warmup_max=1e9),
        dict(mode="rate", rate=100, arrivals="bogus"),
        dict(seed=-1),
        dict(seed=1.5),
        dict(server_pids=[0]),
        dict(server_pids="abc"),
        dict(server_pids=[2**31 - 2]),
        dict(server_stats_path="/nonexistent/echo_core-stats"),
    ],
)
def test_bad_input_raises_value_error(kwargs):
    args = dict(port=9, duration=0.1)
    args.update(kwargs)
    start = time.monotonic()
    with pytest.raises(ValueError):
        run_load(**args)
    assert time.monotonic() - start < 1


def test_unreachable_port_raises_connection_error_quickly():
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        run_load(port=free_port(), connections=50, duration=5.0)
    assert time.monotonic() - start < 3


def test_cli_unreachable_port():
    p = cli("--port", str(free_port()), "--duration", "5")
    assert p.returncode == 1
    assert p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_c_layer_rejects_bad_config():
    from echo_core._native import ffi, lib

    host = ffi.new("char[]", b"127.0.0.1")

    def run(**overrides):
        cfg = ffi.new("struct ec_load_config *")
        cfg.host = host
        cfg.port = 9
        cfg.mode = lib.EC_MODE_RR
        cfg.payload = 64
        cfg.connections = 1
        cfg.threads = 1
        cfg.duration_s = 0.1
        cfg.stop_fd = -1
        cfg.window_ctl_fd = -1
        for k, v in overrides.items():
            setattr(cfg, k, v)
        res = ffi.new("struct ec_load_result *")
        return lib.ec_load_run(cfg, res)

    assert run(payload=0) == -errno.EINVAL
    assert run(connections=0) == -errno.EINVAL
    assert run(threads=0) == -errno.EINVAL
    assert run(duration_s=0) == -errno.EINVAL
    assert run(duration_s=float("nan")) == -errno.EINVAL
    assert run(warmup_s=-1) == -errno.EINVAL
    assert run(warmup_s=1.0, warmup_max_s=0.5) == -errno.EINVAL
    assert run(warmup_max_s=float("inf")) == -errno.EINVAL
    assert run(warmup_max_s=float("nan")) == -errno.EINVAL
    assert run(warmup_max_s=1e12) == -errno.EINVAL
    assert run(mode=lib.EC_MODE_RATE, rate=100, arrivals=5) == -errno.EINVAL
    assert run(nserver_pids=1) == -errno.EINVAL  # no pid array
    assert run(mode=7) == -errno.EINVAL
    assert run(mode=lib.EC_MODE_RATE, rate=0) == -errno.EINVAL
    assert run(port=0) == -errno.EINVAL
    assert run(port=65536) == -errno.EINVAL
    assert run(client=9) == -errno.EINVAL
    assert run(client=lib.EC_CLIENT_THREADS, mode=lib.EC_MODE_RATE, rate=100) == -errno.EINVAL
    assert run(client=lib.EC_CLIENT_THREADS, connections=lib.EC_LOAD_MAX_THREADS_CONNECTIONS + 1) == -errno.EINVAL
    bad_host = ffi.new("char[]", b"localhost")
    assert run(host=bad_host) == -errno.EINVAL
    assert run(host=ffi.NULL) == -errno.EINVAL


def test_sigint_ends_cli_run_early():
    with ThreadedServer() as srv:
        start = time.monotonic()
        p = subprocess.Popen(
            [sys.executable, "-m", "echo_core", "load", "--port", str(srv.port), "--duration", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            # Once the server accepted, the client is inside ec_load_run with ^C watched.
            deadline = time.monotonic() + 10
            while srv.accepted < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.accepted == 1
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=10)
        finally:
            p.kill()
    assert time.monotonic() - start < 15
    assert p.returncode == 130, err
    assert "Traceback" not in err


def test_run_from_a_thread():
    # Off the main thread there is no ^C hook; the run must work all the same.
    results = []
    with ThreadedServer() as srv:
        t = threading.Thread(target=lambda: results.append(run_load(port=srv.port, duration=0.2)))
        t.start()
        t.join(10)
    assert results and results[0]["messages"] > 0 and results[0]["mismatches"] == 0


# --------------------------------------------------- the project's servers


def test_ten_thousand_connections_against_project_server(impl):
    with echo_core.Server(impl, port=0, cpu=SERVER_CPU) as srv:
        r = run_load(port=srv.port, mode="rr", payload=64, connections=MANY_CONNECTIONS, duration=1.0,
                     cpus=CLIENT_CPUS[:1], connect_timeout=20)
    assert r["connected"] == MANY_CONNECTIONS
    assert r["mismatches"] == 0
    assert r["errors"] == 0
    assert r["messages"] > 10000


def test_histogram_bucket_helpers_refuse_indexes_past_the_last_bucket():
    """Review item 6: an index past the last bucket shifted by 64 or more (undefined); now it is 0."""
    from echo_core._native import lib

    last = lib.EC_HIST_BUCKETS - 1
    assert lib.ec_hist_bucket_low(last) > lib.ec_hist_bucket_low(last - 1) > 0
    assert lib.ec_hist_bucket_width(last) > 0
    for idx in (lib.EC_HIST_BUCKETS, lib.EC_HIST_BUCKETS + 64, 2**32 - 1):
        assert lib.ec_hist_bucket_low(idx) == 0
        assert lib.ec_hist_bucket_width(idx) == 0


# --------------------------------------------------------- client designs

OTHER_CLIENTS = ("epoll-lt", "threads")


@pytest.mark.parametrize("mode", ["stream", "rr"])
@pytest.mark.parametrize("client", OTHER_CLIENTS)
def test_client_design_verifies_and_reports_the_same_columns(client, mode):
    with ThreadedServer() as srv:
        base = run_load(port=srv.port, mode=mode, payload=16384, connections=3, duration=0.3)
        r = run_load(port=srv.port, mode=mode, payload=16384, connections=3, duration=0.3, client=client)
    assert set(r) == set(base)
    assert (base["client"], r["client"]) == ("epoll-et", client)
    assert r["connected"] == 3 and r["messages"] > 0 and r["errors"] == 0
    assert r["mismatches"] == 0 and r["never_answered"] == 0
    # Both read at most 64 KiB per call (the default design reads up to 256 KiB).
    assert r["bytes"] <= r["recv_calls"] * 65536
    if mode == "rr":
        assert r["latency_samples"] > 0 and r["unanswered"] <= 3


@pytest.mark.parametrize("mode", ["stream", "rr"])
@pytest.mark.parametrize("kind", ["flip", "drop"])
@pytest.mark.parametrize("client", OTHER_CLIENTS)
def test_client_design_catches_a_corrupting_server(client, kind, mode):
    with ThreadedServer(fault_handler(kind)) as srv:
        r = run_load(port=srv.port, mode=mode, payload=512, connections=2, duration=0.3, client=client)
    assert r["mismatches"] > 0 and r["mismatched_conns"] == 1, r


@pytest.mark.parametrize("mode", ["stream", "rr"])
@pytest.mark.parametrize("client", OTHER_CLIENTS)
def test_client_design_catches_lost_bytes(client, mode):
    with ThreadedServer(blackhole_handler) as srv:
        r = run_load(port=srv.port, mode=mode, payload=512, connections=2, duration=0.3, client=client)
    assert r["mismatches"] >= 512 and r["mismatched_conns"] == 1
    assert r["never_answered"] >= 1


@pytest.mark.parametrize("handler", ["flood", "freeze"])
@pytest.mark.parametrize("mode", ["stream", "rr"])
def test_blocking_client_is_bounded_in_time(mode, handler):
    # A thread blocked in recv or send must still end with the window (its sockets time out).
    server = flood_handler if handler == "flood" else freeze_handler(0.1)
    with ThreadedServer(server) as srv:
        start = time.monotonic()
        r = run_load(port=srv.port, mode=mode, payload=512, connections=2, duration=0.5, client="threads")
        elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 1.0 + 1.5  # window + drain's idle limit + slack
    assert abs(r["duration_s"] - 0.5) < 0.02
    if handler == "flood":
        assert r["mismatches"] > 0 and r["mismatched_conns"] == 2
    else:
        assert r["never_answered"] >= 1


def test_sigint_ends_a_blocking_client_run_early():
    with ThreadedServer(freeze_handler(0.1)) as srv:
        start = time.monotonic()
        p = subprocess.Popen(
            [sys.executable, "-m", "echo_core", "load", "--port", str(srv.port), "--duration", "30",
             "--client", "threads", "--mode", "stream", "--connections", "4"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 130, (out, err)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("kwargs, message", [
    ({"client": "uring"}, "client must be one of"),
    ({"client": "threads", "mode": "rate", "rate": 100}, "cannot keep an open-loop"),
    ({"client": "threads", "connections": 5000}, "at most 1024"),
])
def test_client_design_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        run_load(port=9, **{"duration": 0.1, **kwargs})


def test_cli_client_flag():
    with ThreadedServer() as srv:
        p = cli("--port", str(srv.port), "--mode", "rr", "--duration", "0.2", "--client", "epoll-lt", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["client"] == "epoll-lt"
    p = cli("--port", "9", "--client", "bogus")
    assert p.returncode == 2 and "invalid choice" in p.stderr and "Traceback" not in p.stderr


# ------------------------------------------------------------ stationarity

def slow_down_handler(after=0.7, delay=0.002):
    """Echo at full speed for `after` seconds, then wait `delay` before every echo: a server whose
    throughput falls inside the window."""
    def handler(conn, index):
        start = time.monotonic()
        while True:
            data = conn.recv(65536)
            if not data:
                return
            if time.monotonic() - start >= after:
                time.sleep(delay)
            conn.sendall(data)

    return handler


def test_window_series_covers_the_window():
    with ThreadedServer() as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=1.2, warmup=0.1)
    series = [int(x) for x in r["window_series"].split()]
    assert r["window_series_step_s"] == pytest.approx(0.1)
    assert 11 <= len(series) <= 12
    assert sum(series) <= r["bytes"] * 1.05 + 2048 and sum(series) >= r["bytes"] * 0.8
    from echo_core.results import validity
    assert validity.drift(r) == validity.drift(r)  # a number: the series is long enough


def test_a_server_slowing_down_in_the_window_makes_the_run_non_stationary():
    from echo_core.results import validity

    with ThreadedServer(slow_down_handler(after=0.8)) as srv:
        r = run_load(port=srv.port, mode="rr", payload=512, connections=2, duration=1.2, warmup=0.2)
    assert validity.drift(r) < -validity.STATIONARITY_TOLERANCE, r["window_series"]
    valid, why = validity.assess(r)
    assert not valid and "non-stationary" in why


def test_drift_needs_a_long_enough_series():
    from echo_core.results import validity

    assert math.isnan(validity.drift({"window_series": "10 10 1"}))
    assert math.isnan(validity.drift({}))
    assert validity.drift({"window_series": " ".join(["10"] * 12)}) == 0
    assert validity.drift({"window_series": " ".join(["10"] * 8 + ["5"] * 4)}) == pytest.approx(-5 / (100 / 12))
