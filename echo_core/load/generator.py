"""The load generator: Python face of echo_core/csrc/load/loadgen.c (and its load_*.c files).

``run_load`` validates its arguments, hands one ``struct ec_load_config`` to
``ec_load_run`` (which runs with the GIL released) and returns one flat dict
of results.  ``add_load_arguments`` / ``load_command`` are the CLI glue used
by ``python -m echo_core load``.

Load goes to a loopback address (127.0.0.0/8 or ::1) or into a network
namespace echo_core created (echo_core.lab.netns), and elsewhere only with an
explicit allow_remote / --allow-remote: this tool opens thousands of
connections and pushes gigabytes per second, which is fine there and rude
anywhere else.
"""

import ipaddress
import math
import mmap
import os
import resource
import sys
import time

from echo_core.load import counters as kcounters
from echo_core.results import histogram
from echo_core.lab import netns
from echo_core.native import check, ffi, lib
from echo_core.host.signals import StopOnSignal
from echo_core.host import cpus as cpus_, numbers
from echo_core.load.record import encode_record, exit_status

MODES = {"stream": lib.EC_MODE_STREAM, "rr": lib.EC_MODE_RR, "rate": lib.EC_MODE_RATE}
ARRIVALS = {"poisson": lib.EC_ARRIVALS_POISSON, "uniform": lib.EC_ARRIVALS_UNIFORM}
#: Client designs (echo_core.h, EC_CLIENT_*): how the load generator does its I/O.  Every design verifies
#: every byte and reports the same columns; the first is the default.
CLIENTS = {
    "epoll-et": lib.EC_CLIENT_EPOLL_ET,   # edge-triggered epoll per worker thread, 256 KiB reads until EAGAIN
    "epoll-lt": lib.EC_CLIENT_EPOLL_LT,   # level-triggered epoll, one 64 KiB read per report, EPOLLOUT on demand
    "threads": lib.EC_CLIENT_THREADS,     # blocking sockets, a thread per connection (stream: two)
}
DEFAULT_CLIENT = "epoll-et"
MAX_THREADS_CONNECTIONS = lib.EC_LOAD_MAX_THREADS_CONNECTIONS

#: The load generator's limits and defaults are the C core's (echo_core.h: EC_LOAD_*).
MAX_CONNECTIONS = lib.EC_LOAD_MAX_CONNECTIONS
MAX_THREADS = lib.EC_LOAD_MAX_THREADS
MAX_SECONDS = float(lib.EC_LOAD_MAX_SECONDS)
MAX_RATE = float(lib.EC_LOAD_MAX_RATE)
MAX_SERVER_PIDS = lib.EC_LOAD_MAX_SERVER_PIDS
CONNECT_TIMEOUT_S = float(lib.EC_LOAD_DEFAULT_CONNECT_TIMEOUT_S)
MAX_U32 = (1 << 32) - 1
FD_HEADROOM = 32  # descriptors left for Python, pipes, epoll instances
MAX_SEED = (1 << 64) - 1

#: Server counters whose change over the measured window goes into the result (as server_<name>).
SERVER_COUNTERS = ("loop_iterations", "wait_calls", "recv_calls", "send_calls", "accept_calls",
                   "short_sends", "enobufs", "conn_errors", "bytes_in", "bytes_out", "completions", "recv_ok")

LATENCY_KEYS = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "min_us")


# ------------------------------------------------------------- validation


