"""`python -m echo_core sweep`: a named grid (with overrides) -> CSV + JSON + charts, and a summary."""

import argparse
import contextlib
import signal
from pathlib import Path

from echo_core.results import resultsets as results
from echo_core.servers import specs
from echo_core.analysis import stats
from echo_core.measure.grids import GRIDS, count_runs, estimate_seconds, grid_params
from echo_core.measure.sweep import confirm_sweep, resume_sweep, row_key, sweep
from echo_core.results import schema
from echo_core.load.generator import ARRIVALS, CLIENTS, DEFAULT_CLIENT
from echo_core.servers.options import parse_work


def _list(kind, what, minimum=None):
    def parse(text):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not values or (min(values) < minimum if minimum is not None else min(values) <= 0):
            adjective = "non-negative" if minimum == 0 else "positive"
            raise argparse.ArgumentTypeError(f"expected comma-separated {adjective} {what}, got {text!r}")
        return values
    return parse


def _str_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def _spec_list(text):
    """Comma-separated server specs (commas inside a spec's parentheses do not split), checked here so a
    bad one is one line before anything runs."""
    values = specs.split_list(text)
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated server specs, got {text!r}")
    for value in values:
        try:
            specs.canonical(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return values


def _client_list(text):
    values = _str_list(text)
    bad = [v for v in values if v not in CLIENTS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected comma-separated client designs ({', '.join(CLIENTS)}), got {text!r}")
    return values


def _work_list(text):
    values = _str_list(text)
    try:
        return [parse_work(v)[0] for v in values] or parse_work("")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_sweep_arguments(parser):
    """Add the `sweep` subcommand's options to an argparse parser."""
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick",
                        help="named grid (default quick: ~2 minutes; seed: the seed study's grid, ~30 minutes; "
                             "latency: open-loop latency vs offered load; ablation: io_uring features vs epoll; "
                             "hosts: cells for comparing load from one host and from several, --netns 2)")
    parser.add_argument("--output-dir", default="data", help="where the CSV, JSON and charts go (default data)")
    parser.add_argument("--name", default=None, help="result set name (default sweep-YYYYmmdd-HHMMSS)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default: the grid's)")
    parser.add_argument("--warmup", type=float, default=None, help="minimum warm-up seconds per run (default: the grid's)")
    parser.add_argument("--warmup-max", type=float, default=None,
                        help="wait up to this long for a steady state before measuring (default: the grid's)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default: the grid's)")
    parser.add_argument("--impls", type=_spec_list, default=None,
                        help="override the grid's implementations (server specs), e.g. uring,epoll,uring+mshot")
    parser.add_argument("--modes", type=_str_list, default=None, help="override the grid's modes, e.g. rr,stream,rate")
    parser.add_argument("--payloads", type=_list(int, "integers"), default=None,
                        help="override the grid's payloads (bytes), e.g. 512,4096")
    parser.add_argument("--connections", type=_list(int, "integers"), default=None,
                        help="override the grid's connection counts, e.g. 1,64")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--rates", type=_list(float, "numbers"), default=None,
                      help="rate mode: offered loads in requests/s, e.g. 5000,20000,80000")
    load.add_argument("--load-fractions", type=_list(float, "numbers"), default=None,
                      help="rate mode: offered loads as fractions of each cell's closed-loop capacity, "
                           "e.g. 0.25,0.5,0.75,0.9,1.0 (the default)")
    parser.add_argument("--arrivals", choices=tuple(ARRIVALS), default=None,
                        help="rate mode: inter-arrival times (default poisson)")
    parser.add_argument("--target-ci", type=float, default=None,
                        help="repeat cells until the io_uring/epoll ratio's 95%% CI half-width (with more specs: "
                             "every spec/epoll ratio's) is below this fraction (e.g. 0.03), up to --max-repeats")
    parser.add_argument("--max-repeats", type=int, default=None, help="with --target-ci: at most this many repeats")
    parser.add_argument("--resume", metavar="NAME", default=None,
                        help="continue the interrupted result set NAME in --output-dir with the parameters it "
                             "recorded, skipping runs it already holds as valid (grid options are ignored)")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="the server's event loops (share-nothing, one SO_REUSEPORT listener each; default 1); "
                             "not the load generator's threads")
    parser.add_argument("--server-cpus", type=_list(int, "CPU numbers", minimum=0), default=None,
                        help="with --server-threads N: N comma-separated CPUs, loop i pinned to the i-th")
    parser.add_argument("--clients", type=_client_list, default=None,
                        help="load generator designs to run every cell with: " + ", ".join(CLIENTS)
                             + f" (default {DEFAULT_CLIENT}); a column of every row")
    parser.add_argument("--works", type=_work_list, default=None,
                        help="the servers' work per request: none, touch (read every byte), cpu=NS (NS ns of "
                             "CPU per message); comma-separated (default none)")
    parser.add_argument("--confirm", metavar="NAME", default=None,
                        help="re-measure the winners of result set NAME on fresh runs: one io_uring and one epoll "
                             "spec fixed for all its cells (the best median ratio, or --impls given in advance), "
                             "every cell --repeats times (default 3) with --clients and --works")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    hosts = parser.add_argument_group("load from several hosts (see README: when one machine is not enough)")
    where = hosts.add_mutually_exclusive_group()
    where.add_argument("--netns", type=int, default=None, metavar="N",
                       help="try it on this machine: N load-host network namespaces (198.18.0.0/15) with a dask "
                            "worker each, the server in one more; all removed at the end (needs root)")
    where.add_argument("--scheduler", default=None, metavar="ADDR",
                       help="a dask scheduler (tls://HOST:PORT, or tcp:// on loopback) whose workers send the load")
    hosts.add_argument("--hosts", type=int, default=None, metavar="K", help="with --scheduler: use K of its workers")
    hosts.add_argument("--host", default="127.0.0.1",
                       help="the server's address (default 127.0.0.1; --netns picks its own)")
    hosts.add_argument("--allow-remote", action="store_true",
                       help="let load go to a --host outside loopback and echo_core's namespaces: only a lab "
                            "network you own")
    hosts.add_argument("--allow-plain-tcp", action="store_true",
                       help="accept a tcp:// --scheduler off loopback (anyone reaching it runs code on the workers)")
    hosts.add_argument("--tls-ca-file", default=None, help="with a tls:// --scheduler: CA certificate (PEM)")
    hosts.add_argument("--tls-cert", default=None, help="with a tls:// --scheduler: client certificate (PEM)")
    hosts.add_argument("--tls-key", default=None, help="with a tls:// --scheduler: client key (PEM)")
    return parser


