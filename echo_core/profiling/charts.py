"""Charts of CPU profiles (echo_core.profiling.profile): where each implementation's CPU per message goes.

Both charts take a Profile (profile_cell()'s result or load_profile()'s) and return a matplotlib
Figure; save_* functions write them beside the profile's other files.
"""

from echo_core.analysis.report import impl_palette
from echo_core.results.schema import IMPL_LABELS

TOP_FUNCTIONS_PNG = "top_functions.png"
CATEGORIES_PNG = "categories.png"


def _sns():
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return sns


def _label(impl):
    return IMPL_LABELS.get(impl, impl)


def _palette(impls):
    return impl_palette([_label(impl) for impl in impls])


def _cell_text(profile):
    cell = profile.meta["cell"]
    return f"{cell['mode']}, {cell['payload']:,} B x {cell['connections']} connections"


def excluded_note(profile):
    """How many of each implementation's runs were left out of the profile as invalid, and why."""
    parts = []
    for impl, info in profile.meta["impls"].items():
        excluded = info.get("excluded", 0 if info.get("valid", True) else info.get("repeats", 1))
        if excluded:
            parts.append(f"{_label(impl)} {excluded} of {info.get('repeats', 1)} ({info.get('invalid_reason')})")
    runs = sum(info.get("repeats", 1) for info in profile.meta["impls"].values())
    return ("Valid runs only: " + ("; ".join(parts) + " excluded as invalid" if parts
                                   else f"0 of {runs} runs excluded") + ".")


def _note(fig, profile):
    fig.text(0.01, 0.0, excluded_note(profile), fontsize=8, color="0.35", ha="left", va="top")


def _value_column(table, column):
    """µs/msg when the server CPU per message is known for every impl, else the share of samples (%)."""
    if table[column].notna().all() and len(table):
        return column, "self CPU per message (µs)"
    return "self_share", "share of the implementation's samples"


def top_function_order(table, impls, n=15, column="self_us_per_msg"):
    """The n functions with the most self CPU in any implementation, ordered by (first impl - second)
    descending; returns a wide DataFrame: function, kernel, one column per impl, difference."""
    wide = table.pivot_table(index=["function", "kernel"], columns="impl", values=column, aggfunc="sum",
                             fill_value=0.0)
    for impl in impls:
        if impl not in wide.columns:
            wide[impl] = 0.0
    wide = wide[list(impls)].reset_index()
    wide.columns.name = None
    heaviest = wide[list(impls)].max(axis=1).sort_values(ascending=False).index[:n]
    wide = wide.loc[heaviest]
    wide["difference"] = wide[impls[0]] - wide[impls[1]] if len(impls) > 1 else wide[impls[0]]
    return wide.sort_values("difference", ascending=False).reset_index(drop=True)


def plot_top_functions(profile, n=15, impls=None):
    """Side-by-side horizontal bars of the top n functions by self CPU µs/msg per implementation,
    ordered by the difference between the first two implementations (largest excess of the first on
    top); the difference is written beside each pair."""
    import matplotlib.pyplot as plt

    sns = _sns()
    impls = list(impls or profile.impls)
    table = profile.table[profile.table["impl"].isin(impls)]
    column, xlabel = _value_column(table, "self_us_per_msg")
    scale = 100.0 if column == "self_share" else 1.0
    wide = top_function_order(table, impls, n=n, column=column)
    if wide.empty:
        fig, ax = plt.subplots(figsize=(6, 2.5))
        ax.text(0.5, 0.5, "no samples to draw", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    wide["label"] = [f"{f} [k]" if k else f for f, k in zip(wide["function"], wide["kernel"])]
    long = wide.melt(id_vars=["label"], value_vars=impls, var_name="impl", value_name="value")
    long["value"] *= scale
    long["implementation"] = long["impl"].map(_label)
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(wide) + 1.8))
    sns.barplot(data=long, y="label", x="value", hue="implementation", order=list(wide["label"]),
                hue_order=[_label(i) for i in impls], palette=_palette(impls), ax=ax, orient="h")
    ax.set_ylabel("")
    ax.set_xlabel(xlabel + (" (%)" if scale != 1.0 else ""))
    if len(impls) > 1:
        right = long["value"].max()
        for y, diff in enumerate(wide["difference"] * scale):
            ax.text(right * 1.05, y, f"{diff:+.2f}", va="center", fontsize=9,
                    color="#b2182b" if diff > 0 else "#2166ac")
        ax.set_xlim(0, right * 1.22 if right > 0 else 1)
        what = f"{_label(impls[0])} − {_label(impls[1])} beside each pair"
    else:
        what = "heaviest first"
    ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(f"Where the server's CPU goes: {_cell_text(profile)}", fontsize=12)
    ax.set_title(f"top {len(wide)} functions by self CPU, ordered by difference ({what}); [k] = kernel",
                 fontsize=9)
    fig.tight_layout()
    _note(fig, profile)
    return fig


def plot_categories(profile, impls=None):
    """Grouped bars of CPU µs/msg per subsystem (echo_core.profiling.profile.CATEGORIES) per implementation."""
    import matplotlib.pyplot as plt

    sns = _sns()
    impls = list(impls or profile.impls)
    data = profile.categories[profile.categories["impl"].isin(impls)].copy()
    use_share = not (data["us_per_msg"].notna().all() and len(data))
    data["value"] = data["share"] * 100 if use_share else data["us_per_msg"]
    data["implementation"] = data["impl"].map(_label)
    order = (data.groupby("category")["value"].max().sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(10, 0.4 * len(order) * max(1, len(impls) / 2) + 1.6))
    sns.barplot(data=data, y="category", x="value", hue="implementation", order=order,
                hue_order=[_label(i) for i in impls], palette=_palette(impls), ax=ax, orient="h")
    ax.set_ylabel("")
    ax.set_xlabel("share of samples (%)" if use_share else "CPU per message (µs)")
    ax.legend(title=None, loc="lower right", frameon=False)
    fig.suptitle(f"Server CPU by subsystem: {_cell_text(profile)}", fontsize=12)
    ax.set_title("each sample goes to the first subsystem matched from its leaf towards the root", fontsize=9)
    fig.tight_layout()
    _note(fig, profile)
    return fig


def save_charts(profile, n=15, dpi=120):
    """Write top_functions.png and categories.png into the profile's directory; returns {role: path}."""
    import matplotlib.pyplot as plt

    charts = {"chart": (plot_top_functions, TOP_FUNCTIONS_PNG)}
    if profile.categories is not None:
        charts["categories_chart"] = (plot_categories, CATEGORIES_PNG)
    paths = {}
    for role, (plot, name) in charts.items():
        fig = plot(profile, n=n) if plot is plot_top_functions else plot(profile)
        paths[role] = profile.output_dir / name
        fig.savefig(paths[role], dpi=dpi, bbox_inches="tight")
        plt.close(fig)
    return paths

