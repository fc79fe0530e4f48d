"""Charts and tables of sweep results: one way to draw each, shared by the CLI and the notebooks.

Every plot_* function takes a sweep DataFrame (one row per run, as written by echo_core.measure.sweep) and
returns a matplotlib Figure drawn from its valid runs only; draw() writes under every chart how many
runs were excluded and why.  Bands are the bootstrap 95 % CI of the median over the repeats, the
statistic echo_core.analysis.stats.summarize() reports; ratio error bars are the CI of the paired ratio.

    >>> figs = save_charts(df, "data", "sweep-20250101-120000")   # PNGs beside the CSV
"""

import math
import os
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from echo_core.host.machine import comparable_facts
from echo_core.results.resultsets import (excluded_counts, excluded_note, pooling_differences, valid_rows,
                                         with_cell_columns)
from echo_core.results.schema import CELL_DEFAULTS, COUNTERS, IMPL_LABELS, MODE_LABELS, bytes_label
from echo_core.analysis.stats import (VERDICTS, base_pair, bootstrap_median_ci, cell_medians, counters_note, counters_recorded, knees,
                                      latency_percentiles, latency_vs_load, ratios, spec_ratios, summarize,
                                      up_to_saturation, verdicts)
from echo_core.servers.specs import CATALOGUE

#: Chart name -> function, in the order save_charts() draws them.
CHART_NAMES = ("verdict", "throughput", "latency", "server-cpu", "ratio", "ratio-heatmap", "latency-load", "counters")
#: Modes drawn against the number of connections (rate mode has its own chart, latency vs load).
CLOSED_MODES = ("rr", "stream")
#: Colours per implementation (same in every chart).  Other specs: impl_palette().
PALETTE = {"io_uring": "#d95f02", "epoll": "#1b9e77"}
#: Colours of the other io_uring specs: warm hues related to io_uring's orange, assigned by the spec's
#: place in echo_core.servers.specs.CATALOGUE so a spec keeps its colour in every chart.
URING_VARIANT_COLORS = ("#e6ab02", "#a6761d", "#e7298a", "#7570b3", "#b2182b", "#f4a582", "#8c510a",
                        "#c51b7d", "#f46d43", "#762a83", "#fdb863", "#d6604d", "#9e0142", "#fee08b", "#bf812d",
                        "#8073ac", "#dfc27d", "#fc8d59", "#b35806", "#ffd92f", "#d73027", "#fdae61")
#: Other epoll specs (tunables) in greens; external servers (exec:CMD) in greys and blues.
EPOLL_VARIANT_COLORS = ("#66a61e", "#1a9850", "#a6d96a", "#006837")
OTHER_COLORS = ("#666666", "#4393c3", "#999999", "#2166ac")


def _stable_index(label, catalogue):
    if label in catalogue:
        return catalogue.index(label)
    return sum(label.encode()) + len(catalogue)


def impl_order(labels):
    """Legend order of implementation labels: io_uring, epoll, then the specs in catalogue order, then the rest."""

    labels = list(dict.fromkeys(labels))
    return sorted(labels, key=lambda l: (list(PALETTE).index(l) if l in PALETTE else len(PALETTE),
                                         _stable_index(l, list(CATALOGUE)), l))


def impl_palette(labels):
    """label -> colour for every implementation label: PALETTE's two, io_uring specs in related warm
    hues, epoll specs in greens, external servers in greys and blues; stable across charts."""

    out = {}
    for label in impl_order(labels):
        if label in PALETTE:
            out[label] = PALETTE[label]
            continue
        family = "uring" if label.startswith("uring") else "epoll" if label.startswith("epoll") else None
        # Indexed within its own family of the catalogue (the bases have PALETTE's colours), so that the
        # catalogue's io_uring variants get distinct colours however many epoll specs it lists.
        i = _stable_index(label, [c for c in CATALOGUE if family and c.startswith(family) and c != family])
        colors = (URING_VARIANT_COLORS if family == "uring" else
                  EPOLL_VARIANT_COLORS if family == "epoll" else OTHER_COLORS)
        out[label] = colors[i % len(colors)]
    return out
HEATMAP_TITLE = "io_uring / epoll throughput ratio"


def in_notebook():
    """True inside a Jupyter (ipykernel) kernel."""
    ipython = sys.modules.get("IPython")
    try:
        return bool(ipython and ipython.get_ipython() and "IPKernelApp" in ipython.get_ipython().config)
    except Exception:  # noqa: BLE001
        return False


def use_headless_backend():
    """Switch matplotlib to Agg unless running in a notebook (or MPLBACKEND says otherwise)."""
    if not in_notebook() and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _sns():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return sns


def one_variant(df):
    """The rows of one client design and one server work, for the charts that draw one of each: the
    default client (echo_core.results.schema.CELL_DEFAULTS) and no work where the set has them, else
    the first.  The verdict chart shows all of them."""
    for column, default in CELL_DEFAULTS.items():
        if column in df.columns and df[column].nunique() > 1:
            keep = default if default in set(df[column]) else sorted(set(df[column]))[0]
            df = df[df[column] == keep]
    return df