@contextlib.contextmanager
def _term_as_interrupt():
    def interrupt(signum, frame):
        # Once: a second SIGTERM must not cut the clean-up this one starts.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _hosts_kwargs(args):
    """sweep() keywords for where the load comes from."""
    kwargs = {"host": args.host, "allow_remote": args.allow_remote}
    if args.netns is not None:
        kwargs["netns"] = args.netns
    elif args.scheduler is not None:
        security = None
        if args.tls_ca_file or args.tls_cert or args.tls_key:
            from distributed.security import Security

            security = Security(tls_ca_file=args.tls_ca_file, tls_client_cert=args.tls_cert,
                                tls_client_key=args.tls_key, require_encryption=True)
        kwargs.update(cluster=args.scheduler, hosts=args.hosts, security=security,
                      allow_plain_tcp=args.allow_plain_tcp)
    elif args.hosts is not None:
        raise ValueError("--hosts goes with --scheduler")
    return kwargs


OVERRIDES = ("duration", "warmup", "warmup_max", "repeats", "impls", "modes", "payloads", "connections", "rates",
             "load_fractions", "arrivals", "target_ci", "max_repeats", "clients", "works")


def add_charts_arguments(parser):
    """Add the `charts` subcommand's options: redraw a result set's charts from its CSV."""
    parser.add_argument("csv", nargs="+", help="result set CSV(s), e.g. data/sweep-20261127-115922.csv")
    return parser


def charts_command(args):
    """Redraw every chart of each result set beside its CSV (figures come from the table alone)."""

    from echo_core.analysis import report  # matplotlib: for the commands that draw (see cli.profile)

    report.use_headless_backend()
    for path in map(Path, args.csv):
        if not path.is_file():
            raise ValueError(f"no such result set: {path}")
        df = results.load_csv(path)
        for chart in report.save_charts(df, path.parent, path.stem).values():
            print(f"chart:    {chart}")
        print(results.excluded_note(df))
    return 0


