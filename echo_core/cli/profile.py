"""`python -m echo_core profile`: CPU profiles of one cell per implementation (echo_core.profiling.profile)."""

import sys

from echo_core.host.cpus import available_cpus
from echo_core.host.numbers import byte_count, option_number
from echo_core.servers.specs import split_list


def _impl_list(text):
    return split_list(text)


def add_profile_arguments(parser):
    """Add the `profile` subcommand's options to an argparse parser."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--impl", default=None, help="one implementation (server spec) to profile, e.g. uring, epoll, uring+mshot")
    which.add_argument("--impls", default=None, metavar="LIST",
                       help="implementations to profile one after the other, e.g. uring,epoll (the default)")
    parser.add_argument("--mode", default="stream", help="stream or rr (default stream)")
    parser.add_argument("--payload", default="16K", metavar="BYTES", help="bytes per message, e.g. 100000 or 16K (default 16K)")
    parser.add_argument("--connections", default="8", metavar="N", help="connections (default 8)")
    parser.add_argument("--duration", default="2", metavar="S", help="measured (and sampled) seconds (default 2)")
    parser.add_argument("--warmup", default="0.5", metavar="S", help="minimum warm-up seconds (default 0.5)")
    parser.add_argument("--warmup-max", default="3", metavar="S",
                        help="wait up to S seconds for a steady state before the window opens (default 3)")
    parser.add_argument("--repeats", default="1", metavar="N",
                        help="runs per implementation, interleaved; their samples add up (default 1)")
    parser.add_argument("--frequency", default="4000", metavar="HZ", help="samples per CPU second (default 4000)")
    parser.add_argument("--server-cpu", default=None, metavar="CPU", help="pin the server here (default: the last CPU)")
    parser.add_argument("--client-cpus", default=None, metavar="LIST",
                        help='pin the load generator (and perf) here, e.g. "0" (default: the other CPUs)')
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="where the files go (default data/profiles/<time>-<mode>-<payload>x<connections>)")
    parser.add_argument("--keep-perf-data", action="store_true", help="keep <impl>.perf.data for perf report")
    parser.add_argument("--top", default="5", metavar="N", help="differences to print (default 5)")
    parser.add_argument("--client", default="epoll-et", metavar="DESIGN",
                        help="the load generator's design: epoll-et (default), epoll-lt, threads")
    parser.add_argument("--work", default="none", metavar="WORK",
                        help="the servers' work per request: none (default), touch, cpu=NS")
    return parser


def profile_command(args):
    """Exit status 0; 2 for bad input; 1 when perf is missing or may not sample, or a run is invalid."""
    # Imported here, for this command only: they load pandas and matplotlib (~0.5 s), and every other
    # command -- `serve` above all, which each Server child process runs -- starts without them.
    from echo_core.analysis import report
    from echo_core.profiling import profile


    try:
        impls = _impl_list(args.impl or args.impls or "uring,epoll")
        kwargs = dict(
            payload=byte_count(args.payload),
            connections=option_number("connections", args.connections, int),
            duration=option_number("duration", args.duration, float),
            warmup=option_number("warmup", args.warmup, float),
            warmup_max=option_number("warmup-max", args.warmup_max, float),
            repeats=option_number("repeats", args.repeats, int),
            frequency=option_number("frequency", args.frequency, int),
            server_cpu=None if args.server_cpu is None else option_number("server-cpu", args.server_cpu, int),
            client_cpus=available_cpus(args.client_cpus),
            client=args.client,
            work=args.work,
        )
        top = option_number("top", args.top, int)
        report.use_headless_backend()
        result = profile.profile_cell(impls, args.mode, output_dir=args.output_dir,
                                      keep_perf_data=args.keep_perf_data, **kwargs)
    except profile.ProfilerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = result.output_dir
    print(f"profiles of {args.mode} {kwargs['payload']} B x {kwargs['connections']} connections "
          f"({args.client} client, work {args.work}) in {out}/")
    for impl, info in result.meta["impls"].items():
        print(f"  {info['folded']}  {info['svg']}")
    print("  " + "  ".join(result.meta["files"].values()) + f"  {profile.PROFILE_JSON}")
    print("\n".join(profile.summary_lines(result, n=top)))
    invalid = [impl for impl, info in result.meta["impls"].items() if not info.get("valid")]
    if invalid:
        print(f"warning: the run of {', '.join(invalid)} is not a valid measurement (see profile.json)")
        return 1
    return 0
