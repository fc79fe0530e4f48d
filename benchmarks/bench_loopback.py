"""Streaming echo against the wire: iperf3's one-way loopback throughput and the echo servers' streaming
throughput, measured in the same run with the same pinning (server side on the server CPU, sender on
the client CPUs), interleaved, repeated; prints each server's median echoed bytes/s over iperf3's
one-way bytes/s of the same repeat.

An echo server moves every byte twice over loopback (in and back), iperf3 once: iperf3 one-way is
the ceiling of what one CPU's TCP stack can push through loopback in one direction, and an echo
server reaching 1.0x of it echoes as fast as the loopback can carry the data one way.

    .venv/bin/python benchmarks/bench_loopback.py [--payload 16384] [--connections 8] [--repeats 5]
        [--duration 2] [--impls epoll,uring,uring+mshot+bundle+batch] [--csv data/loopback-DATE.csv]

Needs iperf3 (Debian: apt-get install iperf3; scripts/install.sh installs it).  Invalid echo runs
are counted and left out; an iperf3 run that fails is reported and its repeat skipped.
"""

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from echo_core.host.cpus import default_cpus
from echo_core.measure.benchmark import run_benchmark
from echo_core.servers.external import free_port


def iperf3_one_way(payload, connections, duration, server_cpu, client_cpus):
    """iperf3 -c 127.0.0.1 with `connections` parallel streams of `payload`-byte writes, the receiver
    pinned to server_cpu, the sender to client_cpus; returns (bytes/s received, receiver CPU share)."""
    port = free_port("127.0.0.1")
    server = subprocess.Popen(["taskset", "-c", str(server_cpu), "iperf3", "-s", "-1", "-p", str(port),
                               "-B", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        cmd = ["taskset", "-c", ",".join(map(str, client_cpus)), "iperf3", "-c", "127.0.0.1", "-p", str(port),
               "-t", str(duration), "-O", "1", "-l", str(payload), "-P", str(connections), "-J"]
        # No probe connection (a one-off server would take it as its test): retry until it listens.
        for _ in range(50):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
            report = json.loads(proc.stdout or "{}")
            if "unable to connect" not in str(report.get("error", "")):
                break
            time.sleep(0.1)
        if proc.returncode != 0 or "error" in report:
            raise RuntimeError(report.get("error") or proc.stderr.strip() or f"iperf3 exit {proc.returncode}")
        end = report["end"]
        received = end["sum_received"]["bytes"] / end["sum_received"]["seconds"]
        return received, end.get("cpu_utilization_percent", {}).get("remote_total", float("nan")) / 100
    finally:
        server.kill()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payload", type=int, default=16384)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup-max", type=float, default=10.0)
    parser.add_argument("--impls", default="epoll,uring,uring+mshot+bundle+batch")
    parser.add_argument("--csv", default=None, help="also write one row per run here")
    args = parser.parse_args()
    if shutil.which("iperf3") is None:
        sys.exit("error: iperf3 is not installed (Debian: apt-get install iperf3)")
    server_cpu, client_cpus = default_cpus()
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    names = ["iperf3"] + impls
    rows = []
    for rep in range(args.repeats):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            if name == "iperf3":
                try:
                    bps, util = iperf3_one_way(args.payload, args.connections, args.duration, server_cpu, client_cpus)
                    rows.append({"repeat": rep, "impl": "iperf3", "bytes_per_s": bps, "server_util": util,
                                 "valid": True, "invalid_reason": ""})
                except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                    print(f"repeat {rep}: iperf3 failed: {exc}", file=sys.stderr)
                    rows.append({"repeat": rep, "impl": "iperf3", "bytes_per_s": float("nan"), "valid": False,
                                 "invalid_reason": str(exc)[:200]})
                continue
            row = run_benchmark(name, "stream", args.payload, args.connections, duration=args.duration,
                                warmup=0.5, warmup_max=args.warmup_max)
            rows.append({"repeat": rep, "impl": name, "bytes_per_s": row["bytes_per_s"],
                         "server_util": row["server_util"], "client_util": row["client_util"],
                         "bottleneck": row["bottleneck"], "valid": row["valid"],
                         "invalid_reason": row["invalid_reason"]})
    if args.csv:
        fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "repeat", k != "impl", k))
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    base = {r["repeat"]: r["bytes_per_s"] for r in rows if r["impl"] == "iperf3" and r["valid"]}
    print(f"stream {args.payload} B x {args.connections}, server/receiver on CPU {server_cpu}, "
          f"sender on {client_cpus}, {args.repeats} interleaved repeats of {args.duration} s "
          f"(host {os.uname().nodename})")
    print(f"{'':28} {'median MB/s':>12} {'vs iperf3 one-way':>18} {'excluded':>9}")
    for name in names:
        mine = [r for r in rows if r["impl"] == name]
        good = [r for r in mine if r["valid"]]
        mbs = statistics.median(r["bytes_per_s"] for r in good) / 1e6 if good else float("nan")
        ratios = [r["bytes_per_s"] / base[r["repeat"]] for r in good if r["repeat"] in base]
        ratio = statistics.median(ratios) if ratios and name != "iperf3" else float("nan")
        print(f"{name:28} {mbs:12,.0f} {ratio:18.2f} {len(mine) - len(good):9d}")


if __name__ == "__main__":
    main()
