"""The ablation study: every io_uring server spec against epoll, per cell, and the best one.

Works on ordinary result rows (one per run) whose ``impl`` holds server specs such as ``uring``,
``uring+mshot`` or ``uring(buf_count=16)``: each spec is paired with the baseline (``epoll``) run of
the same sweep, cell and repeat, exactly like the io_uring / epoll ratios (echo_core.analysis.stats.ratios),
so every ratio here comes from runs made back to back.  Only valid runs count.
"""

import math

from echo_core.analysis import stats
from echo_core.servers import specs
from echo_core.results.resultsets import excluded_note, valid_rows, with_cell_columns
from echo_core.results.schema import BASELINE, COUNTERS, RATIO_CELL, bytes_label

#: The seed's io_uring design: the reference the kernel counters of each variant are compared with.
REFERENCE = "uring"


def spec_ratios(df, baseline=BASELINE, level=0.95):
    """Per cell and spec with at least one pair: echo_core.analysis.stats.spec_ratios (throughput ratio to the
    baseline with its bootstrap CI, server CPU per message ratio, runs behind them)."""
    r = stats.spec_ratios(df, baseline=baseline, level=level)
    return r[r["n_pairs"] > 0].reset_index(drop=True) if "n_pairs" in r else r


def best_per_cell(df, baseline=BASELINE):
    """Per cell, the spec with the highest median throughput ratio to the baseline, beside the seed
    design's ratio: columns RATIO_CELL, best, ratio, ratio_ci_low, ratio_ci_high, cpu_ratio, uring_ratio."""
    import pandas as pd

    r = spec_ratios(df, baseline)
    r = r[r["impl"].map(lambda impl: specs.base_of(impl) == "uring")]  # the best io_uring spec, not epoll's
    rows = []
    for key, group in r.groupby(RATIO_CELL, dropna=False, sort=True):
        group = group.dropna(subset=["ratio"])
        if group.empty:
            continue
        top = group.loc[group["ratio"].idxmax()]
        seed = group[group["impl"] == REFERENCE]
        rows.append({**dict(zip(RATIO_CELL, key)), "best": top["impl"], "ratio": top["ratio"],
                     "ratio_ci_low": top["ratio_ci_low"], "ratio_ci_high": top["ratio_ci_high"],
                     "cpu_ratio": top["cpu_ratio"], "uring_ratio": seed["ratio"].iloc[0] if len(seed) else math.nan})
    return pd.DataFrame(rows, columns=RATIO_CELL + ["best", "ratio", "ratio_ci_low", "ratio_ci_high", "cpu_ratio",
                                              "uring_ratio"])


def fixed_winners(df, baseline=BASELINE):
    """One spec per base, fixed for every cell: the io_uring spec and the epoll spec (the baseline among
    them, at ratio 1) with the highest median over the cells of their paired msgs/s ratio to the
    baseline.  Picking one spec for all cells, not the best per cell, is what a confirmatory run
    re-measures (echo_core.measure.sweep.confirm_sweep).  Returns {"uring": spec, "epoll": spec,
    "scores": {spec: median ratio}, "rule": text}; ValueError when a base has no spec with ratios."""
    r = spec_ratios(df, baseline)
    scores = {impl: float(group["ratio"].median()) for impl, group in r.groupby("impl") if group["ratio"].notna().any()}
    scores[baseline] = 1.0
    out = {"scores": dict(sorted(scores.items(), key=lambda kv: -kv[1])),
           "rule": f"per base, the spec with the highest median over cells of its paired msgs/s ratio to {baseline}"}
    for base in ("uring", "epoll"):
        mine = {impl: s for impl, s in scores.items() if specs.base_of(impl) == base}
        if not mine:
            raise ValueError(f"the results hold no {base} spec with paired ratios to {baseline}")
        out[base] = max(mine, key=mine.get)
    return out


def counter_changes(df, reference=REFERENCE, n=3):
    """Per cell and spec, the n kernel counters (medians over valid runs, per message) that moved most
    against the seed design's, as text like "IPIs sent/msg 0.35 → 0.02"; one row per (cell, spec)."""
    import pandas as pd

    good = with_cell_columns(valid_rows(df))
    columns = [c for c in COUNTERS if c in good.columns]
    if not columns or reference not in set(good["impl"]):
        return pd.DataFrame(columns=RATIO_CELL + ["impl", "changes"])
    medians = good.groupby(RATIO_CELL + ["impl"], dropna=False)[columns].median()
    rows = []
    for key, group in medians.groupby(level=list(range(len(RATIO_CELL))), dropna=False):
        group = group.droplevel(list(range(len(RATIO_CELL))))
        if reference not in group.index:
            continue
        ref = group.loc[reference]
        for spec, values in group.iterrows():
            if spec in (reference, BASELINE):
                continue
            moved = []
            for column in columns:
                a, b = ref[column], values[column]
                if not (math.isfinite(a) and math.isfinite(b)) or max(a, b) < 0.01:
                    continue
                spread = math.inf if min(a, b) <= 0 else max(a, b) / min(a, b)
                moved.append((spread, f"{COUNTERS[column]} {a:.3g} → {b:.3g}"))
            moved.sort(key=lambda m: m[0], reverse=True)
            rows.append({**dict(zip(RATIO_CELL, key)), "impl": spec,
                         "changes": "; ".join(text for spread, text in moved[:n] if spread >= 1.25)})
    return pd.DataFrame(rows, columns=RATIO_CELL + ["impl", "changes"])


