"""One benchmark run: a pinned server process, a pinned load-generator process, one tidy row."""

import json
import os
import select
import subprocess
import sys
import time

from echo_core.load import check_load_args
from echo_core.server import Server

#: A side whose CPU use over the measured window reaches this fraction of its CPUs was saturated.
SATURATED = 0.90
#: Server counters whose change over the measured window goes into the row (as server_<name>).
WINDOW_COUNTERS = ("loop_iterations", "wait_calls", "recv_calls", "send_calls", "accept_calls",
                   "short_sends", "enobufs", "conn_errors", "bytes_in", "bytes_out")


def default_cpus():
    """Server on the last CPU, client on all the others (on 2 vCPUs: server 1, client 0)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return cpus[0], cpus
    return cpus[-1], cpus[:-1]


def _task_cpu_ns(pid):
    """CPU time (ns) of every thread of a process, from schedstat: finer than clock ticks."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def _snapshot(srv):
    user, system = srv.cpu_times()
    return {"t": time.monotonic(), "cpu_ns": _task_cpu_ns(srv.pid), "user": user, "sys": system,
            "stats": srv.stats()}


def bottleneck(server_util, client_util):
    """Which side ran out of CPU: 'server', 'client', 'both' or 'none'."""
    server_bound, client_bound = server_util >= SATURATED, client_util >= SATURATED
    if server_bound and client_bound:
        return "both"
    return "server" if server_bound else "client" if client_bound else "none"


def _load_command(port, host, mode, payload, connections, duration, warmup, rate, threads, cpus, window,
                  notify_fd):
    cmd = [sys.executable, "-m", "echo_core", "load", "--json", "--host", host, "--port", str(port),
           "--mode", mode, "--payload", str(payload), "--connections", str(connections),
           "--duration", str(duration), "--warmup", str(warmup), "--threads", str(threads),
           "--cpu", ",".join(map(str, cpus)), "--window", str(window), "--notify-fd", str(notify_fd)]
    if rate is not None:
        cmd += ["--rate", str(rate)]
    return cmd


def run_benchmark(impl, mode, payload, connections, duration=2.0, warmup=0.5, rate=None,
                  server_cpu=None, client_cpus=None, threads=None, host="127.0.0.1", window=0,
                  server_options=None):
    """Run one load against a fresh server and return one flat row (dict).

    The row holds the load generator's record (throughput, latency percentiles, fairness,
    mismatches, errors, client CPU), the server's CPU use and counters over the same measured
    window, each side's CPU utilisation and which side was the bottleneck.
    """
    auto_server, auto_client = default_cpus()
    server_cpu = auto_server if server_cpu is None else server_cpu
    client_cpus = list(auto_client if client_cpus is None else client_cpus)
    threads = threads or len(client_cpus)
    # Refuse bad load arguments before a server is started (port 1 stands for the one it will pick).
    check_load_args(host, 1, mode, payload, connections, threads, duration, warmup, window=window,
                    rate=rate, cpus=client_cpus)
    with Server(impl, host=host, port=0, cpu=server_cpu, **(server_options or {})) as srv:
        notify_r, notify_w = os.pipe()
        cmd = _load_command(srv.port, host, mode, payload, connections, duration, warmup, rate, threads,
                            client_cpus, window, notify_w)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                pass_fds=(notify_w,))
        os.close(notify_w)
        os.sched_setaffinity(proc.pid, set(client_cpus))
        marks = _watch_window(notify_r, srv, timeout=warmup + duration + 60)
        os.close(notify_r)
        try:
            out, err = proc.communicate(timeout=duration + warmup + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError("load generator did not finish in time") from None
    record = _parse_record(out, err, proc.returncode)
    return _make_row(impl, srv, record, marks, server_cpu, client_cpus)


def _watch_window(fd, srv, timeout):
    """Snapshot the server at the load generator's window start ('S') and end ('E')."""
    marks, deadline, pending = {}, time.monotonic() + timeout, b""
    while len(marks) < 2 and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            break
        pending += chunk
        for mark in (b"S", b"E"):
            if mark in pending and mark not in marks:
                marks[mark] = _snapshot(srv)
    return marks


def _parse_record(out, err, code):
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load generator failed (exit {code}): {err.strip() or out.strip()}")
    # The CLI writes NaN (no latency in stream mode, no rate outside rate mode) as JSON null.
    return {k: float("nan") if v is None else v for k, v in json.loads(lines[-1]).items()}


def _make_row(impl, srv, record, marks, server_cpu, client_cpus):
    row = {"impl": impl, **record, "server_cpu": server_cpu,
           "client_cpus": ",".join(map(str, client_cpus))}
    if b"S" in marks and b"E" in marks:
        start, end = marks[b"S"], marks[b"E"]
        window = max(end["t"] - start["t"], 1e-9)
        server_cpu_s = (end["cpu_ns"] - start["cpu_ns"]) / 1e9
        row["server_cpu_user_s"] = end["user"] - start["user"]
        row["server_cpu_sys_s"] = end["sys"] - start["sys"]
        row["server_cpu_s"] = server_cpu_s
        for name in WINDOW_COUNTERS:
            row[f"server_{name}"] = end["stats"][name] - start["stats"][name]
    else:  # the load generator never reached its window (e.g. nothing connected)
        window, server_cpu_s = float("nan"), float("nan")
        row.update({"server_cpu_user_s": server_cpu_s, "server_cpu_sys_s": server_cpu_s,
                    "server_cpu_s": server_cpu_s})
    msgs = record["msgs_per_s"] * record["duration_s"]  # fractional in stream mode, see load.py
    ops = row.get("server_recv_calls", 0) + row.get("server_send_calls", 0)
    # io_uring's recvs and sends are queue entries; only io_uring_enter is a system call.
    syscalls = row.get("server_wait_calls", 0) + (ops if impl == "epoll" else 0)
    row["server_ops_per_msg"] = ops / msgs if msgs else float("nan")
    row["server_syscalls_per_msg"] = syscalls / msgs if msgs else float("nan")
    row["server_cpu_us_per_msg"] = server_cpu_s * 1e6 / msgs if msgs else float("nan")
    row["client_cpu_us_per_msg"] = record["client_cpu_s"] * 1e6 / msgs if msgs else float("nan")
    row["server_util"] = server_cpu_s / window
    row["client_util"] = record["client_cpu_s"] / (record["duration_s"] * len(client_cpus))
    row["bottleneck"] = bottleneck(row["server_util"], row["client_util"])
    return row
