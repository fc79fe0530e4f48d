"""Statistics over valid runs: medians with bootstrap CIs per cell, paired io_uring/epoll ratios (and,
for server specs, each spec / epoll: spec_ratios), latency-vs-load curves from merged histograms.

* Point estimate: the median of the repeats.  Interval: a percentile bootstrap 95 % CI of the median
  (BOOTSTRAP_RESAMPLES resamples, fixed seed).  With 1 value the CI is NaN; with 2-3 the bootstrap
  interval is simply [min, max], whose true coverage is lower than 95 % (75 % for 3): read it as the
  spread of the repeats.
* Ratios are paired: the sweep runs both implementations of a cell back to back in each repeat, so the
  ratio of a repeat cancels the drift both saw.  The ratio of a cell is the median of its per-repeat
  ratios, its CI the bootstrap of that median.  A repeat counts only if both of its runs are valid.
* Only valid runs (echo_core.results.validity) enter any statistic; every table reports how many were excluded.
"""

import math

from echo_core.results import histogram
from echo_core.servers.specs import base_of
from echo_core.results.schema import BASELINE, CELL, COUNTERS, METRICS, RATIO_CELL

#: How many bootstrap resamples summarize() and ratios() use.
BOOTSTRAP_RESAMPLES = 2000
from echo_core.results.resultsets import by_cell, valid_mask, with_cell_columns

def numerators(df, baseline=BASELINE):
    """The implementations of a result set that have a paired ratio to the baseline: every impl but the
    baseline, "uring" first, then in order of first appearance; none when the baseline is absent."""
    if df.empty or "impl" not in df.columns:
        return []
    impls = list(dict.fromkeys(df["impl"]))
    if baseline not in impls:
        return []
    others = [i for i in impls if i != baseline]
    return sorted(others, key=lambda i: (i != "uring", others.index(i)))
#: Why counters are missing, when a result set's rows carry no counters_note (it predates the counters).
COUNTERS_PREDATE = "its CSV has no counter columns (measured before echo_core recorded them)"
#: Bottleneck verdicts in the order ties are broken (deterministic, most severe first).
VERDICT_ORDER = ("cpus-shared", "both", "server", "client", "none")


def _finite(values):
    import numpy as np

    x = np.asarray(values, dtype=float)
    return x[np.isfinite(x)]


