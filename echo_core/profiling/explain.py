"""Why one implementation needs more CPU than another in one cell, in words and tables.

An explained cell is a CPU profile (echo_core.profiling.profile) whose runs are ordinary benchmark runs, so
every run also carries the per-message kernel counters (echo_core.load.counters): the profile says in
which functions and subsystems the CPU goes, the counters say how often the kernel did what (poll
arms, task work, context switches, completions per wait, bytes per recv).  This module joins the
two for notebooks/explain.ipynb and the report's explain section; it measures nothing itself
beyond calling profile_cell.
"""

import math
from pathlib import Path

from echo_core.profiling import profile as profiling
from echo_core.results.schema import FIGURES, OUTCOMES, impl_label

#: A counter difference is worth a sentence when one side does this much per message (the other
#: may do none) -- below it, a few events over a whole window.
MIN_PER_MSG = 0.01


def explain_cell(mode, payload, connections, impls=("uring", "epoll"), duration=2.0, repeats=3, output_dir=None,
                 **options):
    """Profile one cell for each implementation (interleaved repeats) and return the Profile; its
    runs' rows carry the kernel counters.  Options go to echo_core.profiling.profile.profile_cell."""
    return profiling.profile_cell(list(impls), mode, payload, connections, duration=duration, repeats=repeats,
                                  output_dir=output_dir, **options)


def run_rows(profile):
    """Every run of an explained cell as a DataFrame (one bench row per run, ``impl`` column)."""
    import pandas as pd

    rows = [run["row"] for info in profile.meta["impls"].values() for run in info.get("runs", []) if run.get("row")]
    return pd.DataFrame(rows)


def counter_table(profile):
    """Median of every figure over each implementation's valid runs: one row per figure (label),
    one column per implementation, plus ``ratio`` (first implementation / second) when there are two."""
    import pandas as pd

    rows = run_rows(profile)
    impls = profile.impls
    if rows.empty:
        return pd.DataFrame(columns=impls)
    valid = rows[rows["valid"].astype(bool)] if "valid" in rows else rows
    table = {}
    for impl in impls:
        mine = valid[valid["impl"] == impl]
        table[impl] = {label: pd.to_numeric(mine[col], errors="coerce").median() if col in mine and len(mine)
                       else math.nan for col, label in FIGURES.items()}
    out = pd.DataFrame(table)
    out.index.name = "figure"
    if len(impls) >= 2:
        a, b = impls[:2]
        out["ratio"] = [x / y if y and math.isfinite(x) and math.isfinite(y) else math.nan
                        for x, y in zip(out[a], out[b])]
    return out.dropna(how="all", subset=impls)


def excluded_runs(profile):
    """'' when every run of the cell is valid, else which were excluded and why."""
    bad = [f"{impl_label(impl)}: {info['invalid_reason']}" for impl, info in profile.meta["impls"].items()
           if not info.get("valid", True)]
    return "; ".join(bad)


def counters_note(profile):
    """Why some kernel counters are missing in this cell's runs ('' when all were counted)."""
    rows = run_rows(profile)
    if "counters_note" not in rows:
        return "the runs predate the kernel counters"
    notes = sorted({str(n) for n in rows["counters_note"].dropna() if str(n)})
    return "; ".join(notes)


def headline(profile):
    """One sentence: the cell, throughput ratio, CPU per message ratio and who was saturated."""
    cell, impls = profile.meta["cell"], profile.impls
    what = f"{cell['mode']} {cell['payload']:,} B × {cell['connections']:,} connections"
    # profile.json stores NaN as null: an implementation without a valid run has no figures.
    info = {impl: {k: (math.nan if v is None else v) for k, v in fig.items()}
            for impl, fig in profile.meta["impls"].items()}
    missing = [i for i in impls if not math.isfinite(info[i].get("msgs_per_s", math.nan))]
    if missing:
        why = "; ".join(f"{impl_label(i)}: {info[i].get('invalid_reason') or 'no run'}" for i in missing)
        return f"{what}: no valid run to explain for {', '.join(map(impl_label, missing))} ({why})."
    if len(impls) < 2:
        one = info[impls[0]]
        return f"{what}: {impl_label(impls[0])} echoed {one['msgs_per_s']:,.0f} msgs/s at {one['server_cpu_us_per_msg']:.2f} µs of server CPU per message."
    a, b = impls[:2]
    fa, fb = info[a], info[b]
    thr = fa["msgs_per_s"] / fb["msgs_per_s"] if fb["msgs_per_s"] else math.nan
    cpu = (fa["server_cpu_us_per_msg"] / fb["server_cpu_us_per_msg"]
           if fb.get("server_cpu_us_per_msg") else math.nan)
    label = FIGURES["server_util"]
    table = counter_table(profile)
    utils = [f"{impl_label(i)} {table.loc[label, i]:.2f}" for i in (a, b)
             if label in table.index and math.isfinite(table.loc[label, i])]
    util = f"; {label} " + ", ".join(utils) if utils else ""
    return (f"{what}: {impl_label(a)} echoed {thr:.2f}× {impl_label(b)}'s messages per second ({fa['msgs_per_s']:,.0f} against "
            f"{fb['msgs_per_s']:,.0f}) and spent {cpu:.2f}× its server CPU per message ({fa['server_cpu_us_per_msg']:.2f} "
            f"against {fb['server_cpu_us_per_msg']:.2f} µs; {fa.get('repeats', 1)} runs each, totals over the same "
            f"interleaved runs){util}.")


