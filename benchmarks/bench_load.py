"""How fast and how cheap is the load generator itself?

Prints, for each project server (io_uring and epoll, pinned to the last CPU)
and each case below (client pinned to the first CPU), the median over a few
repeats of: messages/s, MB/s of echoed bytes, and the client's CPU cost per
message (client_cpu_s / messages, in microseconds) - the number that says
how much of the machine the measuring instrument takes for itself.

    python benchmarks/bench_load.py [--repeats 5] [--duration 2] [--json]
"""

import argparse
import json
import math
import os
import statistics
import sys

import echo_core
from echo_core.load.generator import run_load

CASES = [
    # (mode, payload, connections)
    ("rr", 512, 64),
    ("stream", 16384, 1),
]


def median(values):
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")


def bench(impl, server_cpu, client_cpu, repeats, duration, warmup):
    rows = []
    with echo_core.Server(impl, port=0, cpu=server_cpu) as srv:
        runs = {case: [] for case in CASES}
        # Interleave the cases so slow drifts (other load, thermal) hit all of them alike.
        for _ in range(repeats):
            for mode, payload, conns in CASES:
                r = run_load(port=srv.port, mode=mode, payload=payload, connections=conns,
                             duration=duration, warmup=warmup,
                             cpus=[client_cpu] if client_cpu is not None else None)
                if r["mismatches"] or r["errors"]:
                    raise SystemExit(f"{impl} {mode}: {r['mismatches']} mismatches, {r['errors']} errors")
                runs[(mode, payload, conns)].append(r)
    for (mode, payload, conns), rs in runs.items():
        rows.append({
            "server": impl,
            "mode": mode,
            "payload": payload,
            "connections": conns,
            "repeats": len(rs),
            "msgs_per_s": median([r["msgs_per_s"] for r in rs]),
            "mb_per_s": median([r["bytes_per_s"] / 1e6 for r in rs]),
            "cpu_us_per_msg": median([r["client_cpu_s"] / r["messages"] * 1e6 for r in rs]),
            "client_cpu_util": median([r["client_cpu_s"] / r["duration_s"] for r in rs]),
            "p50_us": median([r["p50_us"] for r in rs]),
            "p99_us": median([r["p99_us"] for r in rs]),
            "syscalls_per_msg": median([(r["send_calls"] + r["recv_calls"]) / r["messages"] for r in rs]),
        })
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--impls", default=",".join(echo_core.IMPLS))
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args(argv)

    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpu = (cpus[0], cpus[-1]) if len(cpus) > 1 else (None, None)
    rows = []
    for impl in args.impls.split(","):
        rows += bench(impl, server_cpu, client_cpu, args.repeats, args.duration, args.warmup)

    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"client on CPU {client_cpu}, server on CPU {server_cpu}; medians of {args.repeats} runs "
          f"of {args.duration:g} s after {args.warmup:g} s warm-up")
    print(f"{'server':7} {'mode':7} {'payload':>8} {'conns':>5} {'msgs/s':>10} {'MB/s':>8} "
          f"{'cpu us/msg':>10} {'cpu util':>8} {'p50 us':>8} {'p99 us':>8} {'sys/msg':>7}")
    for r in rows:
        print(f"{r['server']:7} {r['mode']:7} {r['payload']:>8} {r['connections']:>5} {r['msgs_per_s']:>10,.0f} "
              f"{r['mb_per_s']:>8.1f} {r['cpu_us_per_msg']:>10.2f} {r['client_cpu_util']:>8.2f} "
              f"{r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['syscalls_per_msg']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
