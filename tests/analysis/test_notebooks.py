"""The notebooks, executed for real with papermill on tiny parameters; the report rendered to HTML."""

import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from echo_core.analysis import report
from echo_core.results import resultsets as results
from echo_core.analysis import stats
from echo_core.analysis.report import CHART_COLUMNS, CHART_MODES, CHART_NAMES, HEATMAP_TITLE
from echo_core.results import schema

from conftest import IO_URING_REFUSED

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(bool(IO_URING_REFUSED), reason=f"the notebooks compare io_uring with epoll: {IO_URING_REFUSED}")
NOTEBOOKS = REPO / "notebooks"
CONNECTIONS = [1, 4]
#: The charts every closed-loop (rr, stream) sweep draws (the counters chart needs counters the kernel may refuse;
#: the verdict chart, several client designs or works).
CLOSED_CHARTS = [c for c in CHART_NAMES if ("rr" in CHART_MODES[c] or "stream" in CHART_MODES[c])
                 and c not in CHART_COLUMNS and c != "verdict"]
DATA = REPO / "data"


def _errors(notebook_path):
    nb = nbformat.read(notebook_path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


@pytest.mark.parametrize("name", ["sweep.ipynb", "report.ipynb"])
def test_notebooks_are_stored_clean_with_the_python3_kernel(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """papermill notebooks/sweep.ipynb from the repository root, as a user would run it."""
    tmp = tmp_path_factory.mktemp("nb")
    data = tmp / "data"
    out = tmp / "sweep-out.ipynb"
    cmd = [sys.executable, "-m", "papermill", "notebooks/sweep.ipynb", str(out), "-p", "payload", "512",
           "-y", f"connections: {CONNECTIONS}", "-p", "duration", "0.3", "-p", "warmup", "0.1",
           "-p", "repeats", "1", "-p", "output_dir", str(data), "-p", "name", "nbtest", "--no-progress-bar"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, data, out


def test_sweep_notebook_writes_one_row_per_run(swept):
    _, data, out = swept
    assert not _errors(out)
    df = pd.read_csv(data / "nbtest.csv", keep_default_na=False)
    expected = set(itertools.product(["uring", "epoll"], ["rr", "stream"], CONNECTIONS, [0]))
    got = [(r.impl, r.mode, int(r.connections), int(r.repeat)) for r in df.itertuples()]
    assert len(got) == len(expected) and set(got) == expected
    for column in ("impl", "mode", "payload", "connections", "repeat", "run_index", "started_at", "msgs_per_s",
                   "bytes_per_s", "p50_us", "p99_us", "server_cpu_us_per_msg", "bottleneck", "error"):
        assert column in df.columns, column
    assert (df["payload"] == 512).all() and (df["error"] == "").all()


def test_sweep_notebook_records_the_machine(swept):
    _, data, _ = swept
    meta = json.loads((data / "nbtest.json").read_text())
    assert meta["status"] == "complete"
    assert meta["machine"]["kernel"]["release"] == platform.release()
    assert meta["machine"]["liburing"]["version"]  # e.g. "2.3"
    assert meta["parameters"]["connections"] == CONNECTIONS
    # the facts that can explain a difference between machines travel with every result set
    assert {"caches", "numa", "virtualization", "perf"} <= set(meta["machine"])
    assert "copy_flags" in meta["machine"]["cpu"]


def test_sweep_notebook_saves_the_charts(swept):
    _, data, out = swept
    for chart in CLOSED_CHARTS:
        png = data / f"nbtest-{chart}.png"
        assert png.exists() and png.stat().st_size > 1000, chart
    # The kernel counters: their chart where a valid run recorded them, else the line saying why not.
    df = results.load_csv(data / "nbtest.csv")
    recorded = stats.counters_recorded(df, report.COUNTER_CHART)
    assert (data / "nbtest-counters.png").exists() == bool(recorded)
    if not stats.counters_recorded(df):
        assert "kernel counters not recorded in this result set" in out.read_text()


def test_report_renders_standalone_html_with_the_heatmap(swept):
    tmp, data, _ = swept
    reports = tmp / "reports"
    if shutil.which("make"):
        proc = subprocess.run(["make", "report", f"PYTHON={sys.executable}", f"DATA={data}", f"REPORTS={reports}"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    else:  # the same two commands the Makefile runs
        reports.mkdir()
        proc = subprocess.run(
            f"'{sys.executable}' -m papermill notebooks/report.ipynb '{reports}/report.ipynb' "
            f"-p results_dir '{data}' -p output_dir '{reports}' && '{sys.executable}' -m nbconvert --to html "
            f"--no-input --output report '{reports}/report.ipynb'", shell=True, cwd=REPO, capture_output=True,
            text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _errors(reports / "report.ipynb")
    html = (reports / "report.html").read_text()
    assert HEATMAP_TITLE in html
    assert html.count("data:image/png;base64,") >= len(CLOSED_CHARTS)
    assert "Excluded runs per cell" in html
    assert re.search(r"all 8 runs valid|\d+ of 8 runs excluded", html)  # the count is always shown
    assert "report.draw(" not in html  # code hidden
    assert "nbtest" in html  # the result set is named in the provenance table
    assert "Kernel counters per message" in html
    counters = stats.counters_recorded(results.load_csv(data / "nbtest.csv"))
    assert ("poll arms/msg" in html) if "server_poll_arms_per_msg" in counters else \
        ("kernel counters not recorded in this result set" in html)
    assert "caches" in html and "hypervisor" in html  # the machine table's new facts
    for chart in CLOSED_CHARTS:
        assert (reports / f"report-{chart}.png").stat().st_size > 1000, chart
    assert not (REPO / "data" / "nbtest.csv").exists()
    assert os.listdir(data)  # results stayed in tmp


def test_sweep_notebook_in_rate_mode_draws_latency_vs_load(tmp_path):
    """The README's `-y "modes: [rate]"` invocation: offered loads default to fractions of capacity."""
    out = tmp_path / "rate-out.ipynb"
    cmd = [sys.executable, "-m", "papermill", "notebooks/sweep.ipynb", str(out), "-p", "payload", "512",
           "-y", "{modes: [rate], connections: [1], load_fractions: [0.3, 0.6]}", "-p", "duration", "0.3",
           "-p", "warmup", "0.1", "-p", "repeats", "1", "-p", "output_dir", str(tmp_path), "-p", "name", "rate",
           "--no-progress-bar"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _errors(out)
    df = pd.read_csv(tmp_path / "rate.csv")
    assert len(df) == 4 and set(df["mode"]) == {"rate"} and df["valid"].all()
    assert (tmp_path / "rate-latency-load.png").stat().st_size > 1000
    assert not (tmp_path / "rate-throughput.png").exists()  # no closed-loop runs to draw


# --------------------------------------------------------------------------- the committed result sets

def _committed():
    if not list(DATA.glob("*.csv")):
        pytest.skip("no committed result sets in data/")
    return results.load_results(DATA)


#: The report over committed sets of three generations (CI time: over all of data/ it took 80 s and grew with
#: every set): one from before the cache facts and most counters, one over several client designs (the verdict),
#: and one with an ``exec:`` server and today's columns.  A file that is not a sweep rides along.
REPORT_SETS = ("sweep-20261127-122800", "confirm-clients-20261203", "liburing-example-20261204", "loopback-20261127")


def test_report_builds_on_committed_result_sets_of_every_generation(tmp_path):
    """Sets from before the kernel counters and the new machine facts: the report says so and still builds."""
    _committed()
    sets = tmp_path / "sets"
    sets.mkdir()
    for name in REPORT_SETS:
        for path in DATA.glob(f"{name}.*"):
            if path.suffix in (".csv", ".json"):
                shutil.copy(path, sets)
    if len(list(sets.glob("*.csv"))) < len(REPORT_SETS):
        pytest.skip(f"data/ no longer holds all of {REPORT_SETS}")
    out = tmp_path / "report.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", "notebooks/report.ipynb", str(out), "-p", "results_dir",
                           str(sets), "-p", "output_dir", str(tmp_path), "--no-progress-bar"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _errors(out)
    text = out.read_text()
    df, metas = results.load_results(sets)
    assert set(metas) == set(REPORT_SETS) - {"loopback-20261127"}
    note = stats.counters_note(df)
    assert (note in text) if note else ("poll arms/msg" in text)
    assert "caches" in text and report.NOT_RECORDED in text  # the oldest set has no cache facts
    assert not list(DATA.glob("report-*.png")) and not list(sets.glob("report-*.png"))  # charts went to output_dir


def test_counter_table_and_chart_on_real_per_message_columns(tmp_path):
    """counters_table and the counters chart, fed the per-message columns every committed set has
    (system calls and operations per message): medians over valid runs only, the excluded-runs note."""
    df, _ = _committed()
    columns = ("server_syscalls_per_msg", "server_ops_per_msg")
    if not stats.counters_recorded(df, columns):
        pytest.skip("the committed result sets have no per-message server columns")
    table = report.counters_table(df, counters=columns)
    good = results.valid_rows(df[df["mode"].isin(report.CLOSED_MODES)])
    # the committed sets measured several client designs and works: they lead the table's keys
    variants = [c for c in schema.CELL_DEFAULTS if good[c].nunique() > 1]
    assert variants == ["client", "work"]
    expected = good.groupby(variants + ["mode", "payload", "connections", "impl"])[list(columns)].median()
    for (*cell, impl), row in expected.iterrows():
        got = table.loc[(*cell, schema.impl_label(impl))]
        for column in columns:
            assert got[column] == pytest.approx(row[column], nan_ok=True), (cell, impl, column)
    assert {"valid runs", "msgs/s", "server µs/msg"} <= set(table.columns)
    fig = report.plot_counters(df, counters=columns)
    assert len(fig.axes) >= 2 * len(set(good["mode"]))  # one row of panels per counter, one column per mode


def test_missing_counters_are_a_note_not_a_failure():
    df, _ = _committed()
    lacking = [name for name, part in df.groupby("sweep") if not stats.counters_recorded(part)]
    if not lacking:
        pytest.skip("every committed result set has the kernel counters")
    part = df[df["sweep"] == lacking[0]]
    assert stats.counters_note(part).startswith("kernel counters not recorded in this result set: ")
    assert report.counters_table(part).empty and "counters" not in report.applicable_charts(part)
    fig = report.draw("counters", part)  # drawn on request all the same: a panel saying why
    assert "kernel counters not recorded" in fig.get_suptitle()
    assert any(t.get_text().startswith("Valid runs only:") for t in fig.texts)  # the excluded-runs note


def test_counters_table_on_a_committed_result_set_with_kernel_counters():
    """Waits for a committed result set measured with the kernel counters (none is, yet)."""
    df, _ = _committed()
    sets = [name for name, part in df.groupby("sweep") if "server_poll_arms_per_msg" in stats.counters_recorded(part)]
    if not sets:
        pytest.skip("no committed result set in data/ has kernel counters yet: measure one with a sweep "
                    "that records them and commit it")
    part = df[df["sweep"] == sets[0]]
    table = report.counters_table(part)
    assert "poll arms/msg" in table.columns and "counters" in report.applicable_charts(part)
    good = results.valid_rows(part[part["mode"].isin(report.CLOSED_MODES)])
    epoll = good[good["impl"] == "epoll"]["server_poll_arms_per_msg"].dropna()
    assert (epoll == 0).all()  # epoll submits no io_uring requests, so it arms no io_uring polls
