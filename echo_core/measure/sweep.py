"""The sweep runner: run a grid of benchmarks and keep every run as one tidy CSV row, with the machine beside it.

    >>> df = sweep(payloads=(512,), connections=(1, 64), repeats=3, output_dir="data")
    >>> stats.summarize(df)     # median and 95 % CI per cell, over valid runs
    >>> stats.ratios(df)        # paired io_uring / epoll ratio per cell

What a reader of the data can rely on:

* Implementations are server specs (echo_core.servers.specs): the ``impl`` column holds the canonical spec
  ("uring", "epoll", "uring+mshot+bundle", ...).  A cell whose spec this kernel or build cannot run
  is not run: its row says ``error`` "unsupported: <why>", valid False (and counts as skipped, not failed).
* Order.  Repeat-major, implementations back to back within a cell, alternating their order between
  repeats (echo_core.measure.grids.plan): drift hits both implementations alike.
* Durability.  Each row is appended to ``<output_dir>/<name>.csv`` and flushed as soon as it is
  measured.  If a later row brings a column the header lacks, the file is rewritten once, wider.
* Validity.  Every row has ``valid`` and ``invalid_reason`` (echo_core.results.validity): a run that raised
  (its ``error`` text says how), lost or changed bytes, failed connections, never answered requests,
  was interrupted, or whose server and client disagree on the window is kept but marked invalid, and
  no statistic or chart uses it.
* Offered load.  Rate-mode cells run at absolute ``rates`` or at ``load_fractions`` of the cell's
  closed-loop capacity, measured first with one rr run per implementation (the higher median
  throughput of the two, so both implementations get the same offered loads); the rows say both
  (``offered_rate``, ``load_fraction``, ``capacity_msgs_per_s``) and the metadata keeps the capacity runs.
* Adaptive repeats.  With ``target_ci`` (e.g. 0.03 for +-3 %), cells whose paired-ratio CI is wider
  are repeated (both implementations) until it is narrow enough or ``max_repeats`` is reached; the
  metadata records each cell's repeats and achieved CI half-width.
* Metadata.  ``<name>.json`` beside the CSV holds machine_info(), the parameters, start/end times,
  CPU steal during the sweep, counts of failed and invalid runs and the final status.
"""

import csv
import json
import math
import os
import resource
import time
import warnings
from datetime import datetime
from pathlib import Path

from echo_core.load import counters
from echo_core.host import machine
from echo_core.servers import specs
from echo_core.analysis import ablation, stats
from echo_core.results import validity
from echo_core.measure.benchmark import AUTO_WARMUP_MAX_S, run_benchmark
from echo_core.measure.grids import GRIDS, grid_params, offered_loads, plan
from echo_core.load.generator import ARRIVALS, CLIENTS, DEFAULT_CLIENT, MODES
from echo_core.servers.options import parse_work
from echo_core.results.resultsets import HOSTS_TABLE_SUFFIX, load_csv
from echo_core.servers.serve import check_impl, thread_cpus
from echo_core.results import schema
# sweep() takes arguments named cluster and netns: the lab's modules go by other names here.
from echo_core.lab import cluster as lab_cluster
from echo_core.lab import netns as lab_netns

#: Columns the sweep adds to each run_benchmark row, first in the CSV.
SWEEP_COLUMNS = ["sweep", "run_index", "repeat", "started_at", "wall_s"]
#: With several load hosts an adaptive warm-up (warmup_max) becomes a fixed one of at most this long.
FIXED_WARMUP_FOR_HOSTS_S = 2.0


def _tqdm():
    # Without ipywidgets tqdm.auto warns in a notebook and falls back to the text bar: that is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm
    return tqdm


def _positive_numbers(values, what):
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{what} must be positive numbers, got {value!r}")


def _canonical_impls(impls):
    """The canonical specs of impls (exec:CMD unchanged); a spec listed twice (in any spelling) is refused."""
    out = []
    for impl in impls:
        canon = check_impl(impl)
        if canon in out:
            raise ValueError(f"implementation {impl!r} is listed twice (as {canon!r})")
        out.append(canon)
    return out


def _checked_clients(clients):
    out = list(clients or (DEFAULT_CLIENT,))
    for client in out:
        if client not in CLIENTS:
            raise ValueError(f"unknown client {client!r}; choose from {', '.join(CLIENTS)}")
    if len(set(out)) != len(out):
        raise ValueError(f"a client is listed twice in {out}")
    return out


