"""One benchmark run: a pinned server process, a pinned load-generator process, one tidy row."""

import contextlib
import dataclasses
import ipaddress
import time

from echo_core.load import counters
from echo_core.servers import specs
from echo_core.results import validity
from echo_core.load.generator import DEFAULT_CLIENT, check_load_args
from echo_core.servers.options import parse_work, work_options
from echo_core.load.worker import LoadSpec, host_task, run_worker
from echo_core.host.cpus import cpus_shared, default_cpus
from echo_core.servers.factory import make_server
from echo_core.servers.serve import thread_cpus
from echo_core.lab import cluster

#: warmup_max="auto": the longest adaptive warm-up run_benchmark (and sweep) waits for a steady load.
AUTO_WARMUP_MAX_S = 5.0

#: A side whose CPU use over the measured window reaches this fraction of its CPUs was saturated.
SATURATED = 0.90


def bottleneck(server_util, client_util, shared=False):
    """Which side ran out of CPU: 'server', 'client', 'both' or 'none'; 'cpus-shared' when the two
    sides shared CPUs (see cpus_shared), where neither figure means what it says."""
    if shared:
        return "cpus-shared"
    if not (server_util == server_util and client_util == client_util):
        return "unknown"  # a side's CPU was not measured (e.g. an external server's went unread)
    server_bound, client_bound = server_util >= SATURATED, client_util >= SATURATED
    if server_bound and client_bound:
        return "both"
    return "server" if server_bound else "client" if client_bound else "none"


def run_benchmark(impl, mode, payload, connections, duration=2.0, warmup=0.5, warmup_max="auto", rate=None,
                  arrivals="poisson", server_cpu=None, client_cpus=None, threads=None, host="127.0.0.1",
                  window=0, server_options=None, observer=None, server_threads=1, server_cpus=None,
                  load_hosts=None, allow_remote=False, client=DEFAULT_CLIENT, work="none"):
    """Run one load against a fresh server and return one flat row (dict).

    ``impl`` is a server spec (echo_core.servers.specs: "uring", "epoll", "uring+mshot+bundle", ...) or
    "exec:CMD"; the row's ``impl`` is its canonical form.  A spec this machine cannot run raises
    OSError (EOPNOTSUPP) before anything starts; an option contradicting the spec, ValueError.

    The row holds the load generator's record (throughput, latency percentiles and histogram,
    unanswered requests, fairness, mismatches, errors, client CPU) and the server's CPU use and
    counters over the same measured window -- the load generator snapshots them itself at the
    instants it opens and closes its window -- each side's CPU utilisation, which side was the
    bottleneck, the window check (server bytes out / client bytes in) and the run's validity.
    ``warmup`` is the minimum warm-up; with ``warmup_max`` the load generator waits (up to it) for
    a steady state before opening the window.

    ``server_threads`` event loops in the server (``threads`` is the load generator's), pinned to
    ``server_cpus`` (default: see echo_core.servers.serve.thread_cpus, starting at ``server_cpu``); the row
    records them and how evenly the loops shared the connections and bytes.

    ``observer`` (e.g. a profiler) is a context-manager factory called with the running server; it
    is entered before the load starts and left before the server stops, and what it yields, if not
    None, is a FIFO the load generator writes "enable"/"disable" lines to at the window's edges.

    ``load_hosts`` (echo_core.lab.cluster.LoadHosts) sends the load from several dask workers instead of
    a local process: the connections are split over them, all start at one instant, the row sums
    them (``hosts``; per-host figures under ``host_rows``, which the sweep writes to a side table).
    The server then listens on load_hosts.server_address (in its namespace) when it has one.
    ``allow_remote`` lets load go to a non-loopback ``host`` outside echo_core's namespaces.

    ``client`` is the load generator's design (echo_core.load.generator.CLIENTS: "epoll-et",
    "epoll-lt", "threads") and ``work`` the server's work per request ("none", "touch" or "cpu=NS",
    echo_core.servers.options.parse_work); the row records both.

    ``warmup_max`` "auto" (the default) is an adaptive warm-up of at most AUTO_WARMUP_MAX_S where the
    load has a steady state to find (stream, rr, one load host); None is a fixed warm-up of ``warmup``.
    """
    impl = specs.canonical(impl)
    work = parse_work(work)[0]
    server_options = {**(server_options or {}), **work_options(work, payload)} if work != "none" else server_options
    if warmup_max == "auto":
        warmup_max = None if load_hosts is not None or mode == "rate" else max(warmup, AUTO_WARMUP_MAX_S)
    auto_server, auto_client = default_cpus()
    server_cpu = auto_server if server_cpu is None else server_cpu
    server_cpus = thread_cpus(server_threads, None if server_cpus else server_cpu, server_cpus) or [server_cpu]
    server_cpu = server_cpus[0]
    client_cpus = list(auto_client if client_cpus is None else client_cpus)
    threads = threads or len(client_cpus)
    if load_hosts is not None:
        if observer is not None:
            raise ValueError("an observer (profiler) watches a local load: not with load_hosts")
        row = _run_on_hosts(load_hosts, impl, mode, payload, connections, duration, warmup, warmup_max, rate,
                            arrivals, server_cpus, client_cpus, threads, host, window, server_options,
                            allow_remote, client)
        return {**row, "work": work}
    # Refuse bad load arguments before a server is started (port 1 stands for the one it will pick).
    check_load_args(host, 1, mode, payload, connections, threads, duration, warmup, window=window,
                    rate=rate, cpus=client_cpus, warmup_max=warmup_max, allow_remote=allow_remote, client=client)
    srv_threads = {} if server_threads == 1 else {"threads": server_threads, "cpus": server_cpus}
    with make_server(impl, host=host, port=0, cpu=server_cpu, **srv_threads, **(server_options or {})) as srv, \
            (observer(srv) if observer else contextlib.nullcontext()) as window_ctl:
        spec = LoadSpec(port=srv.port, host=host, mode=mode, payload=payload, connections=connections,
                        duration=duration, warmup=warmup, warmup_max=warmup_max, rate=rate, arrivals=arrivals,
                        threads=threads, cpus=tuple(client_cpus), window=window, server_pids=tuple(srv.pids()),
                        server_stats_path=_path(srv.stats_path), window_ctl_path=_path(window_ctl),
                        allow_remote=allow_remote, client=client)
        record, load_exit, error = run_worker(spec, client_cpus)
    if record is None:
        raise RuntimeError(error)
    per_thread = getattr(srv, "final_thread_stats", None)  # an external server has none
    return {**_make_row(impl, record, server_cpu, client_cpus, load_exit, server_cpus, per_thread), "work": work}