def _variant_note(df):
    """' (client epoll-lt, work touch)' when the set has other clients or works than the ones drawn."""
    shown = one_variant(df)
    parts = [f"{c} {shown[c].iloc[0]}" for c in CELL_DEFAULTS
             if c in df.columns and df[c].nunique() > 1 and len(shown)]
    return f" ({', '.join(parts)})" if parts else ""


def _prepare(df):
    data = valid_rows(one_variant(df)).copy()
    data["implementation"] = data["impl"].map(lambda i: IMPL_LABELS.get(i, i))
    data["payload_label"] = data["payload"].map(bytes_label)
    return data



def _rate_label(value, _pos=None):
    if not np.isfinite(value):
        return ""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _log_x(ax, values):
    values = sorted(set(int(v) for v in values))
    if len(values) > 1 and values[-1] / max(values[0], 1) >= 8:
        ax.set_xscale("log")
    ax.set_xticks(values)
    # Neighbours such as 512 and 1000 sit close on a log axis: short labels, slanted when crowded.
    crowded = any(b / max(a, 1) < 2.5 for a, b in zip(values, values[1:]))
    ax.set_xticklabels([_rate_label(v) for v in values], rotation=40 if crowded else 0,
                       ha="right" if crowded else "center")
    ax.minorticks_off()


def _empty(title):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.text(0.5, 0.5, "no valid runs to draw", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    fig.suptitle(title)
    return fig


def _median_ci(values):
    """A chart band: the tables' bootstrap CI of the median (vectorised; seaborn's own bootstrap calls
    the estimator once per resample, 12 s a chart over data/)."""
    return bootstrap_median_ci(values)


def _facets(data, y, title, ylabel, modes=None, style=None, log_y=False):
    sns = _sns()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    modes = modes or [m for m in CLOSED_MODES if m in set(data["mode"])]
    data = data[data["mode"].isin(modes)] if "mode" in data.columns else data
    payloads = sorted(set(data["payload"]))
    if data.empty or y not in data.columns or data[y].notna().sum() == 0:
        return _empty(title)
    grid = sns.relplot(data=data, kind="line", x="connections", y=y, hue="implementation", style=style,
                       col="mode", col_order=modes, row="payload", row_order=payloads,
                       estimator="median", errorbar=_median_ci, marker="o", markersize=6,
                       palette=impl_palette(data["implementation"]), hue_order=impl_order(data["implementation"]),
                       height=3.2 if len(modes) > 1 else 3.4, aspect=1.45 if len(modes) > 1 else 2.3, facet_kws={"sharey": False, "sharex": True, "margin_titles": False})
    for (payload, mode), ax in grid.axes_dict.items():
        ax.set_title(f"{MODE_LABELS.get(mode, mode)}, payload {bytes_label(payload)}", fontsize=10)
        _log_x(ax, data["connections"])
        if log_y:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(_rate_label))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_formatter(FuncFormatter(_rate_label))
    grid.set_axis_labels("concurrent connections", ylabel)
    fig = grid.figure
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.95 / height))  # keep ~1 inch on top for the title and legend
    if grid.legend is not None:
        entries = len(grid.legend.get_texts())
        sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, 1 - 0.42 / height), ncol=entries,
                        frameon=False, title=None)
    fig.suptitle(title, y=1 - 0.08 / height, va="top", fontsize=13)
    return grid.figure


def plot_throughput(df, metric="msgs_per_s"):
    """Throughput vs connections: one panel per (payload, mode), one line per implementation."""
    label = {"msgs_per_s": "echoed messages / s", "bytes_per_s": "echoed bytes / s"}.get(metric, metric)
    return _facets(_prepare(df), metric, "Throughput vs connections (median of repeats, 95 % CI band)", label)


def plot_latency(df):
    """Request-response latency percentiles (p50, p99) vs connections, log scale."""
    data = _prepare(df)
    data = data[data["mode"] == "rr"]
    cols = [c for c in ("p50_us", "p99_us") if c in data.columns]
    if data.empty or not cols:
        return _empty("Request-response latency")
    long = data.melt(id_vars=["implementation", "mode", "payload", "connections", "repeat"], value_vars=cols,
                     var_name="percentile", value_name="latency_us")
    long["percentile"] = long["percentile"].str.replace("_us", "", regex=False)
    return _facets(long, "latency_us", "Request-response latency percentiles (median of repeats, 95 % CI band)",
                   "round-trip latency (µs, log)", modes=["rr"], style="percentile", log_y=True)


def plot_server_cpu(df):
    """Server CPU time per echoed message vs connections."""
    return _facets(_prepare(df), "server_cpu_us_per_msg", "Server CPU per message (median of repeats, 95 % CI band)",
                   "server CPU (µs / message)")


def _closed_ratios(df):
    pair = base_pair(df) or ("uring", "epoll")
    r = ratios(one_variant(df[df["mode"].isin(CLOSED_MODES)]), numerator=pair[0], denominator=pair[1])
    return r[np.isfinite(r["ratio"])] if not r.empty else r