def _checked_works(works):
    out = [parse_work(w)[0] for w in (works or ("none",))]
    if len(set(out)) != len(out):
        raise ValueError(f"a work is listed twice in {out}")
    return out


def _validate(impls, modes, payloads, connections, duration, repeats, warmup, warmup_max, rates,
              load_fractions, arrivals, target_ci, max_repeats, cells=None):
    for impl in impls:
        check_impl(impl)
    if cells is not None:
        for cell in cells:
            if len(cell) != 3:
                raise ValueError(f"a cell is (mode, payload, connections), got {cell!r}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    for value, what in [(p, "payload") for p in payloads] + [(c, "connections") for c in connections]:
        if int(value) != value or value <= 0:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if not impls or not modes or not payloads or not connections:
        raise ValueError("every grid dimension needs at least one value")
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if not duration > 0 or not warmup >= 0:
        raise ValueError("duration must be > 0 and warmup >= 0")
    if warmup_max is not None and not warmup_max >= warmup:
        raise ValueError(f"warmup_max must be >= warmup ({warmup}), got {warmup_max!r}")
    offered_loads(rates, load_fractions)  # refuses rates and load_fractions together
    _positive_numbers(rates or [], "rates")
    _positive_numbers(load_fractions or [], "load_fractions")
    if (rates or load_fractions) and "rate" not in modes:
        raise ValueError("rates and load_fractions need mode 'rate' in modes")
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    if target_ci is not None:
        if not 0 < target_ci < 1:
            raise ValueError(f"target_ci is a relative CI half-width in (0, 1), e.g. 0.03; got {target_ci!r}")
        if len(impls) < 2:
            raise ValueError("target_ci needs two implementations to compare")
    if max_repeats is not None and (int(max_repeats) != max_repeats or max_repeats < repeats):
        raise ValueError(f"max_repeats must be an integer >= repeats ({repeats}), got {max_repeats!r}")


def _now():
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class _CsvAppender:
    """Append dict rows to a CSV, flushing each one; widen the header (rewrite once) on new columns."""

    def __init__(self, path, leading=()):
        self.path = Path(path)
        self.fields = list(leading)
        self.rows = 0

    @classmethod
    def existing(cls, path):
        """Append to a CSV written earlier (a resumed sweep): its header and row count carry on."""
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            count = sum(1 for _ in reader)
        appender = cls(path, header)
        appender.rows = count
        return appender

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


class _Capacity:
    """Closed-loop capacity of (payload, connections) cells, measured once each when first needed."""

    def __init__(self, impls, bench):
        self.impls, self.bench, self.known, self.runs = impls, bench, {}, []

    def __call__(self, payload, connections):
        key = (payload, connections)
        if key not in self.known:
            best = math.nan
            for impl in self.impls:
                rec = {"payload": payload, "connections": connections, "impl": impl}
                why = specs.unsupported_reason(impl)
                if why:
                    self.runs.append({**rec, "msgs_per_s": math.nan, "valid": False,
                                      "invalid_reason": f"unsupported: {why}"})
                    continue
                try:
                    row = self.bench(impl, "rr", payload, connections)
                    rec.update(msgs_per_s=row["msgs_per_s"], valid=row["valid"], invalid_reason=row["invalid_reason"])
                    if row["valid"] and not row["msgs_per_s"] <= best:
                        best = row["msgs_per_s"]
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # noqa: BLE001 - a failed capacity run makes its rate rows fail
                    rec.update(msgs_per_s=math.nan, valid=False, invalid_reason=f"error: {exc}")
                self.runs.append(rec)
            self.known[key] = best
        return self.known[key]


def sweep(impls=("uring", "epoll"), modes=("rr", "stream"), payloads=(4096,), connections=(1, 64),
          duration=2.0, repeats=3, warmup=0.5, warmup_max="auto", rates=None, load_fractions=None,
          arrivals="poisson", target_ci=None, max_repeats=None, output_dir="data", name=None,
          server_options=None, server_cpu=None, client_cpus=None, threads=None, window=0,
          host="127.0.0.1", progress=True, on_error="record", on_row=None, features_file=None, grid=None,
          resume=False, cells=None, server_threads=1, server_cpus=None, load_hosts=None, cluster=None, hosts=None,
          netns=None, allow_remote=False, security=None, allow_plain_tcp=False, clients=None, works=None,
          confirms=None):
    """Run every cell `repeats` times; return the tidy DataFrame (one row per run).

    Writes ``<output_dir>/<name>.csv`` (rows appended as measured) and ``<name>.json`` (machine and
    sweep metadata); ``name`` defaults to ``sweep-YYYYmmdd-HHMMSS``, an existing name is refused.
    Modes: "rr", "stream", "rate" (open loop at ``rates`` requests/s, or at ``load_fractions`` of each
    cell's closed-loop capacity; default echo_core.measure.grids.DEFAULT_LOAD_FRACTIONS; ``arrivals`` poisson
    or uniform).  ``warmup`` is the minimum warm-up and ``warmup_max`` lets the load generator wait
    for a steady state up to that long.  ``target_ci``/``max_repeats``: adaptive repeats (see the module
    docstring).  ``on_row(row)`` is called after each row is written (raise from it to stop);
    ``on_error`` "record" keeps a failed run as a row with an ``error`` text, "raise" stops.
    ``impls`` are server specs (echo_core.servers.specs); ``cells`` (a list of (mode, payload, connections)) runs
    those cells instead of the product of modes, payloads and connections (see echo_core.measure.grids.plan).
    server_cpu, client_cpus, threads (the load generator's), server_threads and server_cpus (the
    server's event loops and their CPUs), window and host go to run_benchmark.  A misspelt keyword is a
    TypeError before any server starts.  ``resume=True`` continues the result set ``name`` (see
    resume_sweep): planned runs it already holds as valid rows are skipped, the rest are appended.

    Load from several hosts (echo_core.lab.cluster): ``cluster`` (a distributed.Client or a scheduler
    address; ``hosts`` workers of it, default all; ``security`` for tls://, ``allow_plain_tcp`` to
    accept a plain-TCP scheduler off loopback), or ``netns=N`` (N namespace hosts on this machine,
    made and removed by this call; needs root), or a ready ``load_hosts``.  Rows then sum the hosts
    (``hosts`` column) and ``<name>-hosts.csv`` holds the per-host figures.  ``allow_remote`` lets the
    load go to a non-loopback ``host`` that is not in a namespace echo_core made.

    ``clients``: load generator designs to run every cell with (echo_core.load.generator.CLIENTS;
    default the first); ``works``: the servers' work per request ("none", "touch", "cpu=NS"; default
    "none").  Both are columns of every row and part of its cell (echo_core.results.schema.CELL).
    ``warmup_max`` "auto": see echo_core.measure.benchmark.run_benchmark.  ``confirms`` (a dict) goes
    into the metadata as is: which result set's winners this one re-measures (see confirm_sweep).
    """
    arguments = dict(locals())  # for the call again once the load hosts are up
    if sum(x is not None for x in (load_hosts, cluster, netns)) > 1:
        raise ValueError("give at most one of load_hosts, cluster and netns")
    fixed_warmup_note = None
    if warmup_max == "auto":
        # Adaptive where the load can be watched for a steady state; hosts share a window fixed in advance.
        warmup_max = None if load_hosts is not None else max(warmup, AUTO_WARMUP_MAX_S)
    if load_hosts is not None and warmup_max is not None:
        # Hosts share one window fixed in advance: the adaptive warm-up becomes a longer fixed one.
        fixed = max(warmup, min(warmup_max, FIXED_WARMUP_FOR_HOSTS_S))
        fixed_warmup_note = (f"several load hosts: warmup_max {warmup_max} s replaced by a fixed {fixed} s "
                             "warm-up (they share one window fixed in advance)")
        warmup, warmup_max = fixed, None
    if on_error not in ("record", "raise"):
        raise ValueError("on_error must be 'record' or 'raise'")
    impls, modes = _canonical_impls(impls), list(modes)
    clients = _checked_clients(clients)
    works = _checked_works(works)
    cells = [(str(m), int(p), int(c)) for m, p, c in cells] if cells is not None else None
    payloads, connections = [int(p) for p in payloads], [int(c) for c in connections]
    rates = list(rates) if rates else None
    load_fractions = list(load_fractions) if load_fractions else None
    _validate(impls, modes, payloads, connections, duration, repeats, warmup, warmup_max, rates,
              load_fractions, arrivals, target_ci, max_repeats, cells)
    server_cpus = list(server_cpus) if server_cpus is not None else None
    thread_cpus(server_threads, None, server_cpus)  # one clear ValueError before anything runs
    if netns is not None or cluster is not None:
        # Bad arguments fail above, before any namespace or dask process exists.
        kwargs = {k: v for k, v in arguments.items()
                  if k not in ("load_hosts", "cluster", "hosts", "netns", "security", "allow_plain_tcp")}
        if netns is not None:
            lab_netns.check_can_create()
            with lab_cluster.netns_hosts(netns) as made:
                return sweep(**kwargs, load_hosts=made)
        connected = lab_cluster.LoadHosts.connect(cluster, hosts, security, allow_plain_tcp)
        try:
            return sweep(**kwargs, load_hosts=connected)
        finally:
            connected.close()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = _previous_rows(output_dir, name) if resume else []
    name = name if resume else _unique_name(output_dir, name)
    csv_path, json_path = output_dir / f"{name}.csv", output_dir / f"{name}.json"
    done = {row_key(row) for row in previous if row["valid"]}
    runs = [run for run in plan(impls, modes, payloads, connections, repeats, rates, load_fractions, cells=cells,
                                clients=clients, works=works)
            if _plan_key(run) not in done]
    if not runs and not previous:
        raise ValueError("nothing to run: no cell of this grid can be run by the chosen client designs "
                         f"({', '.join(clients)}); see echo_core.measure.grids.client_runs")
    params = {"grid": grid, "impls": impls, "modes": modes, "payloads": payloads, "connections": connections,
              "duration": duration, "warmup": warmup, "warmup_max": warmup_max, "repeats": repeats,
              "rates": rates, "load_fractions": load_fractions if "rate" in modes and not rates else None,
              "arrivals": arrivals, "target_ci": target_ci, "max_repeats": max_repeats,
              "cells": cells, "clients": clients, "works": works, "server_options": server_options or {}, "server_cpu": server_cpu, "client_cpus": client_cpus,
              "threads": threads, "server_threads": server_threads, "server_cpus": server_cpus,
              "window": window, "host": host, "on_error": on_error, "allow_remote": allow_remote,
              "order": "repeat-major; impls alternate order between repeats", "runs_planned": len(runs),
              "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE))}
    meta = {"name": name, "csv": csv_path.name, "status": "running", "started_at": _now(),
            "finished_at": None, "elapsed_s": None, "rows": 0, "failed_runs": 0, "invalid_runs": 0,
            "parameters": params, "machine": machine.machine_info(features_file)}
    # What each spec meant on this machine: its server options and, if it could not run here, why.
    meta["specs"] = specs.describe(impls)
    meta["confirms"] = confirms
    # Where the load came from: the hosts, their namespaces and how long setting them up took.
    meta["load_hosts"] = load_hosts.describe() if load_hosts is not None else None
    if fixed_warmup_note:
        meta["load_hosts"]["warmup_note"] = fixed_warmup_note
    # Why a set's kernel-counter columns are NaN, if they are (each row's counters_note says it too).
    meta["counters"] = counters.availability()
    if resume:
        # The set keeps its first start and machine; each resumption is recorded beside them.
        earlier = json.loads(json_path.read_text()) if json_path.exists() else {}
        resumed = earlier.get("resumed", []) + [{"at": meta["started_at"], "runs_skipped": len(done),
                                                 "runs_planned": len(runs), "machine": meta["machine"]}]
        meta.update({k: earlier[k] for k in ("started_at", "machine") if k in earlier}, resumed=resumed)
    _write_json(json_path, meta)

    def bench(impl, mode, payload, conns, rate=None, client=clients[0], work=works[0]):
        return run_benchmark(impl, mode, payload, conns, duration=duration, warmup=warmup, warmup_max=warmup_max,
                             rate=rate, arrivals=arrivals, server_cpu=server_cpu, client_cpus=client_cpus,
                             threads=threads, host=host, window=window, server_options=server_options,
                             server_threads=server_threads, server_cpus=server_cpus,
                             load_hosts=load_hosts, allow_remote=allow_remote, client=client, work=work)

    capacity = _Capacity(impls, bench)
    # Offered loads of a resumed set stay what they were: reuse the capacities its rows were scaled by.
    for row in previous:
        if row.get("capacity_msgs_per_s", math.nan) > 0:
            capacity.known[(int(row["payload"]), int(row["connections"]))] = row["capacity_msgs_per_s"]
    cpu_before, t0 = machine.cpu_times_total(), time.monotonic()
    writer = _CsvAppender.existing(csv_path) if previous else _CsvAppender(csv_path, leading=SWEEP_COLUMNS + schema.CELL)
    rows = list(previous)
    bar = _tqdm()(total=len(runs), desc=name, unit="run", disable=not progress, dynamic_ncols=True)
    hosts_writer = [None]  # the side table, opened with the first multi-host row

    def run_all(batch):
        for run in batch:
            bar.set_postfix_str(f"{run['mode']} {run['payload']}B x{run['connections']} {run['impl']} "
                                f"{run['client']} {run['work']}", refresh=False)
            row = _run_one(run, bench, capacity, on_error)
            row = {"sweep": name, "run_index": len(rows), **row}
            host_rows = row.pop("host_rows", None)
            if host_rows:
                if hosts_writer[0] is None:
                    hosts_writer[0] = _hosts_appender(output_dir / f"{name}{HOSTS_TABLE_SUFFIX}.csv")
                for host_row in host_rows:
                    hosts_writer[0].write({"sweep": name, "run_index": row["run_index"], "impl": row["impl"],
                                           "mode": row["mode"], "payload": row["payload"],
                                           "connections_total": row["connections"], "repeat": row["repeat"],
                                           **host_row})
            writer.write(row)
            rows.append(row)
            bar.update(1)
            if on_row is not None:
                on_row(row)

    try:
        with counters.tracepoints_held():  # each run's perf events then close at once
            run_all(runs)
            if target_ci is not None:
                meta["adaptive"] = _adaptive_repeats(rows, impls, modes, payloads, connections, repeats, rates,
                                                     load_fractions, target_ci, max_repeats or repeats, bar,
                                                     run_all, capacity, cells, clients, works)
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
                    failed_runs=sum(bool(r["error"]) for r in rows), invalid_runs=sum(not r["valid"] for r in rows),
                    capacity_runs=capacity.runs,
                    cpu_steal_fraction=machine.steal_fraction(cpu_before, machine.cpu_times_total()))
        _write_json(json_path, meta)
    df = load_csv(csv_path)
    df.attrs.update(name=name, csv=str(csv_path), json=str(json_path), metadata=meta)
    return df


def _hosts_appender(path):
    """The per-host side table of a multi-host sweep (appended to when resumed)."""
    return _CsvAppender.existing(path) if path.exists() else _CsvAppender(path, leading=["sweep", "run_index"])


def _previous_rows(output_dir, name):
    """The rows of the result set a resumed sweep continues, as dicts."""
    if not name:
        raise ValueError("resume needs the name of the result set to continue")
    path = output_dir / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume {name!r}: {path} does not exist")
    return load_csv(path).to_dict("records")


def _plan_key(run):
    return (run["impl"], run["client"], run["work"], run["mode"], int(run["payload"]), int(run["connections"]),
            run["load"], int(run["repeat"]))


def row_key(row):
    """The _plan_key of the planned run a row recorded."""
    load = None
    if row["mode"] == "rate":
        fraction = row.get("load_fraction", math.nan)
        load = ("fraction", float(fraction)) if fraction == fraction else ("rate", float(row["offered_rate"]))
    return (row["impl"], row.get("client") or schema.CELL_DEFAULTS["client"],
            row.get("work") or schema.CELL_DEFAULTS["work"], row["mode"], int(row["payload"]),
            int(row["connections"]), load, int(row["repeat"]))


#: The sweep() parameters a result set's metadata records and resume_sweep() passes back.
RESUMABLE = ("impls", "modes", "payloads", "connections", "duration", "warmup", "warmup_max", "repeats", "rates",
             "load_fractions", "arrivals", "target_ci", "max_repeats", "server_options", "server_cpu",
             "client_cpus", "threads", "window", "host", "on_error", "grid", "cells", "server_threads",
             "server_cpus", "clients", "works")


def resume_sweep(name, output_dir="data", progress=True, on_row=None):
    """Continue an interrupted sweep into the same result set with the parameters it recorded:
    runs already recorded valid are skipped; failed, invalid and missing ones run (again)."""
    json_path = Path(output_dir) / f"{name}.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"cannot resume {name!r}: {json_path} does not exist")
    meta = json.loads(json_path.read_text())
    if meta.get("load_hosts"):
        # Its hosts (namespaces, workers) are gone; rows from other hosts would not be comparable.
        raise ValueError(f"cannot resume {name!r}: its load came from several hosts; run it again")
    params = meta.get("parameters", {})
    return sweep(output_dir=output_dir, name=name, resume=True, progress=progress, on_row=on_row,
                 confirms=meta.get("confirms"), **{k: params[k] for k in RESUMABLE if k in params})


def _offered(run, capacity):
    """The absolute offered rate (requests/s) of a rate-mode run; NaN without a capacity to scale."""
    kind, value = run["load"]
    if kind == "rate":
        return value
    cap = capacity(run["payload"], run["connections"])
    return round(value * cap, 1) if cap > 0 else math.nan


class _Unsupported(Exception):
    """A planned run whose spec this machine cannot run (its text is the reason)."""


def _run_one(run, bench, capacity, on_error):
    """One planned run -> one row (measured, or with an error text)."""
    row = {"repeat": run["repeat"], "started_at": _now()}
    t_run = time.monotonic()
    offered, fraction, cap = math.nan, math.nan, math.nan
    try:
        why = specs.unsupported_reason(run["impl"])
        if why:
            raise _Unsupported(why)
        if run["load"] is not None:
            offered = _offered(run, capacity)
            if run["load"][0] == "fraction":
                fraction, cap = run["load"][1], capacity(run["payload"], run["connections"])
                if not offered > 0:
                    raise RuntimeError("no valid closed-loop capacity run to scale the offered load from")
        result = bench(run["impl"], run["mode"], run["payload"], run["connections"],
                       rate=offered if run["load"] is not None else None, client=run["client"], work=run["work"])
        error = ""
    except (KeyboardInterrupt, SystemExit):
        raise
    except _Unsupported as exc:  # skipped, not failed: recorded whatever on_error says
        result, error = {}, f"unsupported: {exc}"
    except Exception as exc:  # noqa: BLE001 - recorded in the row, see the module docstring
        if on_error == "raise":
            raise
        result = {}
        error = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:2000]
    row["wall_s"] = round(time.monotonic() - t_run, 4)
    row.update({"impl": run["impl"], "client": run["client"], "work": run["work"], "mode": run["mode"],
                "payload": run["payload"],
                "connections": run["connections"], "offered_rate": offered, "load_fraction": fraction,
                "capacity_msgs_per_s": cap})
    row.update({k: v for k, v in result.items() if k not in row})
    row["error"] = error
    row["valid"], row["invalid_reason"] = validity.assess(row)
    # Keep error last in the CSV header: it is the column a reader scans for.
    row["error"] = row.pop("error")
    return row


