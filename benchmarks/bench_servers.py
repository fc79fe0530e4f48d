"""Server throughput on this machine: io_uring vs epoll, server and client pinned to different CPUs.

Prints the median of several valid runs per cell and the io_uring/epoll ratio of each repeat (both
servers back to back), with the bottleneck side and the server's CPU and system calls per message.
Invalid runs (echo_core.results.validity: lost bytes, errors, an unsteady window) are counted and left out.

    .venv/bin/python benchmarks/bench_servers.py [--repeats 5] [--duration 3]
"""

import argparse
import statistics

from echo_core.measure.benchmark import run_benchmark

CELLS = [  # (mode, payload, connections): the reference points
    ("rr", 512, 64),
    ("stream", 16384, 1),
    ("stream", 16384, 8),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--warmup-max", type=float, default=5.0)
    args = parser.parse_args()
    print(f"{'mode':6} {'payload':>7} {'conns':>5} {'impl':5} {'msgs/s':>10} {'MB/s':>8} "
          f"{'p50 us':>7} {'srv us/msg':>10} {'srv sys/msg':>11} {'bottleneck':>10}")
    for mode, payload, conns in CELLS:
        runs = {"uring": [], "epoll": []}
        for rep in range(args.repeats):
            order = ("uring", "epoll") if rep % 2 == 0 else ("epoll", "uring")
            for impl in order:
                row = run_benchmark(impl, mode, payload, conns, duration=args.duration, warmup=args.warmup,
                                    warmup_max=args.warmup_max)
                runs[impl].append(row)
        pairs = [(u, e) for u, e in zip(runs["uring"], runs["epoll"]) if u["valid"] and e["valid"]]
        for impl in runs:
            bad = [r["invalid_reason"] for r in runs[impl] if not r["valid"]]
            if bad:
                print(f"{'':20} {impl}: {len(bad)} invalid run(s) left out: {'; '.join(bad)}")
            runs[impl] = [r for r in runs[impl] if r["valid"]]
        if not pairs:
            print(f"{mode:6} {payload:7} {conns:5} no valid pair of runs")
            continue
        for impl, rows in runs.items():
            med = {k: statistics.median(r[k] for r in rows) for k in
                   ("msgs_per_s", "bytes_per_s", "p50_us", "server_cpu_us_per_msg", "server_syscalls_per_msg")}
            flags = ",".join(sorted({r["bottleneck"] for r in rows}))
            print(f"{mode:6} {payload:7} {conns:5} {impl:5} {med['msgs_per_s']:10.0f} "
                  f"{med['bytes_per_s'] / 1e6:8.1f} {med['p50_us']:7.1f} {med['server_cpu_us_per_msg']:10.2f} "
                  f"{med['server_syscalls_per_msg']:11.2f} {flags:>10}")
        ratios = [u["msgs_per_s"] / e["msgs_per_s"] for u, e in pairs]
        print(f"{'':20} io_uring/epoll: median {statistics.median(ratios):.2f} "
              f"(per-repeat {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