def plot_ratio(df):
    """io_uring/epoll ratio of median msgs/s vs connections, one line per payload, per mode."""
    plt, _ = _plt(), _sns()
    r = _closed_ratios(df)
    if r.empty:
        return _empty("io_uring / epoll throughput ratio")
    modes = [m for m in CLOSED_MODES if m in set(r["mode"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.8), squeeze=False, sharey=True)
    payloads = sorted(set(r["payload"]))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(payloads)))
    log_x = r["connections"].max() / max(r["connections"].min(), 1) >= 8
    for ax, mode in zip(axes[0], modes):
        sub = r[r["mode"] == mode]
        for i, (color, payload) in enumerate(zip(colors, payloads)):
            p = sub[sub["payload"] == payload].sort_values("connections")
            if p.empty:
                continue
            # dodge the payloads sideways a little so their error bars do not hide each other
            shift = (i - (len(payloads) - 1) / 2) * 0.04
            x = p["connections"] * (1 + shift) if log_x else p["connections"] + shift * p["connections"].max()
            low = (p["ratio"] - p["ratio_ci_low"]).clip(lower=0).fillna(0)
            high = (p["ratio_ci_high"] - p["ratio"]).clip(lower=0).fillna(0)
            ax.errorbar(x, p["ratio"], yerr=[low, high], marker="o", capsize=3, color=color,
                        label=bytes_label(payload))
        ax.axhline(1.0, color="0.3", lw=1, ls="--")
        ax.set_title(MODE_LABELS.get(mode, mode), fontsize=10)
        ax.set_xlabel("concurrent connections")
        _log_x(ax, r["connections"])
    axes[0][0].set_ylabel("io_uring / epoll (msgs/s, paired)\n> 1: io_uring faster")
    axes[0][-1].legend(title="payload", fontsize=8, title_fontsize=9, loc="best")
    fig.suptitle(f"{HEATMAP_TITLE}{_variant_note(df)} (median of paired repeats, 95 % bootstrap CI)", fontsize=13)
    fig.tight_layout()
    return fig


def plot_ratio_heatmap(df):
    """The seed study's question at a glance: payload x connections heatmap of the ratio, per mode."""
    plt, sns = _plt(), _sns()
    from matplotlib.colors import LogNorm

    r = _closed_ratios(df)
    if r.empty:
        return _empty(HEATMAP_TITLE)
    modes = [m for m in CLOSED_MODES if m in set(r["mode"])]
    n_pay, n_conn = r["payload"].nunique(), r["connections"].nunique()
    fig, axes = plt.subplots(1, len(modes), figsize=(max(4.5, 0.9 * n_conn + 2.5) * len(modes), 0.55 * n_pay + 2.2),
                             squeeze=False)
    spread = math.exp(max(math.log(1.25), float(np.nanmax(np.abs(np.log(r["ratio"]))))))
    norm = LogNorm(vmin=1 / spread, vmax=spread)  # symmetric around 1: 0.5 and 2 are equally far
    for ax, mode in zip(axes[0], modes):
        table = r[r["mode"] == mode].pivot(index="payload", columns="connections", values="ratio").sort_index(ascending=False)
        table.index = [bytes_label(p) for p in table.index]
        last = ax is axes[0][-1]
        sns.heatmap(table, ax=ax, annot=True, fmt=".2f", cmap="RdBu_r", norm=norm, linewidths=0.5, cbar=last,
                    cbar_kws={"label": "io_uring / epoll\n(> 1: io_uring faster)"} if last else None)
        if last:
            cbar = ax.collections[0].colorbar
            ticks = [t for t in (0.25, 0.33, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2, 3, 4)
                     if 1 / spread <= t <= spread]
            cbar.set_ticks(ticks)
            cbar.set_ticklabels([f"{t:g}" for t in ticks])
            cbar.minorticks_off()
        ax.set_title(MODE_LABELS.get(mode, mode), fontsize=10)
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("payload")
        ax.tick_params(axis="y", rotation=0)
    fig.suptitle(f"{HEATMAP_TITLE}{_variant_note(df)} (median of paired per-repeat ratios)", fontsize=13)
    fig.tight_layout()
    return fig


#: Colours of the verdicts (echo_core.analysis.stats.VERDICTS), io_uring's orange and epoll's green.
VERDICT_COLORS = {"io_uring better": "#d95f02", "no difference": "#f0f0f0", "epoll better": "#1b9e77",
                  "depends on the client": "#7570b3", "depends on the work": "#e7298a", "not enough runs": "#bdbdbd"}