def check_host(host, allow_remote=False):
    """Return host as a canonical address literal, or raise ValueError.

    Load goes to loopback (127.0.0.0/8, ::1), to addresses inside network namespaces echo_core itself
    created (echo_core.lab.netns, in 198.18.0.0/15) and, only with allow_remote (``--allow-remote``), to
    another unicast address: a lab network the user owns.
    """
    try:
        addr = ipaddress.ip_address(str(host))
    except ValueError:
        raise ValueError(f"host must be a numeric IP address (e.g. 127.0.0.1 or ::1), got {host!r}") from None
    if getattr(addr, "scope_id", None):
        raise ValueError(f"host must not carry a scope id, got {host!r}")
    if addr.is_loopback or netns.is_lab_address(addr):
        return str(addr)
    if addr.is_multicast or addr.is_unspecified or str(addr) == "255.255.255.255":
        raise ValueError(f"host {host!r} is not a unicast address")
    if not allow_remote:
        raise ValueError(f"host {host!r} is not loopback nor inside a network namespace echo_core created: "
                         "load only goes elsewhere with --allow-remote (allow_remote=True), for a lab "
                         "network you own")
    return str(addr)


def parse_pids(pids):
    """None, an int, "123", "123,456" or an iterable of ints -> list of live pids or None."""
    out = []
    if pids is None or pids == "":
        listed = []
    elif isinstance(pids, int) and not isinstance(pids, bool):
        listed = [pids]
    elif isinstance(pids, str):
        try:
            listed = [int(part.strip()) for part in pids.split(",")]
        except ValueError:
            raise ValueError(f'server pid list must look like "1234" or "1234,1235", got {pids!r}') from None
    else:
        listed = list(pids)
    for pid in listed:
        pid = numbers.integer("server pid", pid, 1, (1 << 31) - 1)
        if not os.path.isdir(f"/proc/{pid}/task"):
            raise ValueError(f"server pid {pid} is not a running process")
        out.append(pid)
    if len(out) > MAX_SERVER_PIDS:
        raise ValueError(f"at most {MAX_SERVER_PIDS} server pids, got {len(out)}")
    return out or None


def _map_server_stats(path):
    """Map a server's counters file read-only; returns (the mmap, its slots), the caller closes it.

    A server with N threads keeps N consecutive struct ec_server_stats (one per loop) in the file:
    the load generator snapshots their totals."""
    size = ffi.sizeof("struct ec_server_stats")
    try:
        with open(path, "rb") as f:
            actual = os.fstat(f.fileno()).st_size
            slots = actual // size
            if actual < size or actual % size or slots > lib.EC_MAX_SERVER_THREADS:
                raise ValueError(f"server stats file {path!r} holds {actual} bytes, expected a multiple "
                                 f"of {size} (one per server thread, at most {lib.EC_MAX_SERVER_THREADS})")
            return mmap.mmap(f.fileno(), actual, prot=mmap.PROT_READ), slots
    except OSError as e:
        raise ValueError(f"cannot map server stats file {path!r}: {e.strerror or e}") from None