def _cell_label(rec):
    return f"{rec['mode']} {bytes_label(rec['payload'])} × {rec['connections']}"


def plot_spec_ratios(df, baseline=BASELINE):
    """One panel per cell: each spec's throughput ratio to the baseline (bar, 95 % CI whisker) and
    its server CPU per message ratio (dot); the line at 1 is the baseline."""
    import matplotlib.pyplot as plt

    r = spec_ratios(df, baseline)
    if r.empty:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.text(0.5, 0.5, "no paired runs of a spec and the baseline", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    r = r.assign(cell=[_cell_label(rec) for rec in r.to_dict("records")])
    cells = list(dict.fromkeys(r.sort_values(["mode", "payload", "connections"])["cell"]))
    specs = stats.numerators(df, baseline)
    cols = min(3, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.38 * len(specs) * rows + 1.6 * rows), squeeze=False,
                             sharey=True)
    for ax, cell in zip(axes.flat, cells):
        part = r[r["cell"] == cell].set_index("impl").reindex(specs)
        y = range(len(specs))
        low = (part["ratio"] - part["ratio_ci_low"]).clip(lower=0).fillna(0)
        high = (part["ratio_ci_high"] - part["ratio"]).clip(lower=0).fillna(0)
        colours = ["#1b9e77" if v < 1 else "#d95f02" for v in part["ratio"].fillna(1)]
        ax.barh(list(y), part["ratio"].fillna(0), xerr=[low, high], color=colours, alpha=0.75, height=0.6,
                label="throughput ratio (95 % CI)")
        ax.plot(part["cpu_ratio"], list(y), "k|", markersize=12, markeredgewidth=2, label="CPU/msg ratio")
        ax.axvline(1.0, color="0.3", lw=1)
        ax.set_yticks(list(y))
        ax.set_yticklabels(specs)
        ax.invert_yaxis()
        ax.set_title(cell, fontsize=10)
        ax.set_xlabel(f"spec / {baseline}")
    for ax in list(axes.flat)[len(cells):]:
        ax.set_axis_off()
    axes.flat[0].legend(loc="lower right", fontsize=8, frameon=False)
    fig.suptitle(f"Each io_uring variant against {baseline}: throughput (bars, > 1 faster) and server CPU per "
                 "message (ticks, < 1 cheaper)", fontsize=12)
    fig.tight_layout()
    fig.text(0.01, 0.0, f"Valid runs only: {excluded_note(df)}.", fontsize=8, color="0.35", ha="left", va="top")
    return fig


def plot_best_heatmap(df, baseline=BASELINE):
    """Payload × connections per mode: the best io_uring spec's throughput ratio to the baseline,
    annotated with the ratio and the spec.  Exploratory: the spec is chosen per cell on the runs the
    ratio comes from (selection on noise favours it), and the chart says so."""
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns
    from matplotlib.colors import LogNorm

    best = best_per_cell(df, baseline)
    best = best[best["mode"].isin(("rr", "stream"))]
    # One heatmap cell per (mode, payload, connections): where the pooled sets hold several clients or
    # works, the client most rows have and no server work (the other clients' ratios are in the table).
    for column, prefer in (("client", None), ("work", "none")):
        if column in best.columns and best[column].nunique() > 1:
            keep = prefer if prefer in set(best[column]) else best[column].value_counts().index[0]
            best = best[best[column] == keep]
    if best.empty:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.text(0.5, 0.5, "no io_uring spec paired with the baseline", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    modes = [m for m in ("stream", "rr") if m in set(best["mode"])]
    spread = math.exp(max(math.log(1.25), float(np.nanmax(np.abs(np.log(best["ratio"]))))))
    norm = LogNorm(vmin=1 / spread, vmax=spread)
    fig, axes = plt.subplots(1, len(modes), squeeze=False,
                             figsize=(max(7.0, 1.5 * best["connections"].nunique() + 2.5) * len(modes),
                                      0.7 * best["payload"].nunique() + 2.4))
    for ax, mode in zip(axes[0], modes):
        part = best[best["mode"] == mode]
        values = part.pivot(index="payload", columns="connections", values="ratio").sort_index(ascending=False)
        names = part.pivot(index="payload", columns="connections", values="best").reindex_like(values)
        labels = values.copy().astype(object)
        for i in values.index:
            for j in values.columns:
                v = values.loc[i, j]
                labels.loc[i, j] = "" if not math.isfinite(v) else f"{v:.2f}\n{names.loc[i, j]}"
        values.index = [bytes_label(p) for p in values.index]
        sns.heatmap(values, ax=ax, annot=labels.values, fmt="", cmap="RdBu_r", norm=norm, linewidths=0.5,
                    annot_kws={"fontsize": 7}, cbar=ax is axes[0][-1],
                    cbar_kws={"label": f"best io_uring / {baseline}"} if ax is axes[0][-1] else None)
        ax.set_title(mode, fontsize=10)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("payload")
        ax.tick_params(axis="y", rotation=0)
    # The winner of each cell is picked on the very runs its ratio comes from: biased upward.  Only a
    # rerun of winners fixed in advance, on fresh runs, confirms one.
    fig.suptitle(f"EXPLORATORY: best io_uring variant vs {baseline}, picked per cell on these runs "
                 "(median of paired per-repeat throughput ratios; biased upward, not a confirmed result)", fontsize=11)
    fig.tight_layout()
    fig.text(0.01, 0.0, f"Valid runs only: {excluded_note(df)}.", fontsize=8, color="0.35", ha="left", va="top")
    return fig