def plot_verdict(df):
    """The headline: per cell (payload x connections, per mode), is io_uring better, epoll better, no
    different, or does it depend on the client design (or the server's work)?  From the paired CIs of
    every client and work the cell ran with; each square shows the range of their ratios."""
    plt = _plt()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    df = with_cell_columns(df)
    pair = base_pair(df)
    title = "Verdict per cell over client designs and server work"
    table = verdicts(df[df["mode"].isin(CLOSED_MODES)], *pair) if pair else None
    if table is None or table.empty:
        return _empty(title)
    modes = [m for m in CLOSED_MODES if m in set(table["mode"])]
    payloads = sorted(set(table["payload"]), reverse=True)
    conns = sorted(set(table["connections"]))
    fig, axes = plt.subplots(1, len(modes), figsize=(max(4.5, 1.3 * len(conns) + 2) * len(modes), 0.6 * len(payloads) + 2.6),
                             squeeze=False)
    cmap = ListedColormap([VERDICT_COLORS[v] for v in VERDICTS])
    for ax, mode in zip(axes[0], modes):
        sub = table[table["mode"] == mode]
        grid = np.full((len(payloads), len(conns)), np.nan)
        for rec in sub.to_dict("records"):
            i, j = payloads.index(rec["payload"]), conns.index(rec["connections"])
            grid[i, j] = VERDICTS.index(rec["verdict"])
            text = (f"{rec['ratio_min']:.2f}" if rec["ratio_min"] == rec["ratio_max"]
                    else f"{rec['ratio_min']:.2f}–{rec['ratio_max']:.2f}")
            ax.text(j, i, text, ha="center", va="center", fontsize=8)
        ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=len(VERDICTS) - 0.5, aspect="auto")
        ax.set_xticks(range(len(conns)), [str(c) for c in conns])
        ax.set_yticks(range(len(payloads)), [bytes_label(p) for p in payloads])
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("payload")
        ax.set_title(MODE_LABELS.get(mode, mode), fontsize=10)
    shown = [v for v in VERDICTS if v in set(table["verdict"])]
    fig.legend(handles=[Patch(facecolor=VERDICT_COLORS[v], edgecolor="0.5", label=v) for v in shown],
               loc="lower center", ncol=len(shown), fontsize=8, frameon=False, bbox_to_anchor=(0.5, -0.02))
    variants = f"{df['client'].nunique()} client design(s) x {df['work'].nunique()} work(s)"
    fig.suptitle(f"{title}: {IMPL_LABELS.get(pair[0], pair[0])} vs {IMPL_LABELS.get(pair[1], pair[1])}\n"
                 f"({variants}; 95 % CI of paired msgs/s ratios; numbers: the range of the ratios)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


PERCENTILE_STYLES = {"p50_us": ("p50", ":"), "p99_us": ("p99", "-"), "p999_us": ("p99.9", "--")}


def plot_latency_load(df):
    """Open-loop latency (p50, p99, p99.9 from merged histograms) vs achieved throughput, one line per
    implementation and panel per (payload, connections); a dotted vertical line marks each knee."""
    plt, _ = _plt(), _sns()
    from matplotlib.ticker import FuncFormatter

    title = "Latency vs load (open loop)"
    curves, beyond = up_to_saturation(latency_vs_load(df))
    if curves.empty:
        return _empty(title)
    curves = curves.copy()
    curves["implementation"] = curves["impl"].map(lambda i: IMPL_LABELS.get(i, i))
    panels = sorted(set(zip(curves["payload"], curves["connections"])))
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.9 * nrows), squeeze=False)
    knee_table = knees(curves)
    colors = impl_palette(curves["implementation"])
    for ax, (payload, conns) in zip(axes.flat, panels):
        panel = curves[(curves["payload"] == payload) & (curves["connections"] == conns)]
        for impl, group in panel.groupby("implementation", sort=True):
            group = group.sort_values("offered_rate")
            for col, (label, style) in PERCENTILE_STYLES.items():
                ax.plot(group["achieved"], group[col], ls=style, marker="o", ms=4, color=colors.get(impl),
                        label=f"{impl} {label}")
            knee = knee_table[(knee_table["impl"] == group["impl"].iloc[0]) & (knee_table["payload"] == payload)
                              & (knee_table["connections"] == conns)]["knee_achieved"]
            if len(knee) and np.isfinite(knee.iloc[0]):
                ax.axvline(knee.iloc[0], color=colors.get(impl), ls=":", lw=1.2)
                ax.annotate(f"knee {impl}", (knee.iloc[0], 0.97), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=7, color=colors.get(impl))
        ax.set_yscale("log")
        ax.set_title(f"payload {bytes_label(payload)}, {conns} connection{'s' if conns != 1 else ''}", fontsize=10)
        ax.set_xlabel("achieved throughput (requests / s)")
        ax.set_ylabel("latency from scheduled send (µs, log)")
        ax.xaxis.set_major_formatter(FuncFormatter(_rate_label))
        ax.set_xlim(left=0)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
    fig.suptitle(f"{title}: percentiles of every request of every valid repeat; knee = last load before p99 "
                 f"> 3x its low-load value or achieved < 90 % of offered", fontsize=10, y=1 - 0.05 / fig.get_figheight(),
                 va="top")
    if beyond:
        fig.text(0.99, 0.0, f"{beyond} offered load(s) past saturation not drawn (see latency_load_table).",
                 fontsize=8, color="0.35", ha="right", va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / fig.get_figheight()))
    return fig