def _open_window_ctl(path):
    """Open a window-control FIFO for writing; it must already have a reader (the profiler)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"window control FIFO {path}: {e.strerror} (it needs a reader, e.g. perf --control)") from None


def _check_fd_limit(connections):
    # The C side raises the soft limit to the hard one; beyond that, connects would fail one by one.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and connections > hard - FD_HEADROOM:
        raise ValueError(
            f"connections={connections} does not fit the open-file limit ({hard}, minus {FD_HEADROOM} "
            "for everything else); raise it with 'ulimit -Hn'"
        )


# ---------------------------------------------------------------- running


def check_load_args(host, port, mode, payload, connections, threads, duration, warmup,
                    connect_timeout=CONNECT_TIMEOUT_S, window=0, rate=None, cpus=None, warmup_max=None,
                    arrivals="poisson", seed=1, server_pids=None, allow_remote=False, start_at=None,
                    client=DEFAULT_CLIENT):
    """Validate and normalise run_load's arguments; raises ValueError with a clear message.

    Returns a dict of the normalised values (keyword names of run_load).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    host = check_host(host, allow_remote)
    if port is None:
        raise ValueError("port is required")
    port = numbers.integer("port", port, 1, 65535)
    payload = numbers.integer("payload", payload, 1, MAX_U32)
    connections = numbers.integer("connections", connections, 1, MAX_CONNECTIONS)
    threads = numbers.integer("threads", threads, 1, MAX_THREADS)
    duration = numbers.seconds("duration", duration, allow_zero=False, most=MAX_SECONDS)
    warmup = numbers.seconds("warmup", warmup, allow_zero=True, most=MAX_SECONDS)
    connect_timeout = numbers.seconds("connect_timeout", connect_timeout, allow_zero=False, most=MAX_SECONDS)
    window = numbers.integer("window", window or 0, 0, MAX_U32)
    if mode == "rate":
        if rate is None:
            raise ValueError('mode "rate" needs rate (requests per second)')
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"rate must be a number, got {rate!r}") from None
        if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    else:
        rate = None
    if warmup_max is None:
        warmup_max = warmup
    else:
        warmup_max = numbers.seconds("warmup_max", warmup_max, allow_zero=True, most=MAX_SECONDS)
        if warmup_max < warmup:
            raise ValueError(f"warmup_max must be >= warmup ({warmup}), got {warmup_max}")
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    seed = numbers.integer("seed", seed, 0, MAX_SEED)
    check_client(client, mode, connections)
    cpu_list = cpus_.available_cpus(cpus)
    pids = parse_pids(server_pids)
    _check_fd_limit(connections)
    if start_at is not None:
        start_at = _start_at(start_at, mode, warmup, warmup_max)

    return dict(host=host, port=port, mode=mode, payload=payload, connections=connections,
                threads=threads, duration=duration, warmup=warmup, connect_timeout=connect_timeout,
                window=window, rate=rate, cpus=cpu_list, warmup_max=warmup_max, arrivals=arrivals,
                seed=seed, server_pids=pids, start_at=start_at, client=client)


def check_client(client, mode, connections):
    """Raise ValueError unless the client design can run this mode with this many connections."""
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {client!r}")
    if client == "threads" and mode == "rate":
        raise ValueError('client "threads" (blocking, a thread per connection) cannot keep an open-loop '
                         'schedule: use it with mode stream or rr')
    if client == "threads" and connections > MAX_THREADS_CONNECTIONS:
        raise ValueError(f'client "threads" runs a thread per connection: at most {MAX_THREADS_CONNECTIONS} '
                         f"connections, got {connections}")


#: How far ahead a start barrier may lie: the wait before it does not watch for ^C.
MAX_START_AHEAD_S = 300.0


def _start_at(value, mode, warmup, warmup_max):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"start_at must be a wall-clock time in seconds since the epoch, got {value!r}") from None
    ahead = value - time.time()
    if not math.isfinite(value) or value <= 0 or ahead > MAX_START_AHEAD_S:
        raise ValueError(f"start_at must lie within {MAX_START_AHEAD_S:.0f} s from now, got {ahead:+.1f} s")
    if mode != "rate" and warmup_max > warmup:
        raise ValueError("start_at needs a fixed warm-up (no warmup_max): several hosts share one window "
                         "only if it is fixed in advance")
    return value


