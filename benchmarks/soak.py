"""Chaos soak: one long-lived server per implementation under the seeded chaos client, in chunks.

Each server runs for the whole soak (pinned to the last CPU, the client on another one); the chaos
client hits it in chunks of --chunk seconds with successive seeds (seed, seed+1, ...), so a slow
leak or a state that goes bad only after many connections shows up, and every chunk can be replayed
alone with `python -m echo_core chaos --impl IMPL --seconds CHUNK --seed SEED`.  After each chunk:
every script's bytes verified, server alive, fd count back to its value before the chunk,
conns_active back to 0, RSS below (RSS before the first chunk + echo_core.chaos.storm.rss_margin_kib).

    .venv/bin/python benchmarks/soak.py --minutes 10 --seed 1 --impl uring,epoll [--chunk 30]

Prints one line per chunk, then the counters per server; exit status 1 if anything was found.
"""

import argparse
import os
import sys
import time

from echo_core.chaos import storm as chaos
from echo_core.servers.options import IMPLS
from echo_core.servers.serve import Server


def soak_one(impl, minutes, seed, chunk, connections, server_cpu, client_cpu):
    """Run the soak for one implementation; returns (totals dict, violations list)."""
    totals = {k: 0 for k in ("chunks", "scripts", "connections", "bytes_sent", "bytes_echoed", "resets",
                             "half_closes", "flood_connections", "nonreaders", "idles")}
    violations = []
    end = time.monotonic() + minutes * 60
    saved = os.sched_getaffinity(0)
    with Server(impl, port=0, cpu=server_cpu) as srv:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        start_stats = srv.stats()
        rss0 = chaos.rss_kib(srv.pid)
        fds0 = chaos.fd_count(srv.pid)
        bound = rss0 + chaos.rss_margin_kib(impl, None, connections)
        rss_max = rss0
        k = 0
        while time.monotonic() < end - 1.0:
            secs = round(min(chunk, end - time.monotonic()), 1)
            r = chaos.run_chaos(impl, seconds=secs, seed=seed + k, connections=connections, port=srv.port,
                                pid=srv.pid, server_stats=srv.stats, rss_bound_kib=bound)
            rss_max = max(rss_max, r["rss_max_kib"] or 0)
            for name in totals:
                totals[name] += 1 if name == "chunks" else r[name]
            print(f"  {impl} chunk {k} seed {seed + k}: {chaos.verdict(r)}", flush=True)
            violations += [f"seed {seed + k}: {v}" for v in r["violations"]]
            if not r["server_alive"]:
                break
            k += 1
        stats = srv.stats()
        fds_end = chaos.fd_count(srv.pid)
        server = {name: stats[name] - start_stats[name] for name in
                  ("conns_accepted", "conns_closed", "bytes_in", "bytes_out", "conn_errors", "enobufs",
                   "accept_errors", "accept_pauses", "backpressure_pauses", "short_sends")}
        server["conns_active"] = stats["conns_active"]
        server["pending_bytes_max"] = stats["pending_bytes_max"]
        os.sched_setaffinity(0, saved)
    totals.update(server=server, rss_start_mib=rss0 >> 10, rss_max_mib=rss_max >> 10,
                  rss_bound_mib=bound >> 10, fds_start=fds0, fds_end=fds_end)
    return totals, violations


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="minutes per server (default 5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first chunk (default 1)")
    p.add_argument("--impl", default="uring,epoll", help="comma-separated: uring,epoll (default both)")
    p.add_argument("--chunk", type=float, default=30.0, help="seconds per chunk (default 30)")
    p.add_argument("--connections", type=int, default=64, help="concurrent scripts (default 64)")
    args = p.parse_args(argv)
    impls = [i.strip() for i in args.impl.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad or not impls:
        p.exit(2, f"error: --impl must list {', '.join(IMPLS)}, got {args.impl!r}\n")
    if not 0 < args.minutes <= 24 * 60 or not 1 <= args.chunk <= 3600 or args.seed < 0 \
            or not 1 <= args.connections <= 5000:
        p.exit(2, "error: need 0 < --minutes <= 1440, 1 <= --chunk <= 3600, --seed >= 0, "
                  "1 <= --connections <= 5000\n")
    server_cpu, client_cpu = chaos._cpus(None)
    failed = False
    for impl in impls:
        print(f"{impl}: {args.minutes:g} min in {args.chunk:g} s chunks from seed {args.seed}", flush=True)
        totals, violations = soak_one(impl, args.minutes, args.seed, args.chunk, args.connections, server_cpu,
                                     client_cpu)
        srv = totals.pop("server")
        print(f"{impl}: {'ok' if not violations else f'FAILED ({len(violations)} violations)'}: "
              + ", ".join(f"{k} {v}" for k, v in totals.items()), flush=True)
        print(f"{impl} server: " + ", ".join(f"{k} {v}" for k, v in srv.items()), flush=True)
        for v in violations[:10]:
            print(f"  {v}", flush=True)
        failed |= bool(violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