def _adaptive_repeats(rows, impls, modes, payloads, connections, repeats, rates, load_fractions, target_ci,
                      max_repeats, bar, run_all, capacity, cells=None, clients=(DEFAULT_CLIENT,), works=("none",)):
    """Repeat cells whose paired-ratio CI is wider than target_ci, up to max_repeats; return a summary.

    Two implementations: the first over the second, as always.  More, with epoll among them: each spec
    this machine can run over epoll (stats.spec_ratios), and a cell repeats while any of them is wide."""
    import pandas as pd

    many = len(impls) > 2 and schema.BASELINE in impls
    numerator, denominator = ("each spec", schema.BASELINE) if many else (impls[0], impls[1])
    runnable = [i for i in impls if not specs.unsupported_reason(i)]
    done = repeats
    while True:
        if many:
            df = pd.DataFrame(rows)
            table = stats.spec_ratios(df[df["impl"].isin(runnable)])
        else:
            table = stats.ratios(pd.DataFrame(rows), numerator=numerator, denominator=denominator)
        wide = [rec for rec in table.to_dict("records") if stats.ci_halfwidth(rec) > target_ci]
        if not wide or done >= max_repeats:
            break
        more = [run for run in plan(impls, modes, payloads, connections, 1, rates, load_fractions, first_repeat=done,
                                    cells=cells, clients=clients, works=works)
                if any(_same_cell(run, rec, capacity) for rec in wide)]
        bar.total += len(more)
        run_all(more)
        done += 1
    summary = [{**({"impl": rec["impl"]} if many else {}), **{k: rec[k] for k in ("mode", "payload", "connections")},
                "offered_rate": None if math.isnan(rec["offered_rate"]) else rec["offered_rate"],
                "pairs": int(rec["n_pairs"]), "ci_halfwidth": stats.ci_halfwidth(rec),
                "met": stats.ci_halfwidth(rec) <= target_ci} for rec in table.to_dict("records")]
    return {"target_ci": target_ci, "max_repeats": max_repeats, "repeats_run": done, "numerator": numerator,
            "denominator": denominator, "cells": summary}