def run_load(
    host="127.0.0.1",
    port=None,
    mode="rr",
    payload=512,
    connections=1,
    duration=1.0,
    warmup=0.0,
    rate=None,
    threads=1,
    cpus=None,
    window=0,
    connect_timeout=CONNECT_TIMEOUT_S,
    warmup_max=None,
    arrivals="poisson",
    seed=1,
    server_pids=None,
    server_stats_path=None,
    window_ctl_path=None,
    counters="all",
    allow_remote=False,
    start_at=None,
    client=DEFAULT_CLIENT,
):
    """Run one load against an echo server on host:port and return a flat dict.

    mode: "stream" (write continuously, at most `window` unechoed bytes per
    connection), "rr" (closed loop: one request in flight per connection) or
    "rate" (open loop: `rate` requests/s in total, pipelined, latency from the
    scheduled send time; `arrivals` "poisson" (seeded by `seed`) or
    "uniform").  Results cover only the measured window after all
    connections are up.  client is the load generator's design (CLIENTS): "epoll-et" (default),
    "epoll-lt" or "threads"; threads is ignored by "threads", which runs one per connection.

    warmup is the warm-up; with warmup_max > warmup (stream, rr) the window
    opens as soon as the load is steady, at warmup_max at the latest.
    server_pids (pids or "pid,pid") and server_stats_path (the server's
    counters file) make the load generator snapshot the server's CPU time
    and counters exactly at the window's edges (server_* keys).
    counters ("all", "none", a list or a comma list of echo_core.load.counters.NAMES): with
    server_pids, the kernel counters (tracepoints, PMU) counted on the server's threads over the
    window (server_kc_* keys; NaN where not countable, counters_note says why).
    allow_remote lets the load go to a non-loopback address (check_host).  start_at (wall-clock
    seconds since the epoch): once every connection is up, wait for that instant before starting,
    so that load generators on several hosts share the warm-up and window (start_late_s says how
    late this one was).
    window_ctl_path names a FIFO that already has a reader (perf's
    ``--control fifo:PATH``): it gets "enable\n" when the window opens and
    "disable\n" when it closes, so a profiler samples the window only.

    Raises ValueError for bad arguments, ConnectionError if no connection
    could be established, OSError for other set-up failures.  ^C (on the
    main thread) ends the run early and raises KeyboardInterrupt.
    """
    a = check_load_args(host, port, mode, payload, connections, threads, duration, warmup,
                        connect_timeout, window, rate, cpus, warmup_max, arrivals, seed, server_pids,
                        allow_remote, start_at, client)
    names = counters if isinstance(counters, (list, tuple)) else kcounters.parse_names(counters)
    if any(n not in kcounters.NAMES for n in names):
        raise ValueError(f"unknown counter(s) in {names!r}: choose from {', '.join(kcounters.NAMES)}")
    # Resolved before the stats file is mapped: it may mount tracefs, which must not leak a mapping.
    events, not_counted = kcounters.resolve(names) if a["server_pids"] else ([], {})
    shared, nslots = _map_server_stats(server_stats_path) if server_stats_path else (None, 0)
    window_ctl = _open_window_ctl(window_ctl_path) if window_ctl_path else -1

    cfg = ffi.new("struct ec_load_config *")
    res = ffi.new("struct ec_load_result *")
    # These cdata own the memory cfg points into: keep them referenced until the call returns.
    host_c = ffi.new("char[]", a["host"].encode("ascii"))
    cpus_c = ffi.new("int[]", a["cpus"]) if a["cpus"] else ffi.NULL
    pids_c = ffi.new("int[]", a["server_pids"]) if a["server_pids"] else ffi.NULL
    stats_c = ffi.from_buffer("struct ec_server_stats *", shared) if shared is not None else ffi.NULL
    ctr_c = ffi.new("struct ec_counter[]", [{"type": t, "config": c} for _, t, c in events]) if events else ffi.NULL
    cfg.host = host_c
    cfg.port = a["port"]
    cfg.mode = MODES[a["mode"]]
    cfg.payload = a["payload"]
    cfg.connections = a["connections"]
    cfg.threads = a["threads"]
    cfg.cpus = cpus_c
    cfg.ncpus = len(a["cpus"]) if a["cpus"] else 0
    cfg.warmup_s = a["warmup"]
    cfg.warmup_max_s = a["warmup_max"]
    cfg.duration_s = a["duration"]
    cfg.rate = a["rate"] or 0.0
    cfg.arrivals = ARRIVALS[a["arrivals"]]
    cfg.seed = a["seed"]
    cfg.window = a["window"]
    cfg.connect_timeout_s = a["connect_timeout"]
    cfg.server_pids = pids_c
    cfg.nserver_pids = len(a["server_pids"]) if a["server_pids"] else 0
    cfg.server_stats = stats_c
    cfg.nserver_stats = nslots
    cfg.window_ctl_fd = window_ctl
    cfg.counters = ctr_c
    cfg.ncounters = len(events)
    cfg.start_at_s = a["start_at"] or 0.0
    cfg.client = CLIENTS[a["client"]]

    try:
        # ^C ends the run early; KeyboardInterrupt is raised once the C side has cleaned up.
        with StopOnSignal() as stop:
            cfg.stop_fd = stop.fd
            rc = lib.ec_load_run(cfg, res)
    finally:
        del host_c, cpus_c, pids_c, stats_c, ctr_c
        if shared is not None:
            shared.close()
        if window_ctl >= 0:
            os.close(window_ctl)

    check(rc, "ec_load_run")
    if res.connected == 0:
        raise ConnectionError(
            f"could not connect to {a['host']}:{a['port']}: all {res.connect_errors} connection attempts failed"
        )
    d = _result_dict(res, a, bool(server_pids) or bool(server_stats_path),
                     shared is not None, bool(stop.signals))
    if a["server_pids"]:
        d.update(_counter_dict(res, names, events, not_counted))
    return d


