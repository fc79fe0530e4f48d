"""Loading results: sweep CSVs (one row per run) and their metadata JSON, and which rows are valid.

Everything a reader needs to interpret a row travels in its columns -- the result set's name
(``sweep``), window and warm-up lengths, validity -- so frames can be concatenated, filtered and
grouped without losing it; the machine's description stays beside the frame (load_results' dict).
"""

import json
import os
from pathlib import Path

from echo_core.host import machine
from echo_core.results import validity
from echo_core.results.schema import CELL, CELL_DEFAULTS, REQUIRED

#: A multi-host result set <name> keeps its per-host figures in <name><HOSTS_TABLE_SUFFIX>.csv.
HOSTS_TABLE_SUFFIX = "-hosts"


def _as_bool(value):
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value) if value == value else False  # NaN -> False


def normalize(df):
    """Give a results frame the columns every consumer relies on (older CSVs lack some).

    error: text, '' for runs that did not raise; offered_rate: NaN outside rate mode; valid and
    invalid_reason: computed with echo_core.results.validity where the CSV did not record them.
    """
    import pandas as pd

    if "error" not in df.columns:
        df["error"] = ""
    df["error"] = [("" if pd.isna(v) else str(v)) for v in df["error"]]
    if "offered_rate" not in df.columns:
        df["offered_rate"] = df["rate"] if "rate" in df.columns else float("nan")
    df["offered_rate"] = pd.to_numeric(df["offered_rate"], errors="coerce")
    if "valid" in df.columns:
        df["valid"] = df["valid"].map(_as_bool)
        if "invalid_reason" not in df.columns:
            df["invalid_reason"] = ""
        df["invalid_reason"] = [("" if pd.isna(v) else str(v)) for v in df["invalid_reason"]]
    else:
        verdicts = [validity.assess(row) for row in df.to_dict("records")]
        df["valid"] = [v for v, _ in verdicts]
        df["invalid_reason"] = [r for _, r in verdicts]
    # Rows have over 100 columns: one consolidated block keeps later groupbys free of pandas'
    # "highly fragmented" PerformanceWarning (a CSV reads in as one block per column).
    df = df.copy()
    for column, default in CELL_DEFAULTS.items():
        values = df[column] if column in df.columns else [default] * len(df)
        df[column] = [default if pd.isna(v) or v == "" else str(v) for v in values]
    return df


def load_csv(path):
    """A sweep CSV as a normalized DataFrame (with a ``sweep`` column naming the result set)."""
    import pandas as pd

    df = pd.read_csv(path, keep_default_na=True)
    if "sweep" not in df.columns:
        df.insert(0, "sweep", Path(path).stem)
    return normalize(df)


def _is_multi_host(meta):
    return bool(meta.get("load_hosts"))


def multi_host_sets(results_dir):
    """Names of the result sets in results_dir whose load came from several hosts (sweep --netns,
    --scheduler): load_results leaves them out unless asked, since their client path differs."""
    out = []
    for json_path in sorted(Path(results_dir).glob("*.json")):
        try:
            meta = json.loads(json_path.read_text())
        except ValueError:
            continue
        if isinstance(meta, dict) and _is_multi_host(meta) and json_path.with_suffix(".csv").exists():
            out.append(json_path.stem)
    return out


def load_results(results_dir, multi_host=False):
    """Every result set (<name>.csv with its <name>.json) in results_dir.

    Returns (df, metadata): all rows concatenated (the ``sweep`` column names their set), and a dict
    name -> metadata (empty dict when the JSON is missing).  Sets whose load came from several hosts
    (their JSON has ``load_hosts``) are left out unless multi_host=True: pooled with single-host
    runs of the same cells they would mix two different client paths (see multi_host_sets).
    """
    import pandas as pd

    results_dir = Path(results_dir)
    frames, metas = [], {}
    for csv_path in sorted(results_dir.glob("*.csv")):
        side_table_of = csv_path.stem.removesuffix(HOSTS_TABLE_SUFFIX)
        if side_table_of != csv_path.stem and (results_dir / f"{side_table_of}.csv").exists():
            continue  # a multi-host set's per-host side table, not a set of its own
        header = pd.read_csv(csv_path, nrows=0).columns
        if not set(REQUIRED) <= set(header):
            continue  # not a sweep
        json_path = csv_path.with_suffix(".json")
        meta = json.loads(json_path.read_text()) if json_path.exists() else {}
        if _is_multi_host(meta) and not multi_host:
            continue
        frames.append(load_csv(csv_path))
        metas[csv_path.stem] = meta
    if not frames:
        raise FileNotFoundError(f"no sweep results (*.csv with {'/'.join(REQUIRED)}) in {results_dir}")
    return pd.concat(frames, ignore_index=True), metas