def category_sentences(profile, n=3):
    """The n subsystems whose CPU per message differs most between the first two implementations."""
    cats, impls = profile.categories, profile.impls
    if cats is None or len(impls) < 2 or not len(cats):
        return []
    a, b = impls[:2]
    wide = cats.pivot_table(index="category", columns="impl", values="us_per_msg", aggfunc="sum").fillna(0.0)
    if a not in wide or b not in wide:
        return []
    wide["difference"] = wide[a] - wide[b]
    wide = wide.reindex(wide["difference"].abs().sort_values(ascending=False).index).head(n)
    out = []
    for category, rec in wide.iterrows():
        more, less = (a, b) if rec["difference"] >= 0 else (b, a)
        times = f", {rec[more] / rec[less]:.1f}×" if rec[less] > 0 else ""
        out.append(f"{category}: {impl_label(more)} {rec[more]:.2f} µs/msg against {impl_label(less)}'s {rec[less]:.2f} "
                   f"({abs(rec['difference']):+.2f}{times})")
    return out


def counter_sentences(profile, n=4):
    """The n kernel counters (per message) that differ most between the first two implementations,
    by ratio.  Counters both sides have come first: one only one side has (io_uring's submissions,
    epoll's recv system calls) is the design, not a finding, and is listed only if room is left."""
    table, impls = counter_table(profile), profile.impls
    if len(impls) < 2 or table.empty:
        return []
    a, b = impls[:2]
    outcome_labels = {FIGURES[c] for c in OUTCOMES}
    scored = []
    for label, rec in table.iterrows():
        x, y = rec[a], rec[b]
        if label in outcome_labels or not (math.isfinite(x) and math.isfinite(y)) or max(x, y) < MIN_PER_MSG:
            continue
        spread = math.inf if min(x, y) <= 0 else max(x, y) / min(x, y)
        scored.append((spread, label, x, y))
    scored.sort(key=lambda s: (math.isfinite(s[0]), s[0]), reverse=True)
    out = []
    for spread, label, x, y in scored[:n]:
        times = "" if math.isinf(spread) else f" ({x / y:.2f}×)"
        out.append(f"{label}: {impl_label(a)} {x:.3g}, {impl_label(b)} {y:.3g}{times}")
    return out


def explanation(profile, n=3):
    """The explanation in words (markdown lines): headline, top function differences, subsystems,
    kernel counters, and what was excluded or could not be counted."""
    lines = [headline(profile)]
    functions = profiling.difference_sentences(profile, n=n)
    if functions:
        lines.append(f"**Top {len(functions)} differences in self CPU per message** (profile scaled to the measured "
                     "server CPU):")
        lines += [f"1. {s}" for s in functions]
    categories = category_sentences(profile, n=n)
    if categories:
        lines.append("**By subsystem:** " + "; ".join(categories) + ".")
    counters = counter_sentences(profile, n=n + 1)
    if counters:
        lines.append("**Kernel counters per message that differ most:** " + "; ".join(counters) + ".")
    note = counters_note(profile)
    if note:
        lines.append(f"_Not counted: {note}._")
    excluded = excluded_runs(profile)
    if excluded:
        lines.append(f"_Runs excluded as invalid (no samples, counters or CPU of theirs above): {excluded}._")
    return lines


def saved_profiles(profiles_dir):
    """Every profile saved under profiles_dir (one per sub-directory with a profile.json), by name."""
    root = Path(profiles_dir)
    if not root.is_dir():
        return {}
    return {path.parent.name: profiling.load_profile(path.parent)
            for path in sorted(root.glob(f"*/{profiling.PROFILE_JSON}"))}


def gap(profile):
    """How far apart the first two implementations are in this cell: the larger of |log| of the
    throughput ratio and of the CPU-per-message ratio (0 when it cannot be told)."""
    impls = profile.impls
    if len(impls) < 2:
        return 0.0
    fa, fb = (profile.meta["impls"][i] for i in impls[:2])
    logs = []
    for key in ("msgs_per_s", "server_cpu_us_per_msg"):
        x, y = fa.get(key), fb.get(key)
        if x and y and x > 0 and y > 0:
            logs.append(abs(math.log(x / y)))
    return max(logs, default=0.0)


def largest_gaps(profiles, n=3):
    """The n saved profiles (name -> Profile) whose implementations are furthest apart, largest first."""
    ranked = sorted(profiles.items(), key=lambda item: gap(item[1]), reverse=True)
    return dict(ranked[:n])