def _same_cell(run, rec, capacity):
    keys = ("client", "work", "mode", "payload", "connections")
    if tuple(run[k] for k in keys) != tuple(rec[k] for k in keys):
        return False
    return run["load"] is None or _offered(run, capacity) == rec["offered_rate"]


def confirm_sweep(name, output_dir="data", impls=None, repeats=3, clients=None, works=None, confirm_name=None,
                  progress=True, **kwargs):
    """Re-measure the winners of result set ``name`` on fresh runs: the confirmatory half of a study.

    The winners are fixed before anything runs: one io_uring spec and one epoll spec for every cell
    (echo_core.analysis.ablation.fixed_winners: the best median ratio to epoll over the set's cells),
    or ``impls`` = (io_uring spec, epoll spec) given in advance.  Every closed-loop cell of the set runs
    ``repeats`` more times with each of ``clients`` and ``works`` into a new result set
    (``confirm_name``, default "<name>-confirm-<time>") whose metadata links back (``confirms``: the set,
    the rule, the scores the choice was made on).  Its ratios -- not the set's own best-per-cell ones,
    which were picked on the runs they come from -- are the ones to report.  Other keyword arguments
    go to sweep() (duration, warmup, ... default the set's)."""
    output_dir = Path(output_dir)
    csv_path, json_path = output_dir / f"{name}.csv", output_dir / f"{name}.json"
    if not csv_path.is_file():
        raise FileNotFoundError(f"cannot confirm {name!r}: {csv_path} does not exist")
    df = load_csv(csv_path)
    meta = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if impls is None:
        chosen = ablation.fixed_winners(df)
        impls = [chosen["uring"], chosen["epoll"]]
        how = {"rule": chosen["rule"], "scores": chosen["scores"]}
    else:
        impls = _canonical_impls(impls)
        bases = sorted(specs.base_of(i) for i in impls)
        if bases != ["epoll", "uring"]:
            raise ValueError(f"confirm takes one io_uring spec and one epoll spec, got {impls}")
        how = {"rule": "given in advance"}
    closed = df[df["mode"].isin(("rr", "stream"))]
    cells = sorted({(m, int(p), int(c)) for m, p, c in zip(closed["mode"], closed["payload"], closed["connections"])})
    if not cells:
        raise ValueError(f"{name!r} has no closed-loop (rr, stream) cells to confirm")
    params = meta.get("parameters", {})
    defaults = {k: params[k] for k in ("duration", "warmup", "warmup_max", "server_cpu", "client_cpus", "threads")
                if params.get(k) is not None}
    confirm_name = confirm_name or f"{name}-confirm-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return sweep(impls=impls, cells=cells, modes=sorted({c[0] for c in cells}),
                 payloads=sorted({c[1] for c in cells}), connections=sorted({c[2] for c in cells}),
                 repeats=repeats, clients=clients, works=works, output_dir=output_dir, name=confirm_name,
                 progress=progress, confirms={"set": name, "impls": impls, **how},
                 **{**defaults, **kwargs})


def sweep_grid(name, /, output_dir="data", **overrides):
    """Run a named grid from GRIDS; keyword arguments override the grid's values or add sweep() options
    (``name=`` among them is the result set's name; None values mean "the grid's default")."""
    return sweep(output_dir=output_dir, grid=name, **grid_params(name, **overrides))


__all__ = ["GRIDS", "confirm_sweep", "resume_sweep", "sweep", "sweep_grid"]