def _counter_dict(res, names, events, not_counted):
    """server_kc_<name> for every counter (NaN where not counted) and counters_note saying why."""
    nan = float("nan")
    d = {kcounters.raw_key(n): nan for n in kcounters.NAMES}
    reasons = {n: not_counted[n] for n in names if n in not_counted}
    for i, (name, _, _) in enumerate(events):
        err = -res.counter_status[i]
        if err:
            reasons[name] = kcounters.status_reason(name, err)
        else:
            d[kcounters.raw_key(name)] = res.counter_delta[i]
    d["counters_note"] = kcounters.note(reasons)
    return d


def _result_dict(res, a, with_server, with_stats, interrupted):
    nan = float("nan")
    mode, payload, rate, cpus = a["mode"], a["payload"], a["rate"], a["cpus"]
    duration = res.duration_s
    cpu = res.cpu_user_s + res.cpu_sys_s
    stream = mode == "stream"
    # Streaming has no request boundaries to wait for: its message rate is the byte rate in
    # payload units.  Counting only messages completed inside the window would quantize badly
    # when each connection completes just a few (100 kB payloads over 10,000 connections).
    msgs = res.bytes / payload if stream else res.msgs
    d = {
        "mode": mode,
        "client": a["client"],
        "host": a["host"],
        "port": a["port"],
        "payload": payload,
        "connections": a["connections"],
        "threads": a["threads"],
        "cpus": ",".join(map(str, cpus)) if cpus else "",
        "window": a["window"],
        "duration_s": duration,
        "warmup_s": res.warmup_s,
        "warmup_min_s": a["warmup"],
        "warmup_max_s": a["warmup_max"] if mode != "rate" else a["warmup"],
        "warmup_steady": None if res.warmup_steady < 0 else bool(res.warmup_steady),
        "rate": rate if rate is not None else nan,
        "arrivals": a["arrivals"] if mode == "rate" else "",
        "seed": a["seed"],
        "msgs_per_s": msgs / duration if duration > 0 else nan,
        "bytes_per_s": res.bytes / duration if duration > 0 else nan,
        "messages": res.msgs,
        "bytes": res.bytes,
        "p50_us": res.p50_us,
        "p90_us": res.p90_us,
        "p99_us": res.p99_us,
        "p999_us": res.p999_us,
        "max_us": res.max_us,
        "mean_us": res.lat_mean_us,
        "min_us": res.lat_min_us,
        "latency_samples": res.latency_count,
        "unanswered": res.unanswered,
        "never_answered": res.never_answered,
        "send_lag_p50_us": res.send_lag_p50_us if mode == "rate" else nan,
        "send_lag_p99_us": res.send_lag_p99_us if mode == "rate" else nan,
        "send_lag_max_us": res.send_lag_max_us if mode == "rate" else nan,
        "latency_hist": "" if stream else histogram.encode(res.latency_hist),
        "fairness": res.fairness,
        "conn_bytes_min": res.conn_bytes_min,
        "conn_bytes_max": res.conn_bytes_max,
        "mismatches": res.mismatches,
        "mismatched_conns": res.mismatched_conns,
        "connected": res.connected,
        "connect_errors": res.connect_errors,
        "io_errors": res.io_errors,
        "errors": res.connect_errors + res.io_errors,
        "client_cpu_user_s": res.cpu_user_s,
        "client_cpu_sys_s": res.cpu_sys_s,
        "client_cpu_s": cpu,
        "cpu_us_per_msg": cpu / msgs * 1e6 if msgs else nan,
        "send_calls": res.send_calls,
        "recv_calls": res.recv_calls,
        "interrupted": interrupted,
        "start_late_s": res.start_late_s,
        # Echoed bytes per interval over the window: the stationarity check (echo_core.results.validity).
        "window_series": " ".join(str(res.series[i]) for i in range(min(res.series_n, lib.EC_SERIES_MAX))),
        "window_series_step_s": res.series_step_ns / 1e9,
    }
    if stream:
        for key in LATENCY_KEYS:
            d[key] = nan
    if with_server:
        snap = bool(res.server_snap)
        d["server_cpu_s"] = res.server_cpu_ns / 1e9 if snap else nan
        d["server_cpu_user_s"] = res.server_cpu_user_s if snap else nan
        d["server_cpu_sys_s"] = res.server_cpu_sys_s if snap else nan
        stats = with_stats and bool(res.server_stats_snap)
        for name in SERVER_COUNTERS:
            d[f"server_{name}"] = (getattr(res.server_end, name) - getattr(res.server_start, name)
                                   if stats else nan)
        # A level, not a change: the io_uring pool's buffers at the window's end (grow: how far it grew).
        d["server_pool_buffers"] = res.server_end.pool_buffers if stats else nan
        # Bucket i counts recvs that returned 2**i .. 2**(i+1) - 1 bytes (the last: 2**i and up), in the
        # one sparse histogram text (echo_core.results.histogram) with lib.EC_RECV_HIST_BUCKETS buckets.
        d["server_recv_size_hist"] = (histogram.encode([e - s for s, e in zip(res.server_start.recv_hist,
                                                                              res.server_end.recv_hist)])
                                      if stats else "")
        proc = snap and bool(res.server_proc_snap)
        d["server_vol_ctx_switches"] = res.server_vol_ctxsw if proc else nan
        d["server_invol_ctx_switches"] = res.server_invol_ctxsw if proc else nan
        d["server_minor_faults"] = res.server_minflt if snap else nan
    return d


