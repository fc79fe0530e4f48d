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

from echo_core.report import CHART_MODES, CHART_NAMES, HEATMAP_TITLE

from conftest import IO_URING_REFUSED

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(bool(IO_URING_REFUSED), reason=f"the notebooks compare io_uring with epoll: {IO_URING_REFUSED}")
NOTEBOOKS = REPO / "notebooks"
CONNECTIONS = [1, 4]
#: The charts a closed-loop (rr, stream) sweep draws.
CLOSED_CHARTS = [c for c in CHART_NAMES if "rr" in CHART_MODES[c] or "stream" in CHART_MODES[c]]


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


def test_sweep_notebook_saves_the_charts(swept):
    _, data, _ = swept
    for chart in CLOSED_CHARTS:
        png = data / f"nbtest-{chart}.png"
        assert png.exists() and png.stat().st_size > 1000, chart


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