#: The per-message counters drawn by plot_counters: the two that separate io_uring's and epoll's paths most
#: directly (an operation that could not complete at once arms a poll; each sleep is a context switch).
COUNTER_CHART = ("server_poll_arms_per_msg", "server_ctx_switches_per_msg")
#: The counters counters_table() shows by default, after throughput and server CPU per message.
COUNTER_TABLE = ("server_poll_arms_per_msg", "server_ctx_switches_per_msg", "server_task_work_per_msg",
                 "server_completions_per_wait", "server_bytes_per_recv")


def _counters_x(data):
    """plot_counters' x axis: connections or payload, whichever the results vary more (the other is the line style)."""
    return "payload" if data["payload"].nunique() > data["connections"].nunique() else "connections"


def plot_counters(df, counters=COUNTER_CHART):
    """Per-message kernel counters by cell: one row of panels per counter, one column per mode; x is the
    number of connections (or the payload, when the results vary it more), colour the implementation,
    line style the other of the two.  Medians over valid runs.  Counters not recorded are left out."""
    sns = _sns()
    from matplotlib.ticker import FuncFormatter

    title = "Kernel counters per message (median of valid repeats)"
    data = _prepare(_closed(df))
    recorded = counters_recorded(data, counters)
    if data.empty or not recorded:
        return _empty(f"{title}: {counters_note(_closed(df), dict((c, COUNTERS.get(c, c)) for c in counters))}")
    x = _counters_x(data)
    style = "connections" if x == "payload" else "payload size"
    long = data.rename(columns={"payload_label": "payload size"}).melt(
        id_vars=["implementation", "mode", "payload", "payload size", "connections", "repeat"],
        value_vars=recorded, var_name="counter", value_name="per_msg")
    long["counter"] = long["counter"].map(lambda c: COUNTERS.get(c, c))
    long = long[np.isfinite(pd.to_numeric(long["per_msg"], errors="coerce"))]
    modes = [m for m in CLOSED_MODES if m in set(long["mode"])]
    rows = [COUNTERS.get(c, c) for c in recorded]
    grid = sns.relplot(data=long, kind="line", x=x, y="per_msg", hue="implementation", style=style,
                       row="counter", row_order=rows, col="mode", col_order=modes, estimator="median",
                       errorbar=None, marker="o", markersize=5, palette=impl_palette(long["implementation"]),
                       hue_order=impl_order(long["implementation"]),
                       height=3.0, aspect=1.6, facet_kws={"sharey": "row", "sharex": True})
    for (counter, mode), ax in grid.axes_dict.items():
        ax.set_title(f"{MODE_LABELS.get(mode, mode)}: {counter}", fontsize=10)
        _log_x(ax, long[x])
        if x == "payload":
            ax.set_xticklabels([bytes_label(v) for v in sorted(set(long[x]))])
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(_rate_label))
    grid.set_axis_labels("concurrent connections" if x == "connections" else "payload", "per message")
    fig = grid.figure
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / height))  # room on top for the title and the legend
    if grid.legend is not None:
        sns.move_legend(grid, "upper center", bbox_to_anchor=(0.5, 1 - 0.4 / height),
                        ncol=len(grid.legend.get_texts()), frameon=False, title=None, fontsize=8)
    fig.suptitle(title, y=1 - 0.08 / height, va="top", fontsize=13)
    return fig


CHARTS = {"throughput": plot_throughput, "latency": plot_latency, "server-cpu": plot_server_cpu,
          "ratio": plot_ratio, "ratio-heatmap": plot_ratio_heatmap, "latency-load": plot_latency_load,
          "counters": plot_counters, "verdict": plot_verdict}
#: Which modes a chart needs (save_charts skips a chart whose modes are absent from the results).
CHART_MODES = {"throughput": CLOSED_MODES, "latency": ("rr",), "server-cpu": CLOSED_MODES, "ratio": CLOSED_MODES,
               "ratio-heatmap": CLOSED_MODES, "latency-load": ("rate",), "counters": CLOSED_MODES,
               "verdict": CLOSED_MODES}
#: Charts that also need columns older result sets lack: drawn only when one of them has a value in a valid run.
CHART_COLUMNS = {"counters": COUNTER_CHART}


def chart_path(output_dir, name, chart):
    return Path(output_dir) / f"{name}-{chart}.png"


def draw(chart, df, output_dir=None, name=None, close=False, dpi=120):
    """Draw one chart (a key of CHARTS); save it as <output_dir>/<name>-<chart>.png if output_dir is given."""
    fig = CHARTS[chart](df)
    # Every chart says how many runs of the results it was drawn from were left out, and why.
    shown = df[df["mode"].isin(CHART_MODES[chart])]
    fig.text(0.01, 0.0, f"Valid runs only: {excluded_note(shown)}.", fontsize=8, color="0.35", ha="left", va="top")
    if output_dir is not None:
        path = chart_path(output_dir, name or "sweep", chart)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if close:
        _plt().close(fig)
    return fig


