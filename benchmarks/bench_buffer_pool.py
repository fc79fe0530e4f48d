"""Does a cache-sized provided-buffer pool close io_uring's streaming gap?  (issue 9's hypothesis)

The io_uring server takes its provided buffers in ring order, so with the default pool (4,096 × 64 KiB =
256 MiB) every recv lands in memory that left the cache long ago, while epoll reuses one warm buffer per
connection.  This runs one streaming cell with epoll, io_uring as it is and io_uring with a small pool,
interleaved (rotating order) in every repeat, and prints per variant the median msgs/s, server CPU per
message, the kernel's recv copy per message (from a profile of the same variants when --profile) and
the ratios to epoll of the same repeat.  Invalid runs are counted and left out.

    .venv/bin/python benchmarks/bench_buffer_pool.py [--payload 100000] [--connections 8] [--small 16]
                                                     [--repeats 5] [--duration 2] [--profile DIR]
"""

import argparse
import statistics

from echo_core.measure.benchmark import run_benchmark

COPY_TO_USER = "_copy_to_iter"


def variants(small):
    return {"epoll": ("epoll", {}), "uring": ("uring", {}),
            f"uring buf_count={small}": ("uring", {"buf_count": small})}


def profile_copies(args, names):
    """Self CPU µs/msg in the recv copy, per variant, from one profile per variant (2 runs each)."""
    from echo_core.profiling.profile import profile_cell

    out = {}
    for name, (impl, options) in names.items():
        prof = profile_cell([impl], "stream", args.payload, args.connections, duration=args.duration, repeats=2,
                            warmup_max=args.warmup_max, server_options=options, charts=False, machine=False,
                            output_dir=f"{args.profile}/{name.replace(' ', '-').replace('=', '')}")
        rows = prof.table[prof.table["function"] == COPY_TO_USER]
        out[name] = float(rows["self_us_per_msg"].sum())
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=int, default=100000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--small", type=int, default=16, help="buffers in the small pool (a power of two)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup-max", type=float, default=10.0)
    parser.add_argument("--profile", default=None, metavar="DIR", help="also profile each variant into DIR")
    args = parser.parse_args()
    names = variants(args.small)
    rows = {name: [] for name in names}
    order = list(names)
    for rep in range(args.repeats):
        shift = rep % len(order)
        for name in order[shift:] + order[:shift]:
            impl, options = names[name]
            rows[name].append(run_benchmark(impl, "stream", args.payload, args.connections, duration=args.duration,
                                            warmup=0.5, warmup_max=args.warmup_max, server_options=options))
    copies = profile_copies(args, names) if args.profile else {}
    print(f"stream {args.payload} B x {args.connections} connections, {args.repeats} interleaved repeats "
          f"(server CPU 1, client CPU 0 unless the machine differs)")
    print(f"{'variant':22} {'valid':>5} {'msgs/s':>9} {'srv µs/msg':>10} {'bytes/recv':>10} {'faults/msg':>10} "
          f"{'x epoll msgs/s':>14} {'x epoll µs/msg':>14} {'copy_to_iter µs/msg':>19}")
    for name in names:
        ok = [(r, e) for r, e in zip(rows[name], rows["epoll"]) if r["valid"] and e["valid"]]
        good = [r for r in rows[name] if r["valid"]]
        if not good:
            print(f"{name:22} no valid run: {'; '.join(r['invalid_reason'] for r in rows[name])}")
            continue
        med = {k: statistics.median(r[k] for r in good) for k in
               ("msgs_per_s", "server_cpu_us_per_msg", "server_bytes_per_recv", "server_minor_faults_per_msg")}
        thr = statistics.median(r["msgs_per_s"] / e["msgs_per_s"] for r, e in ok) if ok else float("nan")
        cpu = (statistics.median(r["server_cpu_us_per_msg"] / e["server_cpu_us_per_msg"] for r, e in ok)
               if ok else float("nan"))
        print(f"{name:22} {len(good):>5} {med['msgs_per_s']:>9,.0f} {med['server_cpu_us_per_msg']:>10.2f} "
              f"{med['server_bytes_per_recv']:>10,.0f} {med['server_minor_faults_per_msg']:>10.3f} {thr:>14.2f} "
              f"{cpu:>14.2f} {copies.get(name, float('nan')):>19.2f}")


if __name__ == "__main__":
    main()