def _run_on_hosts(load_hosts, impl, mode, payload, connections, duration, warmup, warmup_max, rate, arrivals,
                  server_cpus, client_cpus, threads, host, window, server_options, allow_remote, client):
    """run_benchmark with the load from load_hosts' workers (echo_core.lab.cluster)."""
    if warmup_max is not None and mode != "rate":
        raise ValueError("load from several hosts needs a fixed warm-up (no warmup_max): they share one window")
    host = load_hosts.server_address or host
    if not load_hosts.same_machine and ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the load hosts are other machines: {host} would be their own loopback; give the "
                         "server's address on the network they share (--host ADDR --allow-remote)")
    per_host = cluster.split_connections(connections, len(load_hosts.workers))
    check_load_args(host, 1, mode, payload, per_host[0], threads, duration, warmup, window=window,
                    rate=rate, cpus=client_cpus, allow_remote=allow_remote, client=client)
    # The offered rate is the total: each host offers its connections' share of it.
    rates = [None if rate is None else rate * n / connections for n in per_host]
    srv_threads = {} if len(server_cpus) == 1 else {"threads": len(server_cpus), "cpus": server_cpus}
    with make_server(impl, host=host, port=0, cpu=server_cpus[0], netns=load_hosts.server_ns, **srv_threads,
                     **(server_options or {})) as srv:
        start_at = time.time() + cluster.start_margin(load_hosts, connections)
        # This machine's CPU numbers mean nothing on another: remote hosts run their load unpinned.
        cpus = client_cpus if load_hosts.same_machine else []

        def spec_for_host(k):
            # Only a host on the server's machine can read its /proc and counters file: host 1 does.
            local = k == 0 and load_hosts.same_machine
            # Rate mode: each host its own Poisson schedule (seed), not k copies of one.
            spec = LoadSpec(port=srv.port, host=host, mode=mode, payload=payload, connections=per_host[k],
                            duration=duration, warmup=warmup, rate=rates[k], arrivals=arrivals, threads=threads,
                            cpus=tuple(cpus), window=window, seed=1 + k,
                            server_pids=tuple(srv.pids()) if local else (),
                            server_stats_path=_path(srv.stats_path) if local else None, start_at=start_at,
                            allow_remote=allow_remote, client=client)
            return dataclasses.asdict(spec)

        limit = start_at - time.time() + warmup + duration + 60
        results = cluster.run_on_hosts(load_hosts, host_task, spec_for_host, cpus, limit)
    failed = next((r for r in results if r["record"] is None), None)
    if failed is not None:
        raise RuntimeError(failed["error"])
    records = [r["record"] for r in results]
    merged = cluster.merge_records(records)
    per_thread = getattr(srv, "final_thread_stats", None)  # an external server has none
    codes = [r["exit"] for r in results]
    load_exit = next((c for c in codes if c != 0), 0)
    # CPUs the load ran on: hosts on one machine (namespaces) share theirs.
    used = {(r["machine"], c) for r in results for c in (cpus or [None])}
    row = _make_row(impl, merged, server_cpus[0], client_cpus if cpus else [], load_exit, server_cpus,
                    per_thread, client_cpu_count=len(used))
    row["host_rows"] = [{"host": k + 1, "worker": w, "machine": r["machine"],
                         **{c: rec.get(c) for c in cluster.HOST_COLUMNS if c in rec}}
                        for k, (w, r, rec) in enumerate(zip(load_hosts.workers, results, records))]
    return row