def applicable_charts(df):
    """The charts the results have runs for (by mode) and, for CHART_COLUMNS, values for, in CHART_NAMES order."""
    modes = set(df["mode"])
    return [chart for chart in CHART_NAMES if modes & set(CHART_MODES[chart])
            and (chart not in CHART_COLUMNS or counters_recorded(df[df["mode"].isin(CHART_MODES[chart])],
                                                                 CHART_COLUMNS[chart]))
            and (chart != "verdict" or _has_variants(df))]


def _has_variants(df):
    """The verdict chart: a base pair measured with several client designs or works."""
    df = with_cell_columns(df)
    return base_pair(df) is not None and (df["client"].nunique() > 1 or df["work"].nunique() > 1)


def save_charts(df, output_dir, name, charts=CHART_NAMES, close=True):
    """Draw and save every chart the results have runs for; returns {chart: path}.  close=False keeps
    the figures (notebooks)."""
    paths = {}
    for chart in applicable_charts(df):
        if chart not in charts:
            continue
        draw(chart, df, output_dir=output_dir, name=name, close=close)
        paths[chart] = chart_path(output_dir, name, chart)
    return paths


# --------------------------------------------------------------------------- tables

def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if abs(value) >= 1000:
        return _rate_label(float(f"{value:.{digits}g}"))
    return f"{value:.{digits}g}"


def median_table(df, metric="msgs_per_s"):
    """Cells as rows (mode, payload, connections), implementations as columns: 'median [CI low, high]'
    over the valid runs (closed-loop modes; rate mode is in latency_load_table)."""
    s = summarize(_closed(df), metrics=[metric])
    if s.empty:
        return pd.DataFrame()
    s["value"] = [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else _fmt(m)
                  for m, lo, hi in zip(s[f"{metric}_median"], s[f"{metric}_ci_low"], s[f"{metric}_ci_high"])]
    s["implementation"] = s["impl"].map(lambda i: IMPL_LABELS.get(i, i))
    table = s.pivot(index=_cell_keys(df), columns="implementation", values="value")
    table.columns.name = None
    return table


def bottleneck_table(df):
    """Per cell and implementation: which side ran out of CPU (most frequent verdict, with agreement)."""
    s = summarize(_closed(df), metrics=[])
    if s.empty or "bottleneck" not in s.columns:
        return pd.DataFrame()
    s["implementation"] = s["impl"].map(lambda i: IMPL_LABELS.get(i, i))
    s["verdict"] = [f"{b} ({share:.0%})" if isinstance(b, str) else "–"
                    for b, share in zip(s["bottleneck"], s["bottleneck_share"])]
    table = s.pivot(index=_cell_keys(df), columns="implementation", values="verdict")
    table.columns.name = None
    return table


def _closed(df):
    return df[df["mode"].isin(CLOSED_MODES)]


def spec_ratio_table(df):
    """Each spec / epoll per closed-loop cell (paired, echo_core.analysis.stats.spec_ratios): rows (spec, mode,
    payload, connections) with the ratio, its CI, pairs and the server-CPU-per-message ratio.  With
    only uring and epoll it holds ratio_table()'s ratios."""
    r = spec_ratios(_closed(df))
    if r.empty:
        return r
    r = r.assign(implementation=r["impl"].map(lambda i: IMPL_LABELS.get(i, i)))
    cols = ["implementation", "mode", "payload", "connections", "numerator", "baseline", "ratio", "ratio_ci_low",
            "ratio_ci_high", "n_pairs", "n_excluded", "cpu_ratio"]
    out = r[cols].rename(columns={"numerator": "msgs/s", "baseline": "epoll msgs/s", "ratio": "ratio to epoll",
                                  "ratio_ci_low": "95 % CI low", "ratio_ci_high": "95 % CI high",
                                  "n_pairs": "pairs", "n_excluded": "runs excluded",
                                  "cpu_ratio": "server CPU/msg ratio"})
    return out.set_index(["mode", "payload", "connections", "implementation"]).sort_index()


def _variant_keys(df):
    """client and work, where the results hold more than one of them (else they say nothing)."""
    return [c for c in CELL_DEFAULTS if c in df.columns and df[c].nunique() > 1]


def _cell_keys(df):
    """A table's row keys: the cell, led by client and work where the results hold more than one."""
    return _variant_keys(df) + ["mode", "payload", "connections"]


def ratio_table(df):
    """The paired ratio per closed-loop cell with its CI, pairs, exclusions and the server-CPU ratio:
    io_uring / epoll, or the one io_uring spec / the one epoll spec of a confirmatory set."""
    numerator, denominator = base_pair(df) or ("uring", "epoll")
    r = ratios(_closed(df), numerator=numerator, denominator=denominator)
    if r.empty:
        return r
    keys = _cell_keys(df)
    cols = keys + [numerator, denominator, "ratio", "ratio_ci_low", "ratio_ci_high", "n_pairs", "n_excluded",
                   "cpu_ratio"]
    out = r[cols].rename(columns={numerator: f"{IMPL_LABELS.get(numerator, numerator)} msgs/s",
                                  denominator: f"{IMPL_LABELS.get(denominator, denominator)} msgs/s",
                                  "ratio_ci_low": "95 % CI low", "ratio_ci_high": "95 % CI high",
                                  "n_pairs": "pairs", "n_excluded": "runs excluded",
                                  "cpu_ratio": "server CPU/msg ratio"})
    return out.set_index(keys)