def bootstrap_median_ci(values, level=0.95, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Percentile bootstrap CI of the median: (low, high); NaN with fewer than 2 finite values."""
    import numpy as np

    x = _finite(values)
    if len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(x, size=(resamples, len(x)), replace=True), axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


def median(values):
    import numpy as np

    x = _finite(values)
    return float(np.median(x)) if len(x) else math.nan


def most_common_verdict(values):
    """The most frequent bottleneck verdict; ties go to the first in VERDICT_ORDER (then by name)."""
    values = [v for v in values if isinstance(v, str) and v]
    if not values:
        return None
    rank = {v: i for i, v in enumerate(VERDICT_ORDER)}
    return min(sorted(set(values)), key=lambda v: (-values.count(v), rank.get(v, len(rank))))


def _groups(df, keys):
    return df.groupby(keys, sort=True, dropna=False)


def _cells(df, columns=None):
    """Per cell (CELL): a record with the cell's keys, n (valid runs) and n_excluded, and its valid runs
    (only `columns` of them, when given)."""
    for cell, good, bad in by_cell(df, columns):
        yield {**cell, "n": len(good), "n_excluded": len(bad)}, good


def _key(values):
    """A group key with NaN (offered_rate outside rate mode) as None, so equal keys compare equal."""
    values = values if isinstance(values, tuple) else (values,)
    return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in values)


def summarize(df, metrics=METRICS, level=0.95):
    """Median and bootstrap CI of each metric per cell, over valid runs.

    Columns: the cell (CELL), n (valid runs), n_excluded, then <metric>_median, <metric>_ci_low,
    <metric>_ci_high for each metric, bottleneck (the most frequent verdict, ties broken by
    VERDICT_ORDER) and bottleneck_share (the share of repeats that agree).
    """
    import pandas as pd

    out = []
    for rec, good in _cells(df, list(metrics) + ["bottleneck"]):
        for metric in metrics:
            values = pd.to_numeric(good[metric], errors="coerce") if metric in good.columns else []
            low, high = bootstrap_median_ci(values, level=level)
            rec[f"{metric}_median"], rec[f"{metric}_ci_low"], rec[f"{metric}_ci_high"] = median(values), low, high
        if "bottleneck" in good.columns:
            verdicts = list(good["bottleneck"].dropna().astype(str))
            rec["bottleneck"] = most_common_verdict(verdicts)
            rec["bottleneck_share"] = verdicts.count(rec["bottleneck"]) / len(verdicts) if verdicts else math.nan
        out.append(rec)
    return pd.DataFrame(out)


def cell_medians(df, metrics):
    """Median of each metric per cell over valid runs (no CIs: for wide tables of many metrics).

    Columns: the cell (CELL), n (valid runs), n_excluded, then one column per metric (NaN when the
    column is absent or has no finite value among the cell's valid runs).
    """
    import pandas as pd

    out = []
    for rec, good in _cells(df, metrics):
        for metric in metrics:
            rec[metric] = median(pd.to_numeric(good[metric], errors="coerce")) if metric in good.columns else math.nan
        out.append(rec)
    return pd.DataFrame(out, columns=CELL + ["n", "n_excluded"] + list(metrics))


def counters_recorded(df, counters=COUNTERS):
    """The counter columns with at least one finite value among the valid runs, in `counters` order."""
    import pandas as pd

    good = df[valid_mask(df)]
    return [c for c in counters
            if c in good.columns and _finite(pd.to_numeric(good[c], errors="coerce")).size]


def _commonest_note(notes):
    notes = [str(n) for n in notes if isinstance(n, str) and n.strip()]
    return max(sorted(set(notes)), key=notes.count) if notes else None


def counters_note(df, counters=COUNTERS):
    """One line saying which kernel counters these results lack and why ('' when nothing is missing).

    Per result set (``sweep``): a set whose valid runs have none of the counters is named with its
    commonest ``counters_note`` (or COUNTERS_PREDATE when it has no such column); counters that no set
    recorded while others were are listed with their label.
    """
    if df.empty:
        return ""
    sets = df.groupby("sweep", sort=True) if "sweep" in df.columns else [("this result set", df)]
    lacking = {}
    for name, part in sets:
        if not counters_recorded(part, counters):
            note = _commonest_note(part["counters_note"]) if "counters_note" in part.columns else None
            if note is None and any(c in part.columns for c in counters):
                note = "its counter columns are empty and no counters_note says why"
            lacking.setdefault(note or COUNTERS_PREDATE, []).append(str(name))
    pieces = []
    n_sets = len(sets) if isinstance(sets, list) else sets.ngroups
    for why, names in sorted(lacking.items()):
        where = "this result set" if n_sets == 1 else ("any result set" if len(names) == n_sets else ", ".join(names))
        pieces.append(f"kernel counters not recorded in {where}: {why}")
    recorded = counters_recorded(df, counters)
    if recorded:
        absent = [counters[c] for c in counters if c not in recorded]
        if absent:
            note = _commonest_note(df["counters_note"]) if "counters_note" in df.columns else None
            pieces.append("not recorded: " + ", ".join(absent) + (f" ({note})" if note else ""))
    return "; ".join(pieces)


def paired_ratios(df, metric="msgs_per_s", numerator="uring", denominator="epoll"):
    """Per cell and repeat, numerator/denominator of `metric` from the two valid runs of that repeat.

    Returns a frame with RATIO_CELL, sweep, repeat, ratio (and cpu_ratio when the server's CPU per
    message is known).  Runs are paired within one result set (sweep) and repeat.
    """
    import pandas as pd

    df = with_cell_columns(df)
    data = df[valid_mask(df)]
    data = data[data["impl"].isin([numerator, denominator])]
    keys = RATIO_CELL + ["sweep", "repeat"]
    if "sweep" not in data.columns:
        data = data.assign(sweep="")
    columns = keys + ["ratio", "cpu_ratio"]
    if data.empty:
        return pd.DataFrame(columns=columns)

    def one_run_per_key(impl):
        runs = data[data["impl"] == impl]
        runs = runs[runs.groupby(keys, sort=False, dropna=False)["impl"].transform("size") == 1]
        wanted = [metric] + (["server_cpu_us_per_msg"] if "server_cpu_us_per_msg" in data.columns else [])
        return runs[keys + wanted]

    # A repeat pairs when it has exactly one valid run of each side (merge matches NaN keys too).
    pairs = one_run_per_key(numerator).merge(one_run_per_key(denominator), on=keys, suffixes=("_a", "_b"))
    pairs = pairs.sort_values(keys, na_position="last", kind="stable").reset_index(drop=True)

    def ratio(a, b):
        a, b = pd.to_numeric(a, errors="coerce").astype(float), pd.to_numeric(b, errors="coerce").astype(float)
        return (a / b).where(b > 0, math.nan)

    out = pairs[keys].copy()
    out["ratio"] = ratio(pairs[f"{metric}_a"], pairs[f"{metric}_b"])
    out["cpu_ratio"] = (ratio(pairs["server_cpu_us_per_msg_a"], pairs["server_cpu_us_per_msg_b"])
                        if "server_cpu_us_per_msg_a" in pairs.columns else math.nan)
    return out[columns]


def ratios(df, metric="msgs_per_s", numerator="uring", denominator="epoll", level=0.95):
    """numerator/denominator ratio of `metric` per cell, from paired repeats (see the module docstring).

    Columns: RATIO_CELL, <numerator>, <denominator> (medians over valid runs), n_<numerator>,
    n_<denominator> (valid runs), n_pairs, n_excluded (invalid runs of both), ratio (median of the
    per-repeat ratios), ratio_ci_low, ratio_ci_high (bootstrap of that median; NaN below 2 pairs),
    and cpu_ratio, the median per-repeat ratio of server CPU per message (< 1: numerator cheaper).
    """
    import numpy as np
    import pandas as pd

    df = with_cell_columns(df)
    mine = df["impl"].isin([numerator, denominator])
    data = df.loc[mine, RATIO_CELL + ["impl"]].copy()
    if data.empty:
        return pd.DataFrame()
    data["_valid"] = valid_mask(df)[mine].to_numpy()
    data["_value"] = pd.to_numeric(df.loc[mine, metric], errors="coerce").astype(float).replace([np.inf, -np.inf],
                                                                                              np.nan)
    # One integer id per cell (NaN keys kept, cells in sorted order): every aggregate below groups by it.
    data["_cell"] = data.groupby(RATIO_CELL, sort=True, dropna=False).ngroup()
    ids = data.drop_duplicates("_cell").sort_values("_cell")[RATIO_CELL + ["_cell"]]
    cells = range(len(ids))
    out = ids[RATIO_CELL].reset_index(drop=True)

    good = data[data["_valid"]]
    for impl in (numerator, denominator):
        values = good.loc[good["impl"] == impl, ["_cell", "_value"]].groupby("_cell")["_value"]
        out[impl] = values.median().reindex(cells).to_numpy()
        out[f"n_{impl}"] = values.count().reindex(cells, fill_value=0).to_numpy().astype(int)
    out["n_excluded"] = (~data["_valid"]).groupby(data["_cell"]).sum().reindex(cells, fill_value=0).to_numpy().astype(int)
    pairs = paired_ratios(df, metric, numerator, denominator).merge(ids, on=RATIO_CELL, how="inner")
    for column in ("ratio", "cpu_ratio"):
        pairs[column] = pd.to_numeric(pairs[column], errors="coerce").astype(float).replace([np.inf, -np.inf], np.nan)
    by_pair = pairs.groupby("_cell")["ratio"]
    out["n_pairs"] = by_pair.count().reindex(cells, fill_value=0).to_numpy().astype(int)
    out["ratio"] = by_pair.median().reindex(cells).to_numpy()
    ci = {cell: bootstrap_median_ci(values, level=level) for cell, values in by_pair}
    out["ratio_ci_low"] = [ci.get(cell, (math.nan, math.nan))[0] for cell in cells]
    out["ratio_ci_high"] = [ci.get(cell, (math.nan, math.nan))[1] for cell in cells]
    out["cpu_ratio"] = pairs.groupby("_cell")["cpu_ratio"].median().reindex(cells).to_numpy()
    return out


def spec_ratios(df, metric="msgs_per_s", baseline=BASELINE, level=0.95):
    """ratios() of every implementation against the baseline (epoll), stacked: one row per (impl, cell)
    with columns impl, RATIO_CELL, numerator (its median), baseline (epoll's median), n_pairs,
    n_excluded, ratio, ratio_ci_low, ratio_ci_high, cpu_ratio.  For a result set of uring and epoll
    alone, its single impl's rows are ratios(df)'s."""
    import pandas as pd

    parts = []
    for impl in numerators(df, baseline):
        r = ratios(df, metric=metric, numerator=impl, denominator=baseline, level=level)
        if r.empty:
            continue
        r = r.rename(columns={impl: "numerator", baseline: "baseline", f"n_{impl}": "n_numerator",
                              f"n_{baseline}": "n_baseline"})
        parts.append(r.assign(impl=impl))
    if not parts:
        return pd.DataFrame(columns=["impl"] + RATIO_CELL + ["ratio"])
    out = pd.concat(parts, ignore_index=True)
    return out[["impl"] + [c for c in out.columns if c != "impl"]]


#: Verdicts of a cell over the clients (and works) it was measured with, in the order charts show them.
VERDICTS = ("io_uring better", "no difference", "epoll better", "depends on the client", "depends on the work",
            "not enough runs")


def one_verdict(low, high):
    """One paired ratio's verdict from its CI: better / no difference / worse, or None without a CI."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    if low > 1:
        return "io_uring better"
    if high < 1:
        return "epoll better"
    return "no difference"


def verdicts(df, numerator, denominator, metric="msgs_per_s", level=0.95):
    """Per (mode, payload, connections, offered_rate): how robust the numerator/denominator verdict is.

    For every client design and work the cell was run with, the paired ratio's CI says io_uring better
    (CI above 1), epoll better (below 1) or no difference (CI spans 1).  The cell's verdict is that one
    when all agree, else "depends on the client" (the clients disagree under some work) or "depends on
    the work" (each work has one verdict, but not the same); "not enough runs" when some client or work
    has no CI (fewer than two pairs).  Columns: the cell, verdict, n_variants, the per-variant verdicts
    ("client/work: verdict (ratio [low, high])"), ratio_min and ratio_max over them.
    """
    import pandas as pd

    table = ratios(df, metric=metric, numerator=numerator, denominator=denominator, level=level)
    keys = [c for c in RATIO_CELL if c not in ("client", "work")]
    columns = keys + ["verdict", "n_variants", "variants", "ratio_min", "ratio_max"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    out = []
    for key, group in _groups(table, keys):
        each = {(r["client"], r["work"]): (one_verdict(r["ratio_ci_low"], r["ratio_ci_high"]), r)
                for r in group.to_dict("records")}
        kinds = {v for v, _ in each.values()}
        if None in kinds:
            verdict = "not enough runs"
        elif len(kinds) == 1:
            verdict = kinds.pop()
        else:
            by_work = {}
            for (client, work), (v, _) in each.items():
                by_work.setdefault(work, set()).add(v)
            verdict = ("depends on the client" if any(len(vs) > 1 for vs in by_work.values())
                       else "depends on the work")
        text = "; ".join(f"{c}/{w}: {v or 'no CI'} ({r['ratio']:.2f} [{r['ratio_ci_low']:.2f}, {r['ratio_ci_high']:.2f}])"
                         for (c, w), (v, r) in sorted(each.items()))
        values = [r["ratio"] for _, r in each.values()]
        out.append({**dict(zip(keys, key)), "verdict": verdict, "n_variants": len(each), "variants": text,
                    "ratio_min": min(values), "ratio_max": max(values)})
    return pd.DataFrame(out, columns=columns)


def base_pair(df):
    """(io_uring spec, epoll spec) when the results hold exactly one spec of each base (a confirmatory
    set, echo_core.measure.sweep.confirm_sweep); else ("uring", "epoll") when both are there; else None."""
    impls = sorted(set(df["impl"]))
    by_base = {}
    for impl in impls:
        try:
            by_base.setdefault(base_of(impl), []).append(impl)
        except ValueError:
            continue
    if len(by_base.get("uring", [])) == 1 and len(by_base.get("epoll", [])) == 1:
        return by_base["uring"][0], by_base["epoll"][0]
    if "uring" in impls and "epoll" in impls:
        return "uring", "epoll"
    return None


def ci_halfwidth(rec):
    """Relative half-width of a ratio's CI, e.g. 0.03 for +-3 %; inf when there is no CI yet."""
    low, high, ratio = rec["ratio_ci_low"], rec["ratio_ci_high"], rec["ratio"]
    if not all(math.isfinite(v) for v in (low, high, ratio)) or ratio <= 0:
        return math.inf
    return (high - low) / 2 / ratio


# --------------------------------------------------------------------------- latency vs load

def latency_vs_load(df, quantiles=(0.5, 0.99, 0.999)):
    """Per rate cell: offered and achieved load and latency percentiles from merged histograms.

    Each cell's valid repeats are pooled by merging their latency histograms (the ``latency_hist``
    column), so percentiles describe every request of every repeat; achieved throughput is the
    median over the repeats.  Columns: CELL, n, n_excluded, achieved (msgs/s), achieved_fraction
    (of offered), p50_us, p99_us, p999_us (for the default quantiles), unanswered (summed).
    """
    import pandas as pd

    data = df[df["mode"] == "rate"]
    if data.empty:
        return pd.DataFrame()
    out = []
    for rec, good in _cells(data):
        rec["achieved"] = median(pd.to_numeric(good["msgs_per_s"], errors="coerce"))
        rec["achieved_fraction"] = rec["achieved"] / rec["offered_rate"] if rec["offered_rate"] else math.nan
        # Empty histograms read back from a CSV as NaN.
        hists = [h for h in good.get("latency_hist", []) if isinstance(h, str)]
        merged = histogram.merge(hists) if hists else None
        for q in quantiles:
            name = "p" + f"{q * 100:g}".replace(".", "") + "_us"
            rec[name] = histogram.quantile(merged, q) if merged is not None else math.nan
        rec["unanswered"] = pd.to_numeric(good.get("unanswered", 0), errors="coerce").sum() if len(good) else 0
        out.append(rec)
    return pd.DataFrame(out)


def _hist_array(text):
    import numpy as np

    out = np.zeros(histogram.BUCKETS, dtype=np.int64)
    for index, count in histogram.decode(text).items():
        out[index] = count
    return out


def _quantiles_of(counts, qs, mids):
    """Quantiles (µs) of bucket counts, rows of `counts` one histogram each: ec_hist_quantile's rule
    (the midpoint of the bucket holding the ceil(q * n)-th sample)."""
    import numpy as np

    cum = np.cumsum(counts, axis=-1)
    total = cum[..., -1:]
    out = []
    for q in qs:
        rank = np.maximum(np.ceil(q * total), 1)
        index = (cum < rank).sum(axis=-1)
        out.append(np.where(total[..., 0] > 0, mids[np.minimum(index, len(mids) - 1)] / 1e3, np.nan))
    return out


def latency_percentiles(df, quantiles=(0.5, 0.99, 0.999), level=0.95, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """Latency percentiles per cell with confidence intervals, from the merged histograms.

    Each cell's valid runs (rr, rate) are pooled by merging their histograms (``latency_hist``); the CI
    is a two-level bootstrap: resample the runs (the machine's drift between repeats), then the
    requests of the merged histogram (multinomially: a percentile's own sampling error, which dominates
    the tail).  Columns: CELL, n (runs), samples, then per quantile p<q>_us with _ci_low and _ci_high
    (e.g. p99_us, p99_us_ci_low, p99_us_ci_high); NaN bounds with fewer than 2 runs."""
    import numpy as np
    import pandas as pd

    data = df[df["mode"].isin(("rr", "rate"))]
    names = ["p" + f"{q * 100:g}".replace(".", "") + "_us" for q in quantiles]
    columns = CELL + ["n", "samples"] + [f"{n}{s}" for n in names for s in ("", "_ci_low", "_ci_high")]
    if data.empty or "latency_hist" not in data.columns:
        return pd.DataFrame(columns=columns)
    mids = np.asarray(histogram.midpoints(), dtype=float)
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    out = []
    for rec, good in _cells(data):
        hists = [_hist_array(h) for h in good["latency_hist"] if isinstance(h, str) and h]
        pooled = np.sum(hists, axis=0) if hists else np.zeros(histogram.BUCKETS, dtype=np.int64)
        rec["samples"] = int(pooled.sum())
        point = _quantiles_of(pooled[None, :], quantiles, mids)
        if len(hists) >= 2 and pooled.sum() > 0:
            runs = np.stack(hists)
            picks = rng.integers(0, len(hists), size=(resamples, len(hists)))
            sums = runs[picks].sum(axis=1)
            draws = np.stack([rng.multinomial(int(s.sum()), s / s.sum()) if s.sum() else s for s in sums])
            boots = _quantiles_of(draws, quantiles, mids)
        else:
            boots = [None] * len(quantiles)
        for name, value, boot in zip(names, point, boots):
            rec[name] = float(value[0])
            rec[f"{name}_ci_low"] = float(np.nanquantile(boot, alpha)) if boot is not None else math.nan
            rec[f"{name}_ci_high"] = float(np.nanquantile(boot, 1 - alpha)) if boot is not None else math.nan
        out.append(rec)
    return pd.DataFrame(out).reindex(columns=columns)


#: The knee: the last offered load before p99 exceeds KNEE_FACTOR x its value at the lowest load, or
#: the achieved load falls below KNEE_ACHIEVED of the offered one.
KNEE_FACTOR = 3.0
KNEE_ACHIEVED = 0.9


def knees(curves):
    """Per (impl, payload, connections): the knee of a latency_vs_load() table, or NaN if none seen."""
    import pandas as pd

    out = []
    if curves.empty:
        return pd.DataFrame(columns=["impl", "payload", "connections", "knee_offered", "knee_achieved"])
    for key, group in curves.groupby(["impl", "payload", "connections"], sort=True):
        g = group.sort_values("offered_rate")
        g = g[g["n"] > 0]
        rec = dict(zip(["impl", "payload", "connections"], key))
        rec["knee_offered"] = rec["knee_achieved"] = math.nan
        if len(g):
            base = g["p99_us"].iloc[0]
            bad = (g["p99_us"] > KNEE_FACTOR * base) | (g["achieved_fraction"] < KNEE_ACHIEVED)
            if bad.any() and not bad.iloc[0]:
                before = g[~bad.cummax()].iloc[-1]
                rec["knee_offered"], rec["knee_achieved"] = before["offered_rate"], before["achieved"]
        out.append(rec)
    return pd.DataFrame(out)


def up_to_saturation(curves):
    """The part of each latency_vs_load() curve a chart should draw: offered loads in increasing order
    up to and including the first one the server no longer kept up with (achieved < KNEE_ACHIEVED of
    offered), and none past an offered load without a valid run.  Beyond saturation the achieved
    throughput falls back while queues grow for as long as the window lasts, so those points say more
    about the window's length than about the server.  Returns (kept rows, number of rows left out)."""
    if curves.empty:
        return curves, 0
    keep = []
    for _, group in curves.groupby(["impl", "payload", "connections"], sort=True):
        for index, rec in group.sort_values("offered_rate").iterrows():
            if rec["n"] == 0:
                break
            keep.append(index)
            if rec["achieved_fraction"] < KNEE_ACHIEVED:
                break
    return curves.loc[keep], len(curves) - len(keep)


def hosts_comparison(sets, metric="msgs_per_s", baseline=BASELINE, level=0.95):
    """The same cells measured with the load from different places, side by side.

    sets: {label: result set DataFrame}, e.g. {"1 host": local, "2 hosts (netns)": netns}.  One row per
    (label, impl, cell): label, hosts (the set's), impl, RATIO_CELL, the impl's median `metric` over valid
    runs (numerator), the baseline's (baseline), the paired ratio to the baseline with its CI (ratio,
    ratio_ci_low, ratio_ci_high), cpu_ratio and n_excluded -- spec_ratios of each set, stacked."""
    import pandas as pd

    parts = []
    for label, df in sets.items():
        table = spec_ratios(df, metric=metric, baseline=baseline, level=level)
        hosts = pd.to_numeric(df.get("hosts", pd.Series([1] * len(df))), errors="coerce").fillna(1)
        parts.append(table.assign(label=label, hosts=int(hosts.max()) if len(hosts) else 1))
    if not parts:
        return pd.DataFrame(columns=["label", "hosts", "impl"] + RATIO_CELL + ["ratio"])
    out = pd.concat(parts, ignore_index=True)
    return out[["label", "hosts"] + [c for c in out.columns if c not in ("label", "hosts")]]