def _path(path):
    return None if path is None else str(path)


def _ratio(a, b):
    nan = float("nan")
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return nan
    return a / b if b and b == b and a == a else nan


def _server_counter_columns(row, msgs):
    """The server's kernel and loop counters over the window, per message (or per wait / per recv).

    msgs is the row's messages in the window, as for server_cpu_us_per_msg.  A counter the run
    could not see is NaN; counters_note (from the load generator) says why for the perf counters.
    """
    nan = float("nan")
    g = row.get
    vol, invol = g("server_vol_ctx_switches", nan), g("server_invol_ctx_switches", nan)
    out = {
        "server_vol_ctx_switches_per_msg": _ratio(vol, msgs),
        "server_invol_ctx_switches_per_msg": _ratio(invol, msgs),
        "server_ctx_switches_per_msg": _ratio(vol + invol if vol is not None and invol is not None else nan, msgs),
        "server_minor_faults_per_msg": _ratio(g("server_minor_faults", nan), msgs),
        "server_completions_per_wait": _ratio(g("server_completions", nan), g("server_wait_calls", nan)),
        "server_bytes_per_recv": _ratio(g("server_bytes_in", nan), g("server_recv_ok", nan)),
        "server_sends_per_msg": _ratio(g("server_send_calls", nan), msgs),
        "server_recv_size_hist": g("server_recv_size_hist", ""),
    }
    out.update(counters.per_msg_columns(row, msgs))
    # A record without the server's pids (or from an older load generator) counted nothing.
    out["counters_note"] = g("counters_note", "no server pids: kernel counters not taken")
    return out


def _thread_columns(server_cpus, per_thread):
    """How the server's loops shared the run: per-thread conns_accepted and bytes_in at its end,
    and the imbalance max/mean of bytes_in (1.0 = even; NaN without bytes or counters)."""
    nan = float("nan")
    out = {"server_threads": len(server_cpus), "server_cpus": ",".join(map(str, server_cpus))}
    if not per_thread:
        return {**out, "server_thread_conns": "", "server_thread_bytes": "", "server_thread_imbalance": nan}
    conns = [t["conns_accepted"] for t in per_thread]
    data = [t["bytes_in"] for t in per_thread]
    mean = sum(data) / len(data)
    return {**out, "server_thread_conns": ",".join(map(str, conns)),
            "server_thread_bytes": ",".join(map(str, data)),
            "server_thread_imbalance": max(data) / mean if mean > 0 else nan}


def _make_row(impl, record, server_cpu, client_cpus, load_exit, server_cpus=None, per_thread=None,
              client_cpu_count=None):
    nan = float("nan")
    server_cpus = list(server_cpus) if server_cpus else [server_cpu]
    row = {"impl": impl, **record, "server_cpu": server_cpu, "client_cpus": ",".join(map(str, client_cpus)),
           "load_exit": load_exit, **_thread_columns(server_cpus, per_thread)}
    nthreads = row["server_threads"]
    window = record["duration_s"]
    server_cpu_s = row.get("server_cpu_s", nan)
    msgs = record["msgs_per_s"] * window  # fractional in stream mode, see load.py
    ops = row.get("server_recv_calls", nan) + row.get("server_send_calls", nan)
    # io_uring's recvs and sends are queue entries; only io_uring_enter is a system call.
    syscalls = row.get("server_wait_calls", nan) + (ops if specs.base_of(impl) == "epoll" else 0)
    row["server_ops_per_msg"] = ops / msgs if msgs else nan
    row["server_syscalls_per_msg"] = syscalls / msgs if msgs else nan
    row["server_cpu_us_per_msg"] = server_cpu_s * 1e6 / msgs if msgs else nan
    row["client_cpu_us_per_msg"] = record["client_cpu_s"] * 1e6 / msgs if msgs else nan
    row.update(_server_counter_columns(row, msgs))
    if not specs.is_exec(impl) and "sqpoll" in specs.parse(impl).features:
        # The SQ thread is an extra busy CPU (an io thread of the server process, so server_cpu_s
        # should include it and server_util may exceed 1): a reader comparing designs must know.
        row["server_note"] = "sqpoll: a kernel SQ polling thread uses a CPU of its own besides server_cpu"
    # Each loop has a CPU of its own: utilisation is of all of them.
    row["server_util"] = server_cpu_s / (window * nthreads) if window > 0 else nan
    row.setdefault("hosts", 1)
    client_cpu_count = client_cpu_count or len(client_cpus)
    row["client_util"] = record["client_cpu_s"] / (window * client_cpu_count) if window > 0 else nan
    row["bottleneck"] = bottleneck(row["server_util"], row["client_util"],
                                   shared=cpus_shared(server_cpus, client_cpus, nthreads))
    row["window_agreement"] = validity.window_agreement(row)
    row["valid"], row["invalid_reason"] = validity.assess(row)
    return row