def latency_ci_table(df, quantiles=(0.5, 0.99, 0.999)):
    """Latency percentiles per rr / rate cell and implementation from the merged histograms of its
    valid runs, each with its 95 % CI (echo_core.analysis.stats.latency_percentiles), in µs."""
    table = latency_percentiles(df, quantiles)
    if table.empty:
        return table
    keys = ["impl"] + _cell_keys(df)
    if table["offered_rate"].notna().any():
        keys.append("offered_rate")
    names = [c for c in table.columns if c.endswith("_us")]
    out = table[keys + ["n", "samples"]].copy()
    for name in names:
        out[name.removesuffix("_us") + " µs [95 % CI]"] = [
            f"{v:,.1f} [{lo:,.1f}, {hi:,.1f}]" if lo == lo else f"{v:,.1f}"
            for v, lo, hi in zip(table[name], table[f"{name}_ci_low"], table[f"{name}_ci_high"])]
    return out.set_index(keys)


def verdict_table(df):
    """Per closed-loop cell: the verdict over the clients and works it ran with, and each one's ratio
    (echo_core.analysis.stats.verdicts)."""
    pair = base_pair(df)
    if pair is None:
        return pd.DataFrame()
    table = verdicts(_closed(df), *pair)
    return table.set_index(["mode", "payload", "connections"]).drop(columns=["offered_rate"], errors="ignore")


def counters_table(df, counters=COUNTER_TABLE):
    """Per closed-loop cell and implementation: valid runs, median msgs/s, server CPU µs per message and the
    per-message counters, all medians over valid runs.  Counters no valid run recorded are left out
    (counters_note() says which and why); an empty frame when none was recorded."""
    data = _closed(df)
    recorded = counters_recorded(data, counters)
    if data.empty or not recorded:
        return pd.DataFrame()
    metrics = ["msgs_per_s", "server_cpu_us_per_msg"] + recorded
    table = cell_medians(data, metrics)
    table["implementation"] = table["impl"].map(lambda i: IMPL_LABELS.get(i, i))
    keys = _cell_keys(df) + ["implementation"]
    table = table[keys + ["n"] + metrics].rename(columns={"n": "valid runs", "msgs_per_s": "msgs/s",
                                                         "server_cpu_us_per_msg": "server µs/msg", **COUNTERS})
    return table.set_index(keys).sort_index()


def excluded_table(df):
    """Per cell: runs, valid runs, runs excluded and the commonest reason; cells with exclusions first."""
    table = excluded_counts(df)
    if table.empty:
        return table
    table = table.assign(implementation=table["impl"].map(lambda i: IMPL_LABELS.get(i, i)))
    cols = _cell_keys(df) + ["offered_rate", "implementation", "runs", "valid", "excluded", "reason"]
    return table[cols].reset_index(drop=True)


def latency_load_table(df):
    """Rate-mode cells: offered and achieved load, merged-histogram percentiles, unanswered, and the knee."""
    curves = latency_vs_load(df)
    if curves.empty:
        return curves
    marks = knees(curves)
    curves = curves.merge(marks, on=["impl", "payload", "connections"], how="left")
    curves["implementation"] = curves["impl"].map(lambda i: IMPL_LABELS.get(i, i))
    cols = ["payload", "connections", "implementation", "offered_rate", "achieved", "achieved_fraction", "p50_us",
            "p99_us", "p999_us", "unanswered", "n", "n_excluded", "knee_achieved"]
    return curves[cols].sort_values(["payload", "connections", "implementation", "offered_rate"]).reset_index(drop=True)


def seed_ratios(path):
    """The seed study's io_uring/epoll ratio of responses per second per (mode, payload, connections)."""
    seed = pd.read_csv(path)
    seed["mode"] = seed["mode"].replace({"req-res": "rr"})
    seed["impl"] = seed["impl"].replace({"io_uring": "uring"})
    wide = seed.pivot_table(index=["mode", "payload", "conns"], columns="impl", values="res_per_s")
    out = (wide["uring"] / wide["epoll"]).rename("seed ratio").reset_index()
    return out.rename(columns={"conns": "connections"})


def seed_comparison(df, path):
    """Our ratio (with CI) beside the seed study's, for the cells both measured."""
    ours = _closed_ratios(df)
    if ours.empty:
        return ours
    ours = ours[["mode", "payload", "connections", "ratio", "ratio_ci_low", "ratio_ci_high"]]
    merged = ours.merge(seed_ratios(path), on=["mode", "payload", "connections"], how="inner")
    merged = merged.rename(columns={"ratio": "our ratio", "ratio_ci_low": "95 % CI low",
                                    "ratio_ci_high": "95 % CI high"})
    return merged.set_index(["mode", "payload", "connections"])