def valid_mask(df):
    """True for the runs that are valid measurements."""
    import pandas as pd

    if "valid" not in df.columns:
        df = normalize(df.copy())
    return pd.Series(df["valid"].astype(bool).to_numpy(), index=df.index)


def valid_rows(df):
    """The runs that statistics and charts may use."""
    return df[valid_mask(df)]


def excluded_rows(df):
    """The runs left out of statistics and charts, with why."""
    return df[~valid_mask(df)]


def _reason_kinds(reasons):
    """'3 mismatched bytes; unsteady: server/client bytes 1.6' -> ['mismatched bytes', 'unsteady']."""
    return [part.split(":")[0].strip().lstrip("0123456789 ")
            for text in reasons if isinstance(text, str) for part in text.split("; ") if part]


def with_cell_columns(df):
    """df with every CELL column: a frame built by hand (not read by load_csv) may lack client and work,
    which then are what every run before them used (CELL_DEFAULTS)."""
    missing = {c: v for c, v in CELL_DEFAULTS.items() if c not in df.columns}
    return df.assign(**missing) if missing else df


def by_cell(df, columns=None):
    """Per cell (CELL, NaN offered_rate kept): (the cell's keys as a dict, its valid runs, its excluded runs).
    columns: keep only these (and CELL) in the runs handed out -- copying every column of a wide frame per
    cell is what made tables over data/ slow."""
    data = with_cell_columns(df)
    if columns is not None:
        data = data[CELL + [c for c in dict.fromkeys(columns) if c in data.columns and c not in CELL]]
    data = data.assign(_valid=valid_mask(df))
    for key, group in data.groupby(CELL, sort=True, dropna=False):
        yield dict(zip(CELL, key)), group[group["_valid"]], group[~group["_valid"]]


def excluded_counts(df):
    """Per cell: runs in total, valid, excluded, and the most common reason (cells with exclusions first)."""
    import pandas as pd

    out = []
    for cell, good, bad in by_cell(df):
        reasons = _reason_kinds(bad["invalid_reason"]) if "invalid_reason" in bad.columns else []
        out.append({**cell, "runs": len(good) + len(bad), "valid": len(good), "excluded": len(bad),
                    "reason": max(sorted(set(reasons)), key=reasons.count) if reasons else ""})
    table = pd.DataFrame(out)
    if table.empty:
        return table
    return table.sort_values(["excluded"] + CELL, ascending=[False] + [True] * len(CELL), kind="stable")


def excluded_note(df):
    """One line for a chart or report: how many runs were excluded, and the commonest reasons."""
    bad = excluded_rows(df)
    if bad.empty:
        return f"all {len(df)} runs valid"
    kinds = _reason_kinds(bad["invalid_reason"]) if "invalid_reason" in bad.columns else []
    top = sorted(set(kinds), key=lambda k: (-kinds.count(k), k))[:3]
    why = ", ".join(f"{k} ({kinds.count(k)})" for k in top)
    return f"{len(bad)} of {len(df)} runs excluded as invalid" + (f": {why}" if why else "")


def pooling_differences(metas):
    """Differences between pooled result sets that make their numbers less comparable: a list of texts.

    Compares the window parameters and the machine facts that can explain a difference between
    machines (machine.comparable_facts: CPU model and generation, caches, NUMA nodes, copy-related CPU
    flags, hypervisor, kernel).  A fact only some sets recorded (older sets predate it) is named as
    unverifiable rather than as a difference.
    """
    keys = {"duration": "window (s)", "warmup": "warm-up (s)", "warmup_max": "max warm-up (s)"}
    out = []
    params = {name: (m or {}).get("parameters", {}) for name, m in metas.items()}
    for key, label in keys.items():
        values = {name: p.get(key) for name, p in params.items()}
        if len(set(map(str, values.values()))) > 1:
            out.append(f"{label} differs: " + ", ".join(f"{n}={v}" for n, v in sorted(values.items())))
    facts = {name: machine.comparable_facts((m or {}).get("machine")) for name, m in metas.items()}
    labels = next(iter(facts.values()), {}).keys()
    for label in labels:
        values = {name: f[label] for name, f in facts.items()}
        known = {name: v for name, v in values.items() if v is not None}
        if len(set(known.values())) > 1:
            out.append(f"{label} differs (different machines?): "
                       + "; ".join(f"{n}: {v}" for n, v in sorted(known.items())))
        elif known and len(known) < len(values):
            missing = sorted(set(values) - set(known))
            out.append(f"{label} not recorded in {', '.join(missing)} (measured before echo_core recorded it), "
                       f"so it cannot be checked against {', '.join(sorted(known))}")
    return out


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