def sweep_command(args):
    """Run the grid, then CSV + JSON + charts.  Exit status 0, or 1 when a run failed or lost bytes
    (runs that are invalid only because their window was unsteady are reported, not failures)."""
    if args.resume:
        print(f"resuming {args.resume} in {args.output_dir}", flush=True)
        df = resume_sweep(args.resume, output_dir=args.output_dir, progress=not args.quiet)
    elif args.confirm:
        given = {k: getattr(args, k) for k in ("duration", "warmup", "warmup_max") if getattr(args, k) is not None}
        with _term_as_interrupt():
            df = confirm_sweep(args.confirm, output_dir=args.output_dir, impls=args.impls,
                               repeats=args.repeats or 3, clients=args.clients, works=args.works,
                               confirm_name=args.name, progress=not args.quiet, **given)
        meta = df.attrs["metadata"]["confirms"]
        print(f"confirming {args.confirm}: {' vs '.join(meta['impls'])} ({meta['rule']})")
    else:
        params = grid_params(args.grid, **{k: getattr(args, k) for k in OVERRIDES})
        eta = estimate_seconds(params)
        about = f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.0f} min"
        print(f"{args.grid} grid: {count_runs(params)} runs, about {about}", flush=True)
        # sweep() refuses bad values (threads out of range, cpus not one per thread) in one line.
        server = {"server_threads": 1 if args.server_threads is None else args.server_threads,
                  "server_cpus": args.server_cpus}
        # SIGTERM unwinds like ^C, so that namespaces, workers and servers are removed.
        with _term_as_interrupt():
            df = sweep(output_dir=args.output_dir, name=args.name, progress=not args.quiet, grid=args.grid,
                       **server, **params, **_hosts_kwargs(args))
    meta = df.attrs["metadata"]
    print(f"{meta['rows']} runs in {meta['elapsed_s']:.0f} s")
    print(f"results:  {df.attrs['csv']}")
    print(f"metadata: {df.attrs['json']}")
    if not args.no_plots:
        from echo_core.analysis import report  # matplotlib: for the commands that draw (see cli.profile)

        report.use_headless_backend()
        paths = report.save_charts(df, Path(df.attrs["csv"]).parent, df.attrs["name"])
        for path in paths.values():
            print(f"chart:    {path}")
    pair = stats.base_pair(df)
    if pair and pair[1] != schema.BASELINE:
        _print_ratios(df, *pair)
    for numerator in stats.numerators(df):
        _print_ratios(df, numerator)
    if pair:
        _print_verdicts(df, *pair)
    print(results.excluded_note(df))
    # Failed or corrupt runs count unless a resumed sweep has since recorded the same run valid; cells
    # whose spec this machine cannot run were skipped, which is not a failure.
    redone = {row_key(row) for row in results.valid_rows(df).to_dict("records")}
    invalid = [row for row in results.excluded_rows(df).to_dict("records") if row_key(row) not in redone]
    broken = [r["invalid_reason"] for r in invalid
              if any(not part.startswith(("unsteady", "non-stationary", "unsupported"))
                     for part in r["invalid_reason"].split("; "))]
    skipped = sorted({f"{r['impl']} ({r['invalid_reason']})" for r in invalid
                      if r["invalid_reason"].startswith("unsupported")})
    if skipped:
        print(f"skipped (this machine cannot run them): {'; '.join(skipped)}")
    if broken:
        print(f"warning: {len(broken)} run(s) failed, e.g. {broken[0]}")
        return 1
    return 0


def _print_verdicts(df, numerator, denominator):
    """Per cell, the verdict over the clients and works it ran with (only when there is more than one)."""
    if df["client"].nunique() < 2 and df["work"].nunique() < 2:
        return
    table = stats.verdicts(df, numerator, denominator)
    print(f"verdict of {schema.impl_label(numerator)} vs {schema.impl_label(denominator)} per cell, over "
          f"{df['client'].nunique()} client design(s) and {df['work'].nunique()} work(s):")
    for rec in table.to_dict("records"):
        print(f"  {rec['mode']:<6} {rec['payload']:>7} B  {rec['connections']:>6} conns  {rec['verdict']:<22} "
              f"{rec['variants']}")


def _print_ratios(df, numerator, denominator=schema.BASELINE):
    """The paired numerator / denominator table, one line per cell."""
    table = stats.ratios(df, numerator=numerator, denominator=denominator)
    if len(table):
        print(f"{schema.impl_label(numerator)} / {schema.impl_label(denominator)} "
              "(median of paired per-repeat msgs/s ratios, 95 % CI):")
        for rec in table.to_dict("records"):
            ci = f" [{rec['ratio_ci_low']:.2f}, {rec['ratio_ci_high']:.2f}]" if rec["ratio_ci_low"] == rec["ratio_ci_low"] else ""
            load = f" at {rec['offered_rate']:,.0f}/s" if rec["offered_rate"] == rec["offered_rate"] else ""
            excluded = f"  ({rec['n_excluded']} run(s) excluded)" if rec["n_excluded"] else ""
            variant = f"  {rec['client']}/{rec['work']}" if df["client"].nunique() > 1 or df["work"].nunique() > 1 else ""
            print(f"  {rec['mode']:<6} {rec['payload']:>7} B  {rec['connections']:>6} conns{load}{variant}  "
                  f"{rec['ratio']:.2f}{ci}{excluded}")
