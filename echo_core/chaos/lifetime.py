"""The long-lived-server regime: ONE server through many phases in sequence, every byte verified.

Every benchmark run and most tests start a fresh server; real servers live for months and meet every
kind of client before the next one.  A bug that leaves state behind (a buffer given back twice, a ring
position named wrong) shows up only in a later phase: issue 15's bundle corruption needed streaming
connections to close with echoes queued, and only the request-response clients after them got wrong
bytes.  So each phase here runs against the server the previous phases left behind:

  stream      bursts of 16 connections that stream 16 KiB writes and read echoes back, each burst ended
              by closing all 16 with echoes still queued: plainly (an RST, since echoes are unread),
              with SO_LINGER 0 (an RST before anything), or after shutdown(SHUT_WR) (a FIN first)
  rr_large    request-response with 100,000 B messages on a few connections
  rr_small    request-response with 512 B messages on 16 connections
  many        many connections at once (2,000 in a long run), one message each, closed half by FIN
              and half by RST
  halfclose   send up to 256 KiB, shutdown(SHUT_WR), read to EOF: all bytes back, then EOF
  nonreaders  connections that send until blocked and never read stay open while rr_small and
              rr_large clients must still be served; then they close (RST)

A round runs every other phase once, in an order drawn from the seed, each right after a stream phase,
and ends with rr_large (the phase that saw the corruption); run_lifetime repeats rounds until `seconds` have passed (at least one round).
At the end the server must be alive, its fd count and conns_active back to where they were before the
first phase, its RSS within the chaos client's bound throughout and, after several rounds, no more than
RSS_GROWTH_KIB above what it was after the first round (which touched its pool and tables).

API: run_lifetime(impl, seconds, seed, ...) -> result dict (result["ok"], result["violations"]);
CLI: python -m echo_core chaos --lifetime --impl SPEC --seconds N --seed S.
"""

import json
import os
import random
import selectors
import socket
import sys
import time

from echo_core.chaos.storm import (parse_options, raise_fd_limit, rss_kib, rss_margin_kib, settle_server, settled_fds)
from echo_core.host.proc import pid_alive
from echo_core.servers.factory import make_server
from echo_core.servers.serve import check_impl
from echo_core.host.cpus import split_cpus

#: The phases of a round; each is a function (ctx, rng) below.
PHASES = ("stream", "rr_large", "rr_small", "many", "halfclose", "nonreaders")
CLOSE_KINDS = ("close", "rst", "fin")
IO_TIMEOUT_S = 20.0
STREAM_BURST_S = 0.15
STREAM_CONNS = 16
SETTLE_S = 5.0
RSS_GROWTH_KIB = 64 << 10   # what RSS may grow after the first round (allocator slack, not leaks)
#: A short run (the test suite's) scales the counts down: (long, short).
SCALE = {"stream_bursts": (10, 2), "rr_large": (200, 24), "rr_small": (400, 40), "many": (2000, 200),
         "halfclose": (32, 4), "nonreaders": (64, 16)}


class PhaseError(Exception):
    """A violation in a phase: wrong bytes, a stall, an unexpected EOF or reset."""


class _Ctx:
    def __init__(self, host, port, short):
        self.host, self.port, self.short = host, port, short
        self.counts = {"phases": 0, "rounds": 0, "connections": 0, "bytes_verified": 0}

    def n(self, name):
        return SCALE[name][1 if self.short else 0]

    def connect(self, nodelay=True, blocking=True):
        s = socket.create_connection((self.host, self.port), timeout=IO_TIMEOUT_S)
        if nodelay:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(blocking)
        if blocking:
            s.settimeout(IO_TIMEOUT_S)
        self.counts["connections"] += 1
        return s


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise PhaseError(f"EOF after {len(buf)} of {n} echoed bytes")
        buf += chunk
    return bytes(buf)