# -------------------------------------------------------------------- CLI


def add_load_arguments(parser):
    """Add the load generator's options to an argparse parser (or sub-parser)."""
    # Numbers are parsed in load_command so bad values give one clear line, not a usage dump.
    parser.add_argument("--host", default="127.0.0.1",
                        help="server address: loopback (default 127.0.0.1) or inside an echo_core network namespace")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback server address: only for a lab network you own")
    parser.add_argument("--start-at", default=None, metavar="T",
                        help="wall-clock start instant (s since the epoch) shared by load generators on several hosts")
    parser.add_argument("--port", required=True, help="server port")
    parser.add_argument("--mode", choices=tuple(MODES), default="rr",
                        help="stream: continuous writes; rr: closed loop; rate: open loop at --rate (default rr)")
    parser.add_argument("--payload", default="512", metavar="BYTES", help="bytes per message, e.g. 512 or 16K (default 512)")
    parser.add_argument("--connections", default="1", metavar="N", help="connections (default 1)")
    parser.add_argument("--duration", default="1.0", metavar="S", help="measured seconds (default 1)")
    parser.add_argument("--warmup", default="0", metavar="S",
                        help="seconds run before measuring; with --warmup-max the minimum (default 0)")
    parser.add_argument("--warmup-max", default=None, metavar="S",
                        help="stream, rr: open the window once the load is steady, after at most S seconds "
                             "(default: --warmup, a fixed warm-up)")
    parser.add_argument("--rate", default=None, metavar="R", help="rate mode: total requests per second")
    parser.add_argument("--arrivals", default="poisson", metavar="{uniform,poisson}",
                        help="rate mode: request schedule (default poisson)")
    parser.add_argument("--seed", default="1", metavar="N", help="rate mode: seed of the poisson schedule (default 1)")
    parser.add_argument("--threads", default="1", metavar="T", help="client worker threads (default 1)")
    parser.add_argument("--client", choices=tuple(CLIENTS), default=DEFAULT_CLIENT,
                        help="client design: epoll-et (edge-triggered, default), epoll-lt (level-triggered, "
                             "64 KiB reads), threads (blocking, a thread per connection)")
    parser.add_argument("--cpu", default=None, metavar="LIST", help='pin worker i to the i-th CPU of LIST, e.g. "0" or "0,1"')
    parser.add_argument("--window", default="0", metavar="BYTES",
                        help="stream: max unechoed bytes per connection (default max(4*payload, 256K))")
    parser.add_argument("--connect-timeout", default=str(lib.EC_LOAD_DEFAULT_CONNECT_TIMEOUT_S), metavar="S",
                        help=f"connect phase limit (default {lib.EC_LOAD_DEFAULT_CONNECT_TIMEOUT_S})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--server-pid", default=None, metavar="LIST",
                        help="server pid(s), e.g. 1234 or 1234,1235: record their CPU time over the window")
    parser.add_argument("--server-stats", default=None, metavar="PATH",
                        help="the server's counters file: record their change over the window")
    parser.add_argument("--counters", default="all", metavar="LIST",
                        help="with --server-pid: kernel counters to count on the server over the window: "
                             "all (default), none, or a comma list of " + ",".join(kcounters.NAMES)
                             + f" (NaN where not countable; {kcounters.ENV_SWITCH}=0 turns them off)")
    parser.add_argument("--window-ctl", default=None, metavar="FIFO",
                        help='write "enable"/"disable" lines to FIFO at the window\'s edges (perf --control)')
    return parser


