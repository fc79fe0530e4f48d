"""Sweeps: run a grid of benchmarks and keep every run as one tidy CSV row, with the machine beside it.

    >>> df = sweep(payloads=(512,), connections=(1, 64), repeats=3, output_dir="data")
    >>> summarize(df)        # median and 95 % CI per (impl, mode, payload, connections)
    >>> ratios(df)           # io_uring / epoll ratio of median msgs/s per (mode, payload, connections)

Design decisions (also what a reader of the data can rely on):

* Order.  The grid is walked repeat by repeat (every cell once, then every cell again, ...), and within
  each cell every implementation runs back to back, in the given order on even repeats and reversed on
  odd ones.  Slow drift of a noisy machine therefore hits both implementations alike, and the spread of
  the repeats includes drift over the whole sweep instead of hiding it.  An interrupted sweep has all
  cells with fewer repeats rather than some cells complete and others missing.
* Durability.  Each row is appended to ``<output_dir>/<name>.csv`` and flushed as soon as it is
  measured, so an interrupted sweep keeps what it measured.  If a later row brings a column the header
  lacks, the file is rewritten once with the wider header.
* Failures.  A run that raises (a server that does not start, a load generator that fails, ...) is
  recorded as a row with the cell's keys, NaN measurements and the exception text in the ``error``
  column (empty for good runs); the sweep goes on.  Pass ``on_error="raise"`` to stop at the first
  failure instead.  ``summarize``/``ratios``/charts ignore failed rows and count them (``n_failed``).
  KeyboardInterrupt always stops the sweep; the metadata then says ``"status": "interrupted"``.
* Metadata.  ``<name>.json`` beside the CSV holds machine_info() (kernel, CPU, io_uring, liburing,
  mitigations, versions, git commit), the sweep parameters, start/end times, the share of CPU time
  stolen by the hypervisor during the sweep, and the final status.  It is written when the sweep
  starts and rewritten when it ends.
* Statistics.  Point estimate: the median of the repeats.  Interval: a percentile bootstrap 95 % CI of
  the median (2000 resamples, fixed seed) -- the same estimator and interval the charts' bands use
  (seaborn, estimator=median, errorbar=("ci", 95)).  With 1 repeat the CI is NaN.  With 2-3 repeats
  the bootstrap interval is simply [min, max] of the repeats, whose true coverage is lower than 95 %
  (75 % for 3): read it as "the spread of the repeats", and use more repeats for real confidence.
"""

import csv
import itertools
import json
import math
import os
import resource
import time
import warnings
from datetime import datetime
from pathlib import Path

from echo_core import machine
from echo_core.bench import run_benchmark

#: Columns that identify a cell (one combination of the grid's parameters).
CELL = ["impl", "mode", "payload", "connections"]
#: Columns the sweep adds to each run_benchmark row.
SWEEP_COLUMNS = ["run_index", "repeat", "started_at", "wall_s"]
#: Metrics summarize() reports.
METRICS = ["msgs_per_s", "bytes_per_s", "p50_us", "p99_us", "server_cpu_us_per_msg"]
#: How many bootstrap resamples summarize() and ratios() use.
BOOTSTRAP_RESAMPLES = 2000
#: Display names of the implementations in tables and charts.
IMPL_LABELS = {"uring": "io_uring", "epoll": "epoll"}

GRIDS = {
    # 2 payloads x 2 connection counts x 2 modes x 2 impls x 3 repeats = 48 runs of ~2.15 s: measured
    # 103 s on the 2-vCPU development machine.
    "quick": {"impls": ("uring", "epoll"), "modes": ("rr", "stream"), "payloads": (512, 16384),
              "connections": (1, 64), "duration": 1.5, "warmup": 0.5, "repeats": 3},
    # The seed study's grid (its runs were 3 minutes each; ours are short and repeated instead):
    # 480 runs, ~23 minutes (estimate_seconds; runs at 10,000 connections take ~1 s longer).
    "seed": {"impls": ("uring", "epoll"), "modes": ("stream", "rr"),
             "payloads": (256, 512, 1024, 4096, 8192, 16384, 32768, 100000),
             "connections": (1, 8, 512, 1000, 10000), "duration": 2.0, "warmup": 0.5, "repeats": 3},
}


def _tqdm():
    # Without ipywidgets tqdm.auto warns in a notebook and falls back to the text bar: that is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