def _first_diff(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _rr(ctx, rng, size, conns, count, name):
    socks = [ctx.connect() for _ in range(conns)]
    try:
        for i in range(count):
            msg = rng.randbytes(size)
            s = socks[i % conns]
            s.sendall(msg)
            got = _recv_exact(s, size)
            if got != msg:
                raise PhaseError(f"{name}: message {i} of {size} B on connection {i % conns} came back "
                                 f"wrong from byte {_first_diff(got, msg)}")
            ctx.counts["bytes_verified"] += size
    finally:
        for s in socks:
            s.close()


def phase_rr_large(ctx, rng):
    _rr(ctx, rng, 100000, 2, ctx.n("rr_large"), "rr_large")


def phase_rr_small(ctx, rng):
    _rr(ctx, rng, 512, 16, ctx.n("rr_small"), "rr_small")


def phase_stream(ctx, rng):
    """Bursts of streaming on STREAM_CONNS connections, what comes back verified, each burst ended by closing them all
    with echoes still queued (each connection's way of closing drawn from CLOSE_KINDS)."""
    for _ in range(ctx.n("stream_bursts")):
        _stream_burst(ctx, rng)


def _stream_burst(ctx, rng):
    block = rng.randbytes(1 << 20)
    view = memoryview(block + block)
    chunk = 16384
    sel = selectors.DefaultSelector()
    conns = []
    for _ in range(STREAM_CONNS):
        s = ctx.connect(nodelay=False, blocking=False)
        st = {"sock": s, "sent": 0, "echoed": 0, "phase": rng.randrange(len(block)), "how": rng.choice(CLOSE_KINDS)}
        conns.append(st)
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, st)
    end = time.monotonic() + STREAM_BURST_S
    try:
        while time.monotonic() < end:
            for key, ev in sel.select(0.05):
                st = key.data
                if ev & selectors.EVENT_WRITE:
                    off = (st["phase"] + st["sent"]) % len(block)
                    try:
                        st["sent"] += st["sock"].send(view[off:off + chunk])
                    except BlockingIOError:
                        pass
                if ev & selectors.EVENT_READ:
                    try:
                        got = st["sock"].recv(1 << 20)
                    except BlockingIOError:
                        continue
                    if not got:
                        raise PhaseError(f"stream: EOF from the server after {st['echoed']} echoed bytes")
                    off = (st["phase"] + st["echoed"]) % len(block)
                    if bytes(view[off:off + len(got)]) != got or st["echoed"] + len(got) > st["sent"]:
                        raise PhaseError(f"stream: echoed bytes wrong at stream offset {st['echoed']}")
                    st["echoed"] += len(got)
                    ctx.counts["bytes_verified"] += len(got)
    finally:
        sel.close()
        for st in conns:
            s = st["sock"]
            if st["how"] == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif st["how"] == "fin":
                try:
                    s.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
        if any(st["how"] == "fin" for st in conns):
            time.sleep(0.02)  # the server sees the FIN with echoes queued, and keeps sending them
        for st in conns:
            st["sock"].close()
            key = "stream_closes_" + st["how"]
            ctx.counts[key] = ctx.counts.get(key, 0) + 1


def phase_many(ctx, rng):
    n = ctx.n("many")
    socks, msgs = [], []
    try:
        for _ in range(n):
            socks.append(ctx.connect())
            msgs.append(rng.randbytes(rng.randint(1, 2048)))
        for s, m in zip(socks, msgs):
            s.sendall(m)
        for i, (s, m) in enumerate(zip(socks, msgs)):
            got = _recv_exact(s, len(m))
            if got != m:
                raise PhaseError(f"many: connection {i} of {n} got wrong bytes from {_first_diff(got, m)}")
            ctx.counts["bytes_verified"] += len(m)
    finally:
        for i, s in enumerate(socks):
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()


def phase_halfclose(ctx, rng):
    for i in range(ctx.n("halfclose")):
        msg = rng.randbytes(rng.randint(1, 256 << 10))
        s = ctx.connect()
        try:
            # Send while reading: a payload larger than the socket buffers would otherwise deadlock.
            got = bytearray()
            view = memoryview(msg)
            s.setblocking(False)
            sent = 0
            deadline = time.monotonic() + IO_TIMEOUT_S
            while sent < len(msg):
                try:
                    sent += s.send(view[sent:sent + 65536])
                except BlockingIOError:
                    pass
                try:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        raise PhaseError(f"halfclose: EOF before the half-close ({len(got)} bytes back)")
                    got += chunk
                except BlockingIOError:
                    time.sleep(0.0005)
                if time.monotonic() > deadline:
                    raise PhaseError("halfclose: stalled while sending")
            s.shutdown(socket.SHUT_WR)
            s.setblocking(True)
            s.settimeout(IO_TIMEOUT_S)
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            if bytes(got) != msg:
                raise PhaseError(f"halfclose: connection {i}: {len(got)} of {len(msg)} bytes back before EOF, "
                                 f"first difference at {_first_diff(got, msg)}")
            ctx.counts["bytes_verified"] += len(msg)
        finally:
            s.close()