def _kwargs_from_args(args):
    return dict(
        host=args.host,
        port=numbers.option_number("port", args.port, int),
        mode=args.mode,
        payload=numbers.byte_count(args.payload),
        connections=numbers.option_number("connections", args.connections, int),
        duration=numbers.option_number("duration", args.duration, float),
        warmup=numbers.option_number("warmup", args.warmup, float),
        rate=None if args.rate is None else numbers.option_number("rate", args.rate, float),
        threads=numbers.option_number("threads", args.threads, int),
        cpus=args.cpu,
        window=numbers.byte_count(args.window),
        connect_timeout=numbers.option_number("connect-timeout", getattr(args, "connect_timeout", CONNECT_TIMEOUT_S), float),
        warmup_max=None if args.warmup_max is None else numbers.option_number("warmup-max", args.warmup_max, float),
        arrivals=args.arrivals,
        seed=numbers.option_number("seed", args.seed, int),
        server_pids=args.server_pid,
        server_stats_path=args.server_stats,
        window_ctl_path=getattr(args, "window_ctl", None),
        counters=kcounters.parse_names(getattr(args, "counters", "all")),
        allow_remote=getattr(args, "allow_remote", False),
        start_at=None if getattr(args, "start_at", None) is None else numbers.option_number("start-at", args.start_at, float),
        client=getattr(args, "client", DEFAULT_CLIENT),
    )


def _warmup_text(r):
    if r["warmup_steady"] is None:
        return f"{r['warmup_s']:g} s warm-up"
    how = "steady" if r["warmup_steady"] else "not steady by the cap"
    return f"{r['warmup_s']:g} s warm-up ({how}; {r['warmup_min_s']:g}..{r['warmup_max_s']:g} s)"