def plan(impls=("uring", "epoll"), modes=("rr", "stream"), payloads=(4096,), connections=(1, 64), repeats=3):
    """The runs of a sweep, in the order they are made: a list of dicts (impl, mode, payload, connections, repeat)."""
    impls = list(impls)
    runs = []
    for repeat in range(repeats):
        order = impls if repeat % 2 == 0 else impls[::-1]
        for mode, payload, conns in itertools.product(modes, payloads, connections):
            for impl in order:
                runs.append({"impl": impl, "mode": mode, "payload": int(payload), "connections": int(conns),
                             "repeat": repeat})
    return runs


def _validate(impls, modes, payloads, connections, duration, repeats, warmup):
    from echo_core.server import IMPLS

    for impl in impls:
        if impl not in IMPLS:
            raise ValueError(f"unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    for mode in modes:
        if mode not in ("rr", "stream", "rate"):
            raise ValueError(f"unknown mode {mode!r}; choose from rr, stream")
    for value, what in [(p, "payload") for p in payloads] + [(c, "connections") for c in connections]:
        if int(value) != value or value <= 0:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not impls or not modes or not payloads or not connections:
        raise ValueError("every grid dimension needs at least one value")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if not duration > 0 or warmup < 0:
        raise ValueError("duration must be > 0 and warmup >= 0")


def _now():
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class _CsvAppender:
    """Append dict rows to a CSV, flushing each one; widen the header (rewrite once) on new columns."""

    def __init__(self, path, leading=()):
        self.path = Path(path)
        self.fields = list(leading)
        self.rows = 0

    def write(self, row):
        new = [k for k in row if k not in self.fields]
        if new and self.rows:
            self._widen(new)
        elif new:
            self.fields += new
        mode = "a" if self.rows else "w"
        with open(self.path, mode, newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="raise")
            if not self.rows:
                writer.writeheader()
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
            f.flush()
            os.fsync(f.fileno())
        self.rows += 1

    def _widen(self, new):
        fields = self.fields[:-1] + new + self.fields[-1:] if self.fields[-1] == "error" else self.fields + new
        tmp = self.path.with_suffix(".csv.tmp")
        with open(self.path, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
            writer = csv.DictWriter(dst, fieldnames=fields)
            writer.writeheader()
            for old in csv.DictReader(src):
                writer.writerow(old)
        os.replace(tmp, self.path)
        self.fields = fields


def _csv_value(value):
    if isinstance(value, float) and math.isnan(value):
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _unique_name(output_dir, name):
    if name is not None:
        if (output_dir / f"{name}.csv").exists():
            raise FileExistsError(f"{output_dir / (name + '.csv')} exists; choose another --name")
        return name
    base = "sweep-" + datetime.now().strftime("%Y%m%d-%H%M%S")
    name, n = base, 1
    while (output_dir / f"{name}.csv").exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _write_json(path, data):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def sweep(impls=("uring", "epoll"), modes=("rr", "stream"), payloads=(4096,), connections=(1, 64),
          duration=2.0, repeats=3, warmup=0.5, output_dir="data", name=None, rate=None,
          server_options=None, progress=True, on_error="record", on_row=None, features_file=None,
          grid=None, **bench_options):
    """Run every (impl, mode, payload, connections) cell `repeats` times; return the tidy DataFrame.

    Writes ``<output_dir>/<name>.csv`` (one row per run, appended as measured) and ``<name>.json``
    (machine and sweep metadata).  ``name`` defaults to ``sweep-YYYYmmdd-HHMMSS``; an existing
    explicit name is refused rather than overwritten.  ``progress`` shows a tqdm bar;
    ``on_row(row)`` is called after each row is written (raise from it to stop the sweep);
    ``on_error`` is "record" (failed runs become rows with an ``error`` text) or "raise".
    Extra keyword arguments (server_cpu, client_cpus, threads, window, ...) go to run_benchmark.
    The DataFrame's ``attrs`` hold the csv/json paths and the metadata.
    """
    if on_error not in ("record", "raise"):
        raise ValueError("on_error must be 'record' or 'raise'")
    impls, modes = list(impls), list(modes)
    payloads, connections = [int(p) for p in payloads], [int(c) for c in connections]
    _validate(impls, modes, payloads, connections, duration, repeats, warmup)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = _unique_name(output_dir, name)
    csv_path, json_path = output_dir / f"{name}.csv", output_dir / f"{name}.json"
    runs = plan(impls, modes, payloads, connections, repeats)
    # Servers and load generators raise their own soft limit to this hard one (ec_raise_nofile).
    fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    params = {"grid": grid, "impls": impls, "modes": modes, "payloads": payloads, "connections": connections,
              "duration": duration, "warmup": warmup, "repeats": repeats, "rate": rate,
              "server_options": server_options or {}, "bench_options": bench_options,
              "on_error": on_error, "order": "repeat-major; impls alternate order between repeats",
              "runs_planned": len(runs), "nofile_limit": list(fd_limit)}
    meta = {"name": name, "csv": csv_path.name, "status": "running", "started_at": _now(),
            "finished_at": None, "elapsed_s": None, "rows": 0, "failed_runs": 0,
            "parameters": params, "machine": machine.machine_info(features_file)}
    _write_json(json_path, meta)
    cpu_before, t0 = machine.cpu_times_total(), time.monotonic()
    writer = _CsvAppender(csv_path, leading=SWEEP_COLUMNS + CELL)
    rows, failed = [], 0
    bar = _tqdm()(total=len(runs), desc=name, unit="run", disable=not progress, dynamic_ncols=True)
    try:
        for index, run in enumerate(runs):
            bar.set_postfix_str(f"{run['mode']} {run['payload']}B x{run['connections']} {run['impl']}", refresh=False)
            row = {"run_index": index, "repeat": run["repeat"], "started_at": _now()}
            t_run = time.monotonic()
            try:
                result = run_benchmark(run["impl"], run["mode"], run["payload"], run["connections"],
                                       duration=duration, warmup=warmup, rate=rate,
                                       server_options=server_options, **bench_options)
                # A load generator stopped early by ^C returns a partial window: not a measurement.
                error = "interrupted: partial measurement" if result.get("interrupted") is True else ""
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - recorded in the row, see the module docstring
                if on_error == "raise":
                    raise
                result = {k: run[k] for k in CELL}
                error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
            row["wall_s"] = round(time.monotonic() - t_run, 4)
            row.update({k: run[k] for k in CELL})
            row.update({k: v for k, v in result.items() if k not in row})
            row["error"] = error
            failed += bool(error)
            writer.write(row)
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(row)
        meta["status"] = "complete"
    except KeyboardInterrupt:
        meta["status"] = "interrupted"
        raise
    except BaseException as exc:
        meta["status"] = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        bar.close()
        meta.update(finished_at=_now(), elapsed_s=round(time.monotonic() - t0, 3), rows=len(rows),
                    failed_runs=failed, cpu_steal_fraction=machine.steal_fraction(cpu_before, machine.cpu_times_total()))
        _write_json(json_path, meta)
    df = load_csv(csv_path)
    df.attrs.update(name=name, csv=str(csv_path), json=str(json_path), metadata=meta)
    return df


def sweep_grid(name, /, output_dir="data", **overrides):
    """Run a named grid from GRIDS; keyword arguments override the grid's values or add sweep() options
    (``name=`` among them is the result set's name; None values mean "the grid's default")."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
    params = {**GRIDS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return sweep(output_dir=output_dir, grid=name, **params)


def grid_runs(name, **overrides):
    """How many runs a named grid makes."""
    g = {**GRIDS[name], **{k: v for k, v in overrides.items() if v is not None}}
    return len(g["impls"]) * len(g["modes"]) * len(g["payloads"]) * len(g["connections"]) * g["repeats"]


#: Measured on the 2-vCPU development machine: each run costs warmup + duration plus ~0.15 s (server
#: start/stop, process start), plus ~1 s more at 10,000 connections (connection set-up).
RUN_OVERHEAD_S = 0.15
OVERHEAD_PER_CONNECTION_S = 1e-4


def estimate_seconds(name, **overrides):
    """Rough wall time of a named grid, from the per-run overheads measured on the development machine."""
    g = {**GRIDS[name], **{k: v for k, v in overrides.items() if v is not None}}
    per_conn_mix = sum(OVERHEAD_PER_CONNECTION_S * c for c in g["connections"]) / len(g["connections"])
    per_run = g["warmup"] + g["duration"] + RUN_OVERHEAD_S + per_conn_mix
    return grid_runs(name, **overrides) * per_run


# --------------------------------------------------------------------------- loading results

def load_csv(path):
    """A sweep CSV as a DataFrame (error as text, '' for good runs)."""
    import pandas as pd
    df = pd.read_csv(path, keep_default_na=True)
    if "error" not in df.columns:
        df["error"] = ""
    df["error"] = [("" if pd.isna(v) else str(v)) for v in df["error"]]
    return df


def load_results(results_dir):
    """Every result set (<name>.csv with its <name>.json) in results_dir.

    Returns (df, metadata): all rows concatenated with a ``sweep`` column naming their set, and a
    dict name -> metadata (empty dict when the JSON is missing).
    """
    import pandas as pd
    results_dir = Path(results_dir)
    frames, metas = [], {}
    for csv_path in sorted(results_dir.glob("*.csv")):
        df = load_csv(csv_path)
        if not set(CELL) <= set(df.columns):
            continue  # not a sweep
        name = csv_path.stem
        df.insert(0, "sweep", name)
        frames.append(df)
        json_path = csv_path.with_suffix(".json")
        metas[name] = json.loads(json_path.read_text()) if json_path.exists() else {}
    if not frames:
        raise FileNotFoundError(f"no sweep results (*.csv with impl/mode/payload/connections) in {results_dir}")
    return pd.concat(frames, ignore_index=True), metas


def failed_mask(df):
    """True for the runs that failed (a non-empty error text)."""
    import pandas as pd

    if "error" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["error"].map(lambda v: isinstance(v, str) and v != "").astype(bool)


def ok_rows(df):
    """The runs that produced measurements (no error)."""
    return df[~failed_mask(df)]


# --------------------------------------------------------------------------- statistics

def bootstrap_median_ci(values, level=0.95, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Percentile bootstrap CI of the median: (low, high); NaN with fewer than 2 finite values."""
    import numpy as np
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(x, size=(resamples, len(x)), replace=True), axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


def _median(values):
    import numpy as np
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else math.nan


def _most_common(values):
    values = [v for v in values if isinstance(v, str) and v]
    return max(set(values), key=values.count) if values else None


def summarize(df, metrics=METRICS, level=0.95):
    """Median and bootstrap CI of each metric per cell (impl, mode, payload, connections).

    Columns: the cell, n (good runs), n_failed, then <metric>_median, <metric>_ci_low,
    <metric>_ci_high for each metric, bottleneck (the most frequent verdict over the repeats),
    bottleneck_share (how many repeats agreed, 0..1), and the summed mismatches/errors if present.
    """
    import pandas as pd
    out = []
    all_rows = df.copy()
    all_rows["_failed"] = failed_mask(all_rows)
    for key, group in all_rows.groupby(CELL, sort=True):
        good = group[~group["_failed"]]
        rec = dict(zip(CELL, key))
        rec["n"], rec["n_failed"] = len(good), int(group["_failed"].sum())
        for metric in metrics:
            values = good[metric] if metric in good.columns else []
            low, high = bootstrap_median_ci(values, level=level)
            rec[f"{metric}_median"], rec[f"{metric}_ci_low"], rec[f"{metric}_ci_high"] = _median(values), low, high
        if "bottleneck" in good.columns:
            verdicts = list(good["bottleneck"].dropna().astype(str))
            rec["bottleneck"] = _most_common(verdicts)
            rec["bottleneck_share"] = verdicts.count(rec["bottleneck"]) / len(verdicts) if verdicts else math.nan
        for col in ("mismatches", "errors"):
            if col in good.columns:
                rec[col] = pd.to_numeric(good[col], errors="coerce").sum()
        out.append(rec)
    return pd.DataFrame(out)


def ratios(df, metric="msgs_per_s", numerator="uring", denominator="epoll", level=0.95,
           resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """numerator/denominator ratio of the median `metric` per (mode, payload, connections).

    Columns: mode, payload, connections, <numerator>, <denominator> (the medians), n_<numerator>,
    n_<denominator>, ratio, ratio_ci_low, ratio_ci_high (bootstrap: each implementation's repeats
    resampled independently; NaN unless both have >= 2 runs), and for msgs_per_s also
    cpu_ratio, the same ratio of median server CPU per message (< 1: io_uring spends less CPU).
    """
    import numpy as np
    import pandas as pd
    good = ok_rows(df)
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    out = []
    for key, group in good.groupby(["mode", "payload", "connections"], sort=True):
        a = pd.to_numeric(group.loc[group["impl"] == numerator, metric], errors="coerce").to_numpy(float)
        b = pd.to_numeric(group.loc[group["impl"] == denominator, metric], errors="coerce").to_numpy(float)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        rec = dict(zip(["mode", "payload", "connections"], key))
        rec[numerator], rec[denominator] = _median(a), _median(b)
        rec[f"n_{numerator}"], rec[f"n_{denominator}"] = len(a), len(b)
        rec["ratio"] = rec[numerator] / rec[denominator] if rec[denominator] else math.nan
        rec["ratio_ci_low"] = rec["ratio_ci_high"] = math.nan
        if len(a) >= 2 and len(b) >= 2 and np.all(b > 0):
            ma = np.median(rng.choice(a, size=(resamples, len(a))), axis=1)
            mb = np.median(rng.choice(b, size=(resamples, len(b))), axis=1)
            r = ma / mb
            rec["ratio_ci_low"], rec["ratio_ci_high"] = float(np.quantile(r, alpha)), float(np.quantile(r, 1 - alpha))
        if metric == "msgs_per_s" and "server_cpu_us_per_msg" in group.columns:
            ca = _median(pd.to_numeric(group.loc[group["impl"] == numerator, "server_cpu_us_per_msg"], errors="coerce"))
            cb = _median(pd.to_numeric(group.loc[group["impl"] == denominator, "server_cpu_us_per_msg"], errors="coerce"))
            rec["cpu_ratio"] = ca / cb if cb else math.nan
        out.append(rec)
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- paths and CLI glue

def resolve_notebook_path(path):
    """A notebook parameter path, made independent of the kernel's working directory.

    Absolute paths are kept.  Relative ones are taken relative to the repository's notebooks/
    folder -- what JupyterLab uses as the working directory -- so ``"../data"`` is the repository's
    data/ whether the notebook runs in JupyterLab or via ``papermill notebooks/x.ipynb ...`` from the
    repository root.  Without a source checkout (echo_core installed into site-packages) they are
    relative to the current directory.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root = machine.repo_root()
    base = root / "notebooks" if root is not None else Path.cwd()
    return Path(os.path.normpath(base / path))


def _int_list(text):
    import argparse

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _str_list(text):
    return [v.strip() for v in text.split(",") if v.strip()]


def add_sweep_arguments(parser):
    """Add the `sweep` subcommand's options to an argparse parser."""
    parser.add_argument("--grid", choices=sorted(GRIDS), default="quick",
                        help="named grid (default quick: ~2 minutes; seed: the seed study's grid, ~25 minutes)")
    parser.add_argument("--output-dir", default="data", help="where the CSV, JSON and charts go (default data)")
    parser.add_argument("--name", default=None, help="result set name (default sweep-YYYYmmdd-HHMMSS)")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per run (default: the grid's)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per run (default: the grid's)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default: the grid's)")
    parser.add_argument("--impls", type=_str_list, default=None, help="override the grid's implementations, e.g. uring,epoll")
    parser.add_argument("--modes", type=_str_list, default=None, help="override the grid's modes, e.g. rr,stream")
    parser.add_argument("--payloads", type=_int_list, default=None, help="override the grid's payloads (bytes), e.g. 512,4096")
    parser.add_argument("--connections", type=_int_list, default=None, help="override the grid's connection counts, e.g. 1,64")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG charts")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def sweep_command(args):
    """Run `python -m echo_core sweep`: the grid, then CSV + JSON + charts; 0 if no run failed, else 1."""
    overrides = {k: getattr(args, k) for k in ("duration", "warmup", "repeats", "impls", "modes", "payloads",
                                               "connections")}
    runs, eta = grid_runs(args.grid, **overrides), estimate_seconds(args.grid, **overrides)
    about = f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.0f} min"
    print(f"{args.grid} grid: {runs} runs, about {about}", flush=True)
    df = sweep_grid(args.grid, output_dir=args.output_dir, name=args.name, progress=not args.quiet, **overrides)
    meta = df.attrs["metadata"]
    print(f"{meta['rows']} runs in {meta['elapsed_s']:.0f} s")
    print(f"results:  {df.attrs['csv']}")
    print(f"metadata: {df.attrs['json']}")
    if not args.no_plots:
        from echo_core import report

        report.use_headless_backend()
        paths = report.save_charts(df, Path(df.attrs["csv"]).parent, df.attrs["name"])
        for path in paths.values():
            print(f"chart:    {path}")
    table = ratios(df)
    if len(table):
        print("io_uring / epoll (median msgs/s, 95 % CI):")
        for rec in table.itertuples():
            ci = f" [{rec.ratio_ci_low:.2f}, {rec.ratio_ci_high:.2f}]" if rec.ratio_ci_low == rec.ratio_ci_low else ""
            print(f"  {rec.mode:<6} {rec.payload:>7} B  {rec.connections:>6} conns  {rec.ratio:.2f}{ci}")
    if meta["failed_runs"]:
        failed = df[df["error"] != ""]
        print(f"warning: {len(failed)} run(s) failed (see the error column), e.g. {failed['error'].iloc[0]}")
        return 1
    return 0