def phase_nonreaders(ctx, rng):
    """Non-readers stay open (their echoes pinning what the server holds for them) while others are served."""
    blockers = []
    try:
        for _ in range(ctx.n("nonreaders")):
            s = ctx.connect(blocking=False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            data = rng.randbytes(1 << 16)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                try:
                    s.send(data)
                except BlockingIOError:
                    break
            blockers.append(s)
        _rr(ctx, rng, 512, 4, ctx.n("rr_small") // 4, "nonreaders/rr_small")
        _rr(ctx, rng, 100000, 1, ctx.n("rr_large") // 4, "nonreaders/rr_large")
    finally:
        for s in blockers:
            s.close()


PHASE_FNS = {"stream": phase_stream, "rr_large": phase_rr_large, "rr_small": phase_rr_small,
             "many": phase_many, "halfclose": phase_halfclose, "nonreaders": phase_nonreaders}


def round_order(rng):
    """One round: the other phases once each in a seeded order, each after a stream phase (whose closes
    leave the server with echoes queued on dead connections), and rr_large last."""
    rest = [p for p in PHASES if p not in ("stream", "rr_large")]
    rng.shuffle(rest)
    order = []
    for name in rest + ["rr_large"]:
        order += ["stream", name]
    return order


def run_lifetime(impl="uring", seconds=0.0, seed=1, host="127.0.0.1", port=None, pid=None, server_stats=None,
                 server_options=None, threads=1, cpu=None, short=False, settle_s=SETTLE_S,
                 rss_growth_kib=RSS_GROWTH_KIB):
    """Run rounds of phases against one server until `seconds` have passed (at least one round).

    Without port: starts its own server (make_server(impl, threads=threads, ...)), pinned as chaos pins
    it, and stops it after.  short=True: the test suite's small counts.  rss_growth_kib: how far RSS may
    grow after the first round (None: not checked, e.g. under ASan, whose quarantine keeps what is
    freed).  Returns a dict with "ok",
    "violations" (strings), the phases run, counts, and the server's fd/RSS/conns_active at both ends.
    """
    if seconds < 0 or seconds > 7 * 86400:
        raise ValueError(f"seconds must be in 0..604800, got {seconds!r}")
    raise_fd_limit(SCALE["many"][0] + 256)
    rng = random.Random(f"echo_core.lifetime:{seed}")
    srv = final = None
    server_cpu, client_cpu = split_cpus(cpu)
    if port is None:
        impl = check_impl(impl)
        kwargs = dict(server_options or {})
        if threads > 1:
            kwargs.update(threads=threads)
        else:
            kwargs.update(cpu=server_cpu)
        srv = make_server(impl, host=host, port=0, **kwargs).start()
        port, pid = srv.port, srv.pid
        server_stats = srv.stats if srv.stats() is not None else server_stats
    ctx = _Ctx(host, port, short)
    violations, done = [], []
    saved_affinity = os.sched_getaffinity(0)
    rss_bound = rss_warm = None
    try:
        if client_cpu is not None and srv is not None and threads == 1:
            os.sched_setaffinity(0, {client_cpu})
        fds_start = settled_fds(pid, None, 0.3) if pid is not None else None
        rss_start = rss_kib(pid) if pid is not None else None
        if rss_start:
            rss_bound = rss_start + rss_margin_kib(impl, server_options, SCALE["many"][0]) * max(1, threads)
        active_start = server_stats()["conns_active"] if server_stats else None
        end = time.monotonic() + seconds
        while not violations and (not ctx.counts["rounds"] or time.monotonic() < end):
            for name in round_order(rng):
                try:
                    PHASE_FNS[name](ctx, rng)
                except PhaseError as exc:
                    violations.append(f"round {ctx.counts['rounds']} phase {name}: {exc}")
                except OSError as exc:
                    violations.append(f"round {ctx.counts['rounds']} phase {name}: {type(exc).__name__}: {exc}")
                done.append(name)
                ctx.counts["phases"] += 1
                if violations:
                    break
                if pid is not None and not pid_alive(pid):
                    violations.append(f"server process {pid} is gone after phase {name}")
                    break
                rss = rss_kib(pid) if pid is not None else None
                if rss and rss_bound and rss > rss_bound:
                    violations.append(f"server RSS {rss} KiB above its bound {rss_bound} KiB after phase {name}")
                    break
            ctx.counts["rounds"] += 1
            if ctx.counts["rounds"] == 1 and pid is not None:
                rss_warm = rss_kib(pid)
        alive = pid_alive(pid) if pid is not None else None
        fds_end = active_end = None
        if alive:
            fds_end, active_end, problems = settle_server(pid, fds_start, server_stats, active_start, settle_s)
            violations += problems
        elif pid is not None:
            violations.append(f"server process {pid} is gone")
        rss_end = rss_kib(pid) if alive else None
        # How far the pool ran dry and grew over the server's whole life (io_uring; grow: its size).
        final = server_stats() if alive and server_stats else None
        # Back to baseline: the first round touched what the server keeps (its pool, its tables); later
        # rounds doing the same work must not grow it further.
        if rss_growth_kib is not None and rss_end and rss_warm and ctx.counts["rounds"] > 1 and \
                rss_end > rss_warm + rss_growth_kib:
            violations.append(f"server RSS grew from {rss_warm} KiB after the first round to {rss_end} KiB "
                              f"after round {ctx.counts['rounds']}")
    finally:
        os.sched_setaffinity(0, saved_affinity)
        if srv is not None:
            try:
                srv.stop()
            except RuntimeError as exc:
                violations.append(f"server stop: {exc}")
    return {"impl": impl, "seed": seed, "threads": threads, "seconds": seconds, "ok": not violations,
            "violations": violations, "phases_run": done, **ctx.counts, "fds_start": fds_start,
            "fds_end": fds_end, "rss_start_kib": rss_start, "rss_warm_kib": rss_warm, "rss_end_kib": rss_end,
            "rss_bound_kib": rss_bound,
            "conns_active_end": active_end,
            "server_enobufs": final.get("enobufs") if final else None,
            "server_pool_buffers": final.get("pool_buffers") if final else None}


def verdict(result):
    """One line: 'lifetime ok: ...' or 'lifetime FAILED: ...'."""
    r = result
    body = (f"{r['impl']} threads {r['threads']} seed {r['seed']}: {r['rounds']} round(s), {r['phases']} phases, "
            f"{r['connections']} connections, {r['bytes_verified'] / 2**20:.1f} MiB echoed+verified, "
            f"fds {r['fds_start']}->{r['fds_end']}")
    if r["ok"]:
        return f"lifetime ok: {body}"
    return f"lifetime FAILED: {body}; {len(r['violations'])} violation(s); first: {r['violations'][0]}"


def lifetime_command(args):
    """`python -m echo_core chaos --lifetime ...`: 0 ok, 1 violations, 2 bad input (one line each)."""
    try:
        seconds = float(args.seconds)
        seed = int(args.seed)
        threads = int(args.threads)
        if args.impl is None or args.port is not None:
            raise ValueError("--lifetime runs a server of its own: give --impl SPEC (no --port)")
        if seed < 0 or not 1 <= threads <= 64:
            raise ValueError(f"--seed must be >= 0 and --threads in 1..64, got {seed} and {threads}")
        options = parse_options(args.option)
        impl = check_impl(args.impl)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_lifetime(impl, seconds=seconds, seed=seed, threads=threads, server_options=options or None,
                              cpu=None if args.cpu is None else int(args.cpu))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:
        print(f"lifetime FAILED: {impl}: {exc}", flush=True)
        return 1
    print(json.dumps(result) if args.json else verdict(result), flush=True)
    return 0 if result["ok"] else 1