def _counters_text(r):
    """One line of the server's kernel counters over the window (raw counts), or why there are none."""
    shown = [("ctx switches", r.get("server_vol_ctx_switches", math.nan) + r.get("server_invol_ctx_switches", math.nan))]
    shown += [(label, r.get(kcounters.raw_key(name), math.nan)) for label, name in
              (("poll arms", "poll_arm"), ("submits", "submit_req"), ("sched switches", "sched_switch"),
               ("io_uring_enter", "sys_io_uring_enter"), ("epoll_wait", "sys_epoll_wait"))]
    text = ", ".join(f"{label} {v:,.0f}" for label, v in shown if isinstance(v, (int, float)) and math.isfinite(v))
    note = f" ({r['counters_note']})" if r["counters_note"] else ""
    return f"  kernel      {text or 'no counts'}{note}"


def format_summary(r):
    lines = [
        f"{r['mode']} to {r['host']}:{r['port']}: payload {r['payload']} B, {r['connected']}/{r['connections']} "
        f"connections, {r['client']} client, {r['threads']} thread(s), {r['duration_s']:.3f} s measured after {_warmup_text(r)}",
        f"  throughput  {r['msgs_per_s']:,.0f} msg/s  {r['bytes_per_s'] / 1e6:,.1f} MB/s  "
        f"({r['messages']:,} messages, {r['bytes']:,} bytes)",
    ]
    if r["mode"] != "stream":
        lines.append(
            f"  latency us  p50 {r['p50_us']:.1f}  p90 {r['p90_us']:.1f}  p99 {r['p99_us']:.1f}  "
            f"p99.9 {r['p999_us']:.1f}  max {r['max_us']:.1f}  mean {r['mean_us']:.1f}  "
            f"({r['latency_samples']:,} samples)"
        )
        if r["unanswered"]:
            counted = ("in the latency percentiles as waiting until that end" if r["mode"] == "rate"
                       else "closed loop: one per connection is normal; not in the percentiles")
            lines.append(f"  unanswered  {r['unanswered']:,} requests still open at the window's end ({counted})")
    if r["mode"] == "rate":
        lines.append(
            f"  schedule    {r['rate']:,.0f} req/s offered, {r['arrivals']} arrivals (seed {r['seed']}); "
            f"send lag us p50 {r['send_lag_p50_us']:.1f}  p99 {r['send_lag_p99_us']:.1f}  "
            f"max {r['send_lag_max_us']:.1f} (the client's own lateness)"
        )
    if "server_cpu_s" in r:
        lines.append(
            f"  server      cpu {r['server_cpu_s']:.3f} s ({r['server_cpu_user_s']:.2f} user, "
            f"{r['server_cpu_sys_s']:.2f} sys), {r['server_bytes_out']:,.0f} bytes out over the window"
        )
    if "counters_note" in r:
        lines.append(_counters_text(r))
    lines += [
        f"  fairness    {r['fairness']:.4f}  (per-connection bytes {r['conn_bytes_min']:,} .. {r['conn_bytes_max']:,})",
        f"  client cpu  {r['client_cpu_s']:.3f} s ({r['client_cpu_user_s']:.3f} user, {r['client_cpu_sys_s']:.3f} sys), "
        f"{r['cpu_us_per_msg']:.2f} us/msg, {r['send_calls']:,} sends, {r['recv_calls']:,} recvs",
        f"  errors      {r['mismatches']:,} mismatched bytes on {r['mismatched_conns']} connection(s), "
        f"{r['connect_errors']} connect errors, {r['io_errors']} io errors, "
        f"{r['never_answered']:,} requests never answered",
    ]
    if r["interrupted"]:
        lines.append("  (interrupted: the window was cut short)")
    return "\n".join(lines)


def load_command(args):
    """Run `echo_core load` from parsed arguments; returns the exit status.

    0: clean run; 1: mismatches, connection errors, requests never answered or a failed run;
    2: bad input; 130: interrupted by ^C.
    """
    try:
        result = run_load(**_kwargs_from_args(args))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ConnectionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(encode_record(result), flush=True)
    else:
        print(format_summary(result), flush=True)
    return exit_status(result)