#: What the machine table shows for a fact a result set's metadata lacks (sets older than the fact).
NOT_RECORDED = "not recorded"


def _hypervisor_label(virt):
    if not isinstance(virt, dict):
        return NOT_RECORDED
    container = virt.get("detect_virt_container")
    return f"{virt.get('name')}" + (f" (container: {container})" if container and container != "none" else "")


def _perf_label(perf, key):
    """One cell of the machine table for perf_info()'s tool, tracefs or hardware_pmu: the fact or why not."""
    if not isinstance(perf, dict):
        return NOT_RECORDED
    if key == "tool":
        tool = perf.get("tool") or {}
        return f"{tool.get('version')} ({tool.get('path')})" if tool.get("version") else f"no: {tool.get('reason')}"
    if key == "tracefs":
        tracefs = perf.get("tracefs") or {}
        if tracefs.get("mounted"):
            return f"mounted at {', '.join(tracefs['mount_points'])}"
        return f"no: {tracefs.get('reason')}"
    return "yes" if perf.get("hardware_pmu") else f"no: {perf.get('hardware_pmu_reason')}"


def machine_warning(metas):
    """Markdown text warning that the pooled result sets come from different machines, kernels or commits
    (None when they agree): the machine facts of results.pooling_differences plus the git commit."""
    lines = [d for d in pooling_differences(metas) if "differs (different machines?)" in d]
    commits = {name: ((meta or {}).get("machine") or {}).get("git_commit") for name, meta in metas.items()}
    if len({c for c in commits.values() if c}) > 1:
        lines.append("git commit differs: " + ", ".join(f"{n}: {(c or '?')[:12]}" for n, c in sorted(commits.items())))
    if not lines:
        return None
    return ("**Warning:** the result sets come from different machines, kernels or commits; the pooled figures "
            "mix them:\n\n" + "\n".join(f"- {line}" for line in lines))


def machine_table(metas):
    """One column per result set: the machine facts a reader needs to judge the numbers."""
    rows = {}
    for name, meta in metas.items():
        m = meta.get("machine", {}) if meta else {}
        p = meta.get("parameters", {}) if meta else {}
        io = m.get("io_uring", {}) or {}
        lib = m.get("liburing", {}) or {}
        cpu = m.get("cpu", {}) or {}
        vulns = (m.get("mitigations", {}) or {}).get("vulnerabilities", {}) or {}
        steal = meta.get("cpu_steal_fraction") if meta else None
        facts, perf = comparable_facts(m), m.get("perf")
        rows[name] = {
            "status": meta.get("status") if meta else None,
            "started": meta.get("started_at") if meta else None,
            "elapsed (s)": meta.get("elapsed_s") if meta else None,
            "runs (failed / invalid)": f"{meta.get('rows')} ({meta.get('failed_runs')} / {meta.get('invalid_runs', '?')})"
                                       if meta else None,
            "grid": p.get("grid"),
            "window / warm-up (max) / repeats": f"{p.get('duration')} s / {p.get('warmup')} s "
                                                f"({p.get('warmup_max')} s) / {p.get('repeats')}",
            "kernel": (m.get("kernel") or {}).get("release"),
            "OS": m.get("os"),
            "CPU": f"{cpu.get('model')} x{cpu.get('count')} (affinity {cpu.get('affinity')})",
            "CPU vendor / family / model": facts["CPU vendor / family / model"] or NOT_RECORDED,
            "caches": facts["caches"] or NOT_RECORDED,
            "NUMA nodes": facts["NUMA nodes"] or NOT_RECORDED,
            "copy-related CPU flags": facts["copy-related CPU flags"] or NOT_RECORDED,
            "virtualised": cpu.get("hypervisor"),
            "hypervisor": _hypervisor_label(m.get("virtualization")),
            "perf tool": _perf_label(perf, "tool"),
            "perf_event_paranoid": perf.get("perf_event_paranoid") if perf else NOT_RECORDED,
            "tracefs": _perf_label(perf, "tracefs"),
            "hardware PMU (cycles, cache misses)": _perf_label(perf, "hardware_pmu"),
            "CPU steal during sweep": f"{steal:.1%}" if isinstance(steal, (int, float)) else None,
            "liburing": lib.get("version") or lib.get("package_version"),
            "io_uring permitted": io.get("setup_permitted"),
            "io_uring features": io.get("features_mask"),
            "DEFER_TASKRUN accepted": (io.get("setup_flags_accepted") or {}).get("SINGLE_ISSUER|DEFER_TASKRUN"),
            "mitigations (cmdline)": (m.get("mitigations") or {}).get("cmdline_mitigations"),
            "vulnerable / mitigated entries": f"{sum('Vulnerable' in str(v) for v in vulns.values())} / "
                                              f"{sum('Mitigation' in str(v) for v in vulns.values())}",
            "Python": (m.get("python") or {}).get("version"),
            "echo_core": (m.get("packages") or {}).get("echo_core"),
            "git commit": (m.get("git_commit") or "")[:12] or None,
        }
    return pd.DataFrame(rows)
