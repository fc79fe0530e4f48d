"""Command line: python -m echo_core serve|impls|load|sweep|charts|chaos|profile ..."""

import argparse
import sys

from echo_core.chaos import storm as chaos
from echo_core.chaos import lifetime
from echo_core.load import generator as load
from echo_core.cli import profile as profile_cli
from echo_core.servers import serve as server
from echo_core.servers import specs
from echo_core.cli import sweep as sweep_cli
from echo_core.host.cpus import parse_cpu_list
from echo_core.servers.options import DEFAULT_OPTIONS


def _chaos_command(args):
    """chaos: the seeded scripts, or with --lifetime the long-lived-server regime."""
    return lifetime.lifetime_command(args) if args.lifetime else chaos.chaos_command(args)


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line on stderr and exit status 2, never a usage dump or traceback."""

    def error(self, message):
        self.exit(2, f"error: {message}\n")


def _add_serve_arguments(p):
    p.add_argument("--impl", required=True, type=_spec,
                   help="server spec: uring, epoll or a variant such as uring+mshot+bundle (see: impls)")
    p.add_argument("--host", default="127.0.0.1", help="numeric address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0 = pick a free one)")
    p.add_argument("--cpu", type=int, default=None, help="pin the server to this CPU")
    p.add_argument("--threads", type=int, default=1,
                   help="share-nothing event loops, one SO_REUSEPORT listener each (default 1)")
    p.add_argument("--cpus", type=_cpu_list, default=None,
                   help="with --threads N: N comma-separated CPUs, loop i pinned to the i-th "
                        "(default: the server's CPU, then the others)")
    p.add_argument("--stats-file", default=None, help=argparse.SUPPRESS)
    # Defaults are None so that only options given explicitly are checked against the spec's tunables.
    for name, default in DEFAULT_OPTIONS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, dest=name,
                       help=f"default {default} (or the spec's)")


def _cpu_list(text):
    """argparse type of --cpus: a CPU list (checked against --threads by serve())."""
    try:
        return parse_cpu_list(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _spec(text):
    """argparse type of --impl: the canonical spec, or one line saying what is wrong."""
    try:
        return server.check_impl(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _serve_command(args):
    options = {name: getattr(args, name) for name in DEFAULT_OPTIONS if getattr(args, name) is not None}
    stats = server.serve(args.impl, host=args.host, port=args.port, cpu=args.cpu,
                         stats_path=args.stats_file, on_listening=server.print_listening,
                         threads=args.threads, cpus=args.cpus, **options)
    print(server.stats_json(stats), flush=True)
    return 0


def build_parser():
    parser = _Parser(prog="python -m echo_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_serve_arguments(sub.add_parser("serve", help="run an echo server until SIGINT/SIGTERM"))
    sub.add_parser("impls", help="the server specs this kernel can run, then those it cannot, and why")
    load.add_load_arguments(sub.add_parser("load", help="run the load generator against a server"))
    sweep_cli.add_sweep_arguments(sub.add_parser("sweep", help="run a grid of benchmarks: CSV + JSON + charts"))
    sweep_cli.add_charts_arguments(sub.add_parser("charts", help="redraw a result set's charts from its CSV"))
    chaos.add_chaos_arguments(sub.add_parser("chaos", help="seeded chaos client: verify every echoed byte"))
    profile_cli.add_profile_arguments(sub.add_parser("profile", help="CPU profiles of one cell: flame graphs, top functions"))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    handlers = {"serve": _serve_command, "impls": specs.impls_command, "load": load.load_command, "sweep": sweep_cli.sweep_command,
                "charts": sweep_cli.charts_command, "chaos": _chaos_command,
                "profile": profile_cli.profile_command}
    try:
        return handlers[args.command](args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
